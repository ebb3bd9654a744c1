"""Tests of the PointCloud2 byte-layout codec on hand-built buffers."""

import array
import struct

import numpy as np
import pytest

from opendlign_core import pointcloud2 as pc2
from opendlign_core.pointcloud2 import FieldSpec, decode_xyz, dtype_from_fields, encode_xyz

XYZ32 = (FieldSpec('x', 0, pc2.FLOAT32), FieldSpec('y', 4, pc2.FLOAT32),
         FieldSpec('z', 8, pc2.FLOAT32))


def _decode(data, fields=XYZ32, point_step=12, width=None, height=1, row_step=None,
            is_bigendian=False, **kwargs):
    if width is None:
        width = len(data) // point_step
    if row_step is None:
        row_step = width * point_step
    return decode_xyz(data, fields, point_step, width, height, row_step, is_bigendian, **kwargs)


def test_decode_plain_float32_little_endian():
    data = struct.pack('<6f', 1.0, 2.0, 3.0, -4.5, 5.25, 6.0)
    out = _decode(data)
    assert out.dtype == np.float32 and out.shape == (2, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, [[1.0, 2.0, 3.0], [-4.5, 5.25, 6.0]])


def test_decode_big_endian_float64_with_padding_and_extra_fields():
    # Point: intensity u16 @0, pad 2, x f8 @4, y f8 @12, z f8 @20, ring u8 @28, pad to 32.
    fields = (FieldSpec('intensity', 0, pc2.UINT16), FieldSpec('x', 4, pc2.FLOAT64),
              FieldSpec('y', 12, pc2.FLOAT64), FieldSpec('z', 20, pc2.FLOAT64),
              FieldSpec('ring', 28, pc2.UINT8))
    rows = [(7, 0.5, -1.25, 2.0, 3), (9, 10.0, 20.0, -30.0, 4)]
    data = b''.join(struct.pack('>H2xdddB3x', *r) for r in rows)
    assert len(data) == 64
    out = _decode(data, fields, point_step=32, is_bigendian=True)
    np.testing.assert_array_equal(out, [[0.5, -1.25, 2.0], [10.0, 20.0, -30.0]])


@pytest.mark.parametrize('datatype,fmt', [
    (pc2.INT8, 'b'), (pc2.UINT8, 'B'), (pc2.INT16, 'h'), (pc2.UINT16, 'H'),
    (pc2.INT32, 'i'), (pc2.UINT32, 'I'), (pc2.FLOAT32, 'f'), (pc2.FLOAT64, 'd')])
@pytest.mark.parametrize('bigendian', [False, True])
def test_decode_every_datatype_both_byte_orders(datatype, fmt, bigendian):
    size = struct.calcsize('<' + fmt)
    fields = tuple(FieldSpec(n, i * size, datatype) for i, n in enumerate('xyz'))
    values = [(1, 2, 3), (4, 5, 6)] if fmt in 'BHI' else [(1, -2, 3), (-4, 5, 127)]
    order = '>' if bigendian else '<'
    data = b''.join(struct.pack(order + fmt * 3, *v) for v in values)
    out = _decode(data, fields, point_step=3 * size, is_bigendian=bigendian)
    np.testing.assert_array_equal(out, np.array(values, np.float32))


def test_decode_count_greater_than_one_and_field_order():
    # normal f4[3] first, then z, x, y out of order.
    fields = (FieldSpec('normal', 0, pc2.FLOAT32, 3), FieldSpec('z', 12, pc2.FLOAT32),
              FieldSpec('x', 16, pc2.FLOAT32), FieldSpec('y', 20, pc2.FLOAT32))
    data = struct.pack('<6f', 0.0, 0.0, 1.0, 3.0, 1.0, 2.0)
    dtype = dtype_from_fields(fields, 24)
    assert dtype.itemsize == 24 and dtype['normal'].shape == (3,)
    np.testing.assert_array_equal(_decode(data, fields, point_step=24), [[1.0, 2.0, 3.0]])


def test_decode_organised_cloud_with_row_padding():
    # 2 x 2 organised cloud, 12-byte points, 28-byte rows (4 bytes of row padding).
    row0 = struct.pack('<6f', 1, 2, 3, 4, 5, 6) + b'\xff' * 4
    row1 = struct.pack('<6f', 7, 8, 9, 10, 11, 12) + b'\xee' * 4
    out = _decode(row0 + row1, width=2, height=2, row_step=28)
    np.testing.assert_array_equal(out, np.arange(1, 13, dtype=np.float32).reshape(4, 3))


def test_decode_skip_nans_and_infinities():
    nan, inf = float('nan'), float('inf')
    data = struct.pack('<12f', 1, 2, 3, nan, 0, 0, 0, inf, 0, 4, 5, 6)
    np.testing.assert_array_equal(_decode(data), [[1, 2, 3], [4, 5, 6]])
    kept = _decode(data, skip_nans=False)
    assert kept.shape == (4, 3) and np.isnan(kept[1, 0]) and np.isinf(kept[2, 1])
    all_nan = struct.pack('<3f', nan, nan, nan)
    assert _decode(all_nan).shape == (0, 3)


@pytest.mark.parametrize('kind', ['bytes', 'bytearray', 'memoryview', 'array', 'ndarray'])
def test_decode_accepts_buffers_and_does_not_alias(kind):
    raw = struct.pack('<3f', 1, 2, 3)
    data = {'bytes': raw, 'bytearray': bytearray(raw), 'memoryview': memoryview(raw),
            'array': array.array('B', raw), 'ndarray': np.frombuffer(raw, np.uint8).copy()}[kind]
    out = _decode(data)
    np.testing.assert_array_equal(out, [[1, 2, 3]])
    out[0, 0] = 99.0
    np.testing.assert_array_equal(_decode(data), [[1, 2, 3]])


def test_encode_decode_round_trip_float32_and_float64():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(50, 3)).astype(np.float32)
    for datatype, step, big in [(pc2.FLOAT32, None, False), (pc2.FLOAT64, 32, True)]:
        data, fields, point_step, row_step = encode_xyz(points, datatype, step, big)
        assert len(data) == row_step == 50 * point_step
        out = decode_xyz(data, fields, point_step, 50, 1, row_step, big)
        np.testing.assert_array_equal(out, points)
    data, fields, point_step, row_step = encode_xyz(points[:1])
    assert data == struct.pack('<3f', *points[0]) and point_step == 12
    assert [(f.name, f.offset, f.datatype, f.count) for f in fields] == [
        ('x', 0, 7, 1), ('y', 4, 7, 1), ('z', 8, 7, 1)]


def test_decode_is_fast_and_zero_copy_for_large_clouds():
    points = np.random.default_rng(1).normal(size=(300_000, 3)).astype(np.float32)
    data, fields, step, row_step = encode_xyz(points, point_step=16)
    buf = array.array('B', data)
    out = decode_xyz(buf, fields, step, 300_000, 1, row_step)
    np.testing.assert_array_equal(out, points)


GOOD = dict(data=struct.pack('<6f', 1, 2, 3, 4, 5, 6), fields=XYZ32, point_step=12, width=2,
            height=1, row_step=24, is_bigendian=False)


@pytest.mark.parametrize('change,message', [
    (dict(data=struct.pack('<5f', 1, 2, 3, 4, 5)), 'data is too short: 20 bytes'),
    (dict(data=struct.pack('<7f', 1, 2, 3, 4, 5, 6, 7)), 'data is too long: 28 bytes'),
    (dict(point_step=8), "field 'z' spans bytes [8, 12) beyond point_step 8"),
    (dict(point_step=0), 'point_step must be >= 1, got 0'),
    (dict(row_step=20), 'row_step 20 is smaller than width * point_step'),
    (dict(width=0, row_step=0), 'empty cloud: width=0'),
    (dict(height=0), 'empty cloud: width=2, height=0'),
    (dict(fields=()), 'fields is empty'),
    (dict(fields=XYZ32[:2]), "field 'z' is missing"),
    (dict(fields=(XYZ32[0], XYZ32[1], FieldSpec('z', 8, 9))), 'unknown datatype 9'),
    (dict(fields=(XYZ32[0], XYZ32[1], FieldSpec('z', 8, 0))), 'unknown datatype 0'),
    (dict(fields=XYZ32 + (FieldSpec('x', 0, 7),)), "field name 'x' appears more than once"),
    (dict(fields=(XYZ32[0], XYZ32[1], FieldSpec('z', -4, 7))), 'negative offset -4'),
    (dict(fields=(XYZ32[0], FieldSpec('y', 2, 7), XYZ32[2])), "fields 'x' and 'y' overlap"),
    (dict(fields=(XYZ32[0], XYZ32[1], FieldSpec('z', 8, 7, 0))), 'has count 0'),
    (dict(fields=(XYZ32[0], XYZ32[1], FieldSpec('z', 8, 2, 4))), "field 'z' has count 4"),
    (dict(fields=(XYZ32[0], XYZ32[1], FieldSpec('', 8, 7))), 'empty name'),
    (dict(height=2, row_step=24), 'data is too short: 24 bytes, expected'),
])
def test_decode_rejects_malformed_metadata(change, message):
    kwargs = {**GOOD, **change}
    with pytest.raises(ValueError) as info:
        decode_xyz(**kwargs)
    assert message in str(info.value)


def test_decode_rejects_over_cap_before_reading_data():
    with pytest.raises(ValueError, match='over the cap max_points=1'):
        decode_xyz(**GOOD, max_points=1)
    # A huge claimed size with a tiny buffer is rejected without allocating.
    with pytest.raises(ValueError, match='data is too short'):
        decode_xyz(**{**GOOD, 'width': 2**40, 'row_step': 12 * 2**40})


@pytest.mark.parametrize('change,exc', [
    (dict(data=[1, 2, 3]), TypeError), (dict(width=2.0), TypeError),
    (dict(is_bigendian='no'), TypeError), (dict(fields='xyz'), TypeError),
    (dict(fields=(FieldSpec(1, 0, 7),)), TypeError)])
def test_decode_rejects_wrong_types(change, exc):
    with pytest.raises(exc):
        decode_xyz(**{**GOOD, **change})


def test_encode_rejects_bad_input():
    with pytest.raises(ValueError, match=r'shape \(N, 3\)'):
        encode_xyz(np.zeros((4, 2)))
    with pytest.raises(ValueError, match='FLOAT32'):
        encode_xyz(np.zeros((4, 3)), datatype=pc2.INT16)
    with pytest.raises(ValueError, match='point_step must be >= 24'):
        encode_xyz(np.zeros((4, 3)), datatype=pc2.FLOAT64, point_step=16)
    with pytest.raises(TypeError, match='real-valued'):
        encode_xyz(np.zeros((4, 3), complex))
