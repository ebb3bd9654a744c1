"""Tests of the PointCloud2 byte-layout codec on hand-built buffers."""

import array
import struct

import numpy as np
import pytest

from opendlign_core import pointcloud2 as pc2
from opendlign_core.pointcloud2 import (
    FieldSpec,
    decode_xyz,
    decode_xyz_rgb,
    dtype_from_fields,
    encode_xyz,
)

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

MALFORMED = [
    (dict(data=struct.pack('<5f', 1, 2, 3, 4, 5)), 'data is too short: 20 bytes'),
    (dict(data=struct.pack('<7f', 1, 2, 3, 4, 5, 6, 7)), 'data is too long: 28 bytes'),
    (dict(point_step=8), "field 'z' spans bytes [8, 12) beyond point_step 8"),
    (dict(point_step=0), 'point_step must be >= 1, got 0'),
    (dict(row_step=20), 'row_step 20 is smaller than width * point_step'),
    # An empty cloud is valid, but not with a buffer that holds points.
    (dict(width=0, row_step=0), 'data is too long: 24 bytes, expected row_step * height = 0'),
    (dict(height=0), 'data is too long: 24 bytes, expected row_step * height = 24 * 0 = 0'),
    (dict(width=-1), 'width, height and row_step must be >= 0, got width=-1'),
    (dict(fields=()), 'fields is empty'),
    (dict(fields=XYZ32[:2]), "field 'z' is missing"),
    (dict(fields=(XYZ32[0], XYZ32[1], FieldSpec('z', 8, 9))), 'unknown datatype 9'),
    (dict(fields=(XYZ32[0], XYZ32[1], FieldSpec('z', 8, 0))), 'unknown datatype 0'),
    (dict(fields=XYZ32 + (FieldSpec('x', 0, 8),)), "field name 'x' appears more than once"),
    (dict(fields=(XYZ32[0], XYZ32[1], FieldSpec('z', -4, 7))), 'negative offset -4'),
    (dict(fields=(XYZ32[0], FieldSpec('y', 2, 7), XYZ32[2])), "fields 'x' and 'y' overlap"),
    (dict(fields=(XYZ32[0], XYZ32[1], FieldSpec('z', 8, 7, -1))), "'z' has count -1"),
    (dict(fields=(XYZ32[0], XYZ32[1], FieldSpec('z', 8, 2, 4))), "field 'z' has count 4"),
    (dict(fields=(XYZ32[0], XYZ32[1], FieldSpec('', 8, 7))), "field 'z' is missing"),
    (dict(fields=(XYZ32[0], XYZ32[1], FieldSpec('z', 4, 7))), "fields 'y' and 'z' overlap"),
    (dict(height=2, row_step=24), 'data is too short: 24 bytes, expected'),
]


@pytest.mark.parametrize('change,message', MALFORMED)
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


# ---- colour ----------------------------------------------------------------------------------

XYZ32_RGB = XYZ32 + (FieldSpec('rgb', 12, pc2.FLOAT32),)


def _decode_rgb(data, fields=XYZ32_RGB, point_step=16, width=None, height=1, row_step=None,
                is_bigendian=False, **kwargs):
    if width is None:
        width = len(data) // point_step
    if row_step is None:
        row_step = width * point_step
    return decode_xyz_rgb(data, fields, point_step, width, height, row_step, is_bigendian,
                          **kwargs)


def _float_of_bits(bits):
    # The float32 whose 4 bytes are the packed integer (PCL's rgb field).
    return struct.unpack('<f', struct.pack('<I', bits))[0]


@pytest.mark.parametrize('datatype,step', [(pc2.FLOAT32, 16), (pc2.FLOAT64, 28)])
@pytest.mark.parametrize('bigendian', [False, True])
def test_encode_decode_rgb_round_trip_drops_the_same_rows(datatype, step, bigendian):
    rng = np.random.default_rng(2)
    points = rng.normal(size=(40, 3)).astype(np.float32)
    points[[3, 17], [1, 0]] = np.nan
    points[25, 2] = np.inf
    colors = rng.integers(0, 256, size=(40, 3), dtype=np.uint8)
    colors[0] = (255, 128, 1)
    data, fields, point_step, row_step = encode_xyz(points, datatype, None, bigendian, colors)
    size = 4 if datatype == pc2.FLOAT32 else 8
    assert point_step == step and row_step == 40 * step and len(data) == row_step
    assert [(f.name, f.offset, f.datatype, f.count) for f in fields] == [
        ('x', 0, datatype, 1), ('y', size, datatype, 1), ('z', 2 * size, datatype, 1),
        ('rgb', 3 * size, pc2.FLOAT32, 1)]
    order = '>' if bigendian else '<'
    assert data[3 * size:3 * size + 4] == struct.pack(order + 'I', 0x00FF8001)

    xyz, rgb = decode_xyz_rgb(data, fields, point_step, 40, 1, row_step, bigendian)
    keep = np.ones(40, bool)
    keep[[3, 17, 25]] = False
    assert xyz.shape == (37, 3) and rgb.shape == (37, 3)
    assert rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    np.testing.assert_array_equal(xyz, points[keep])
    np.testing.assert_array_equal(rgb, colors[keep])
    np.testing.assert_array_equal(xyz, decode_xyz(data, fields, point_step, 40, 1, row_step,
                                                  bigendian))
    all_xyz, all_rgb = decode_xyz_rgb(data, fields, point_step, 40, 1, row_step, bigendian,
                                      skip_nans=False)
    assert all_xyz.shape == (40, 3) and np.isnan(all_xyz[3, 1]) and np.isinf(all_xyz[25, 2])
    np.testing.assert_array_equal(all_rgb, colors)


@pytest.mark.parametrize('bigendian', [False, True])
def test_decode_packed_float_rgb_reinterprets_bits(bigendian):
    # 0x00FF8001 as a float is a denormal (~2.3e-38): a value cast would give 0, not colour.
    order = '>' if bigendian else '<'
    rows = [(1, 2, 3, 0x00FF8001), (4, 5, 6, 0x00000000), (7, 8, 9, 0x0012AB34)]
    data = b''.join(struct.pack(order + '4f', x, y, z, _float_of_bits(bits))
                    for x, y, z, bits in rows)
    xyz, rgb = _decode_rgb(data, is_bigendian=bigendian)
    np.testing.assert_array_equal(xyz, [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    np.testing.assert_array_equal(rgb, [[255, 128, 1], [0, 0, 0], [0x12, 0xAB, 0x34]])


def test_decode_packed_rgb_in_organised_cloud_with_row_padding():
    # 2 x 2 cloud, big-endian, 16-byte points, 36-byte rows (4 bytes of row padding).
    bits = [0x00010203, 0x00FFFFFF, 0x00800000, 0x0000007F]
    xyz = np.arange(1, 13, dtype=np.float32).reshape(4, 3)
    pts = [struct.pack('>3f', *p) + struct.pack('>I', b) for p, b in zip(xyz.tolist(), bits)]
    data = pts[0] + pts[1] + b'\xff' * 4 + pts[2] + pts[3] + b'\xee' * 4
    out_xyz, rgb = _decode_rgb(data, width=2, height=2, row_step=36, is_bigendian=True)
    np.testing.assert_array_equal(out_xyz, xyz)
    np.testing.assert_array_equal(rgb, [[1, 2, 3], [255, 255, 255], [128, 0, 0], [0, 0, 127]])


def test_decode_rgba_uint32_and_int32_ignore_alpha():
    fields = XYZ32 + (FieldSpec('rgba', 12, pc2.UINT32),)
    data = struct.pack('<3fI', 1, 2, 3, 0xAA102030) + struct.pack('<3fI', 4, 5, 6, 0xFF0000FF)
    _, rgb = _decode_rgb(data, fields)
    np.testing.assert_array_equal(rgb, [[0x10, 0x20, 0x30], [0, 0, 255]])
    # INT32: alpha 0xFF makes the value negative; the bits are what count.
    fields = XYZ32 + (FieldSpec('rgba', 12, pc2.INT32),)
    data = struct.pack('<3fi', 1, 2, 3, -0x00EFDFD0)  # == 0xFF102030 as int32 bits
    _, rgb = _decode_rgb(data, fields)
    np.testing.assert_array_equal(rgb, [[0x10, 0x20, 0x30]])


def test_decode_packed_rgb_wins_over_rgba_and_channels():
    fields = XYZ32 + (FieldSpec('rgba', 12, pc2.UINT32), FieldSpec('r', 16, pc2.UINT8),
                      FieldSpec('g', 17, pc2.UINT8), FieldSpec('b', 18, pc2.UINT8),
                      FieldSpec('rgb', 20, pc2.UINT32))
    data = struct.pack('<3fI3BxI', 1, 2, 3, 0x00010101, 9, 9, 9, 0x00405060)
    _, rgb = _decode_rgb(data, fields, point_step=24)
    np.testing.assert_array_equal(rgb, [[0x40, 0x50, 0x60]])
    _, rgb = _decode_rgb(data, fields[:-1], point_step=24)  # without rgb: rgba
    np.testing.assert_array_equal(rgb, [[1, 1, 1]])
    _, rgb = _decode_rgb(data, XYZ32 + fields[4:7], point_step=24)  # r, g, b only
    np.testing.assert_array_equal(rgb, [[9, 9, 9]])


def test_decode_separate_uint8_channels_at_odd_offsets():
    # Point: x, y, z f4 @0..12, b u1 @13, intensity u16 @14, g u1 @17, r u1 @19, pad to 20.
    fields = XYZ32 + (FieldSpec('b', 13, pc2.UINT8), FieldSpec('intensity', 14, pc2.UINT16),
                      FieldSpec('g', 17, pc2.UINT8), FieldSpec('r', 19, pc2.UINT8))
    nan = float('nan')
    rows = [(1, 2, 3, 30, 999, 20, 10), (nan, 0, 0, 1, 1, 1, 1), (4, 5, 6, 255, 7, 0, 128)]
    data = b''.join(struct.pack('<3fxBHxBxB', *r) for r in rows)
    assert len(data) == 60
    xyz, rgb = _decode_rgb(data, fields, point_step=20)
    np.testing.assert_array_equal(xyz, [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(rgb, [[10, 20, 30], [128, 0, 255]])


def test_decode_float_channels_scale_clip_and_round():
    # Big-endian; r, g FLOAT32 and b FLOAT64 in 0..1.
    fields = XYZ32 + (FieldSpec('r', 12, pc2.FLOAT32), FieldSpec('g', 16, pc2.FLOAT32),
                      FieldSpec('b', 20, pc2.FLOAT64))
    nan = float('nan')
    rows = [(0.0, 1.0, 0.5),             # 0, 255, 127.5 -> 128 (ties to even)
            (nan, 2.0, -0.5),            # NaN -> 0, clipped high and low
            (1 / 255, 0.998, 0.25),      # 1.0 -> 1, 254.49 -> 254, 63.75 -> 64
            (float('inf'), -float('inf'), 0.1)]  # 255, 0, 25.5 -> 26
    data = b''.join(struct.pack('>3f2fd', 1, 2, 3, *r) for r in rows)
    _, rgb = _decode_rgb(data, fields, point_step=28, is_bigendian=True)
    np.testing.assert_array_equal(rgb, [[0, 255, 128], [0, 255, 0], [1, 254, 64], [255, 0, 26]])


def test_decode_wider_integer_channels_are_clipped():
    fields = XYZ32 + (FieldSpec('r', 12, pc2.INT16), FieldSpec('g', 14, pc2.UINT16),
                      FieldSpec('b', 16, pc2.INT32))
    data = struct.pack('<3fhHi', 1, 2, 3, -5, 300, 7) + struct.pack('<3fhHi', 1, 2, 3, 255, 0,
                                                                      -2**31)
    _, rgb = _decode_rgb(data, fields, point_step=20)
    np.testing.assert_array_equal(rgb, [[0, 255, 7], [255, 0, 0]])


def test_decode_without_colour_gives_none():
    fields = XYZ32 + (FieldSpec('intensity', 12, pc2.FLOAT32),)
    nan = float('nan')
    data = struct.pack('<8f', 1, 2, 3, 0.5, nan, 5, 6, 0.7)
    xyz, rgb = _decode_rgb(data, fields)
    assert rgb is None
    np.testing.assert_array_equal(xyz, [[1, 2, 3]])
    xyz, rgb = _decode_rgb(struct.pack('<3f', nan, nan, nan), XYZ32, point_step=12)
    assert rgb is None and xyz.shape == (0, 3)
    # Colour present but every point non-finite: an empty (0, 3) colour array, not None.
    xyz, rgb = _decode_rgb(struct.pack('<4f', nan, 0, 0, 0))
    assert xyz.shape == (0, 3) and rgb.shape == (0, 3) and rgb.dtype == np.uint8


@pytest.mark.parametrize('colour_fields,point_step,message', [
    ((FieldSpec('rgb', 12, pc2.INT8),), 16, "colour field 'rgb' has datatype 1 (INT8)"),
    ((FieldSpec('rgb', 12, pc2.UINT16),), 16, "colour field 'rgb' has datatype 4 (UINT16)"),
    ((FieldSpec('rgba', 12, pc2.FLOAT64),), 20, "colour field 'rgba' has datatype 8 (FLOAT64)"),
    ((FieldSpec('rgb', 12, pc2.FLOAT32, 2),), 20, "colour field 'rgb' has count 2"),
    ((FieldSpec('rgba', 12, pc2.UINT32, 2),), 20, "colour field 'rgba' has count 2"),
    ((FieldSpec('r', 12, pc2.UINT8, 2), FieldSpec('g', 14, pc2.UINT8),
      FieldSpec('b', 15, pc2.UINT8)), 16, "colour field 'r' has count 2"),
    ((FieldSpec('r', 12, pc2.UINT8), FieldSpec('g', 13, pc2.UINT8)), 16, "missing ['b']"),
])
def test_decode_rejects_bad_colour_fields(colour_fields, point_step, message):
    data = bytes(point_step)
    with pytest.raises(ValueError) as info:
        _decode_rgb(data, XYZ32 + colour_fields, point_step=point_step)
    assert message in str(info.value)


@pytest.mark.parametrize('change,message', MALFORMED)
def test_decode_rgb_rejects_malformed_metadata_like_decode_xyz(change, message):
    with pytest.raises(ValueError) as info:
        decode_xyz_rgb(**{**GOOD, **change})
    assert message in str(info.value)


def test_encode_without_colors_is_byte_identical_to_the_xyz_layout():
    points = np.array([[1.0, -2.5, 3.25], [np.nan, 0.0, 1e-3]])
    data, fields, point_step, row_step = encode_xyz(points)
    assert data == struct.pack('<6f', *points.reshape(-1)) and (point_step, row_step) == (12, 24)
    assert len(fields) == 3
    data, fields, point_step, row_step = encode_xyz(points, pc2.FLOAT64, 32, True, colors=None)
    assert data == b''.join(struct.pack('>3d8x', *p) for p in points)
    assert (point_step, row_step) == (32, 64)
    assert [f.name for f in fields] == ['x', 'y', 'z']


def test_encode_colors_with_padding_and_int_dtype():
    points = np.array([[1.0, 2.0, 3.0]])
    data, fields, point_step, row_step = encode_xyz(points, point_step=20,
                                                    colors=np.array([[255, 128, 1]]))
    assert data == struct.pack('<3fI4x', 1, 2, 3, 0x00FF8001) and point_step == row_step == 20
    data, fields, point_step, _ = encode_xyz(np.zeros((0, 3)), colors=np.zeros((0, 3), np.uint8))
    assert data == b'' and point_step == 16 and fields[3].name == 'rgb'


def test_encode_rejects_bad_colors():
    points = np.zeros((4, 3))
    with pytest.raises(TypeError, match='colors must be an integer array'):
        encode_xyz(points, colors=np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r'colors must have shape \(N, 3\) = \(4, 3\)'):
        encode_xyz(points, colors=np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match=r'colors must have shape .* got \(3, 3\)'):
        encode_xyz(points, colors=np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match=r'colors must have shape .* got \(12,\)'):
        encode_xyz(points, colors=np.zeros(12, np.uint8))
    with pytest.raises(ValueError, match=r'colors must be in 0\.\.255, got values in 0\.\.256'):
        encode_xyz(points, colors=np.full((4, 3), 256) * np.eye(4, 3, dtype=int))
    with pytest.raises(ValueError, match=r'colors must be in 0\.\.255, got values in -1\.\.0'):
        encode_xyz(points, colors=-np.eye(4, 3, dtype=np.int8))
    with pytest.raises(ValueError, match='point_step must be >= 16 for datatype 7 with colors'):
        encode_xyz(points, point_step=12, colors=np.zeros((4, 3), np.uint8))
    with pytest.raises(ValueError, match='point_step must be >= 28 for datatype 8 with colors'):
        encode_xyz(points, pc2.FLOAT64, 24, colors=np.zeros((4, 3), np.uint8))


# ---- real driver layouts (issue 10 item 1) ----------------------------------------------------

# Ouster-like 48-byte point: x, y, z f4 @0/4/8, 4-byte '_' @12, intensity f4 @16, t u4 @20,
# reflectivity u2 @24, ring u1 @26, 1-byte '_' @27, noise u2 @28, 2-byte '_' @30, range u4 @32,
# 12-byte '_' @36.
OUSTER_FORMAT = 'fff4xfIHBxH2xI12x'
OUSTER_ROWS = [(1.5, -2.25, 0.125, 10.0, 7, 300, 5, 2, 4000),
               (-3.0, 4.5, 1.75, 20.0, 8, 301, 6, 3, 5000)]


def _ouster_fields(pad_datatype, pad_count):
    def pad(offset, size):
        count = size if pad_count is None else pad_count
        return FieldSpec('_', offset, pad_datatype, count)

    return (FieldSpec('x', 0, pc2.FLOAT32), FieldSpec('y', 4, pc2.FLOAT32),
            FieldSpec('z', 8, pc2.FLOAT32), pad(12, 4),
            FieldSpec('intensity', 16, pc2.FLOAT32), FieldSpec('t', 20, pc2.UINT32),
            FieldSpec('reflectivity', 24, pc2.UINT16), FieldSpec('ring', 26, pc2.UINT8),
            pad(27, 1), FieldSpec('noise', 28, pc2.UINT16), pad(30, 2),
            FieldSpec('range', 32, pc2.UINT32), pad(36, 12))


@pytest.mark.parametrize('pad_datatype,pad_count', [
    (pc2.UINT8, None), (0, None), (0, 0), (pc2.UINT8, 1), (pc2.FLOAT32, 1)])
@pytest.mark.parametrize('bigendian', [False, True])
def test_decode_ouster_layout_with_repeated_padding_fields(pad_datatype, pad_count, bigendian):
    order = '>' if bigendian else '<'
    data = b''.join(struct.pack(order + OUSTER_FORMAT, *r) for r in OUSTER_ROWS)
    assert len(data) == 96
    fields = _ouster_fields(pad_datatype, pad_count)
    out = _decode(data, fields, point_step=48, is_bigendian=bigendian)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[1.5, -2.25, 0.125], [-3.0, 4.5, 1.75]])
    xyz, rgb = _decode_rgb(data, fields, point_step=48, is_bigendian=bigendian)
    assert rgb is None
    np.testing.assert_array_equal(xyz, out)


# x, y, z f4 @0/4/8, rgb u4 @12 = 0x00112233, point_step 20: bytes 16..19 hold whatever the
# extra fields describe.
_EXTRA_LAYOUTS = {
    'count_0': (FieldSpec('intensity', 16, pc2.FLOAT32, 0),),
    'empty_name': (FieldSpec('', 16, pc2.FLOAT32),),
    'datatype_0': (FieldSpec('pad', 16, 0, 4),),
    'unknown_datatype': (FieldSpec('ring', 16, 42),),
    'repeated_unread_names': (FieldSpec('intensity', 16, pc2.UINT16),
                              FieldSpec('intensity', 18, pc2.UINT8)),
    'unread_fields_overlap': (FieldSpec('intensity', 16, pc2.FLOAT32),
                              FieldSpec('ring', 17, pc2.UINT16)),
    'rgba_channels_over_rgb': (FieldSpec('a', 15, pc2.UINT8), FieldSpec('rgba', 12, 42)),
    'unread_beyond_point_step': (FieldSpec('t', 18, pc2.UINT32),),
    'unread_negative_offset': (FieldSpec('t', -4, pc2.UINT32),),
    'repeated_identical_x': (FieldSpec('x', 0, pc2.FLOAT32),),
    'normals_and_curvature': (FieldSpec('normal', 16, pc2.FLOAT32, 1),
                              FieldSpec('curvature', 16, pc2.FLOAT32, 1)),
    'underscore_names': (FieldSpec('__pad0', 16, pc2.UINT8, 4), FieldSpec('_', 16, 0, 0)),
}


@pytest.mark.parametrize('extra', list(_EXTRA_LAYOUTS.values()), ids=list(_EXTRA_LAYOUTS))
def test_zero_information_and_unread_fields_do_not_reject(extra):
    fields = XYZ32 + (FieldSpec('rgb', 12, pc2.UINT32),) + extra
    data = struct.pack('<fffI4x', 1.0, 2.0, 3.0, 0x00112233) + struct.pack(
        '<fffI4x', 4.0, 5.0, 6.0, 0x00FF8001)
    xyz = _decode(data, fields, point_step=20)
    np.testing.assert_array_equal(xyz, [[1, 2, 3], [4, 5, 6]])
    xyz, rgb = _decode_rgb(data, fields, point_step=20)
    np.testing.assert_array_equal(xyz, [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(rgb, [[0x11, 0x22, 0x33], [0xFF, 0x80, 0x01]])


def test_read_field_with_count_0_is_read_as_one_value_like_pcl():
    fields = (FieldSpec('x', 0, pc2.FLOAT32, 0), FieldSpec('y', 4, pc2.FLOAT32, 0),
              FieldSpec('z', 8, pc2.FLOAT32, 0), FieldSpec('rgb', 12, pc2.FLOAT32, 0))
    data = struct.pack('<fffI', 1.0, 2.0, 3.0, 0x00102030)
    xyz, rgb = _decode_rgb(data, fields, point_step=16)
    np.testing.assert_array_equal(xyz, [[1, 2, 3]])
    np.testing.assert_array_equal(rgb, [[0x10, 0x20, 0x30]])


@pytest.mark.parametrize('name,fields,fmt,values,expected_rgb', [
    # Velodyne XYZIRT: intensity f4 @12, ring u2 @16, time f4 @18, point_step 22.
    ('velodyne', XYZ32 + (FieldSpec('intensity', 12, pc2.FLOAT32),
                          FieldSpec('ring', 16, pc2.UINT16), FieldSpec('time', 18, pc2.FLOAT32)),
     '<ffffHf', (1.0, 2.0, 3.0, 50.0, 7, 0.01), None),
    # Livox CustomMsg-as-PointCloud2: intensity f4, tag u1, line u1, timestamp f8 @18 (unaligned).
    ('livox', XYZ32 + (FieldSpec('intensity', 12, pc2.FLOAT32), FieldSpec('tag', 16, pc2.UINT8),
                       FieldSpec('line', 17, pc2.UINT8), FieldSpec('timestamp', 18, pc2.FLOAT64)),
     '<ffffBBd', (1.0, 2.0, 3.0, 9.0, 1, 2, 1.7e9), None),
    # RealSense: rgb f4 @16 after 4 undeclared bytes, point_step 20.
    ('realsense', XYZ32 + (FieldSpec('rgb', 16, pc2.FLOAT32),),
     '<fff4xI', (1.0, 2.0, 3.0, 0x00A0B0C0), (0xA0, 0xB0, 0xC0)),
    # ZED: rgba f4 @12 (alpha 0xFF), point_step 16.
    ('zed', XYZ32 + (FieldSpec('rgba', 12, pc2.FLOAT32),),
     '<fffI', (1.0, 2.0, 3.0, 0xFF0A0B0C), (0x0A, 0x0B, 0x0C)),
    # PCL PointXYZRGBNormal: '_' @12, rgb @16, '_' @20 (12 bytes), normal_x/y/z @32, curvature @44.
    ('pcl_xyzrgbnormal', XYZ32 + (FieldSpec('_', 12, pc2.UINT8, 4),
                                  FieldSpec('rgb', 16, pc2.FLOAT32),
                                  FieldSpec('_', 20, pc2.UINT8, 12),
                                  FieldSpec('normal_x', 32, pc2.FLOAT32),
                                  FieldSpec('normal_y', 36, pc2.FLOAT32),
                                  FieldSpec('normal_z', 40, pc2.FLOAT32),
                                  FieldSpec('curvature', 44, pc2.FLOAT32)),
     '<fff4xI12xffff', (1.0, 2.0, 3.0, 0x00010203, 0.0, 0.0, 1.0, 0.5), (1, 2, 3)),
    # Intensity as u1 and u2 beside an rgb u4.
    ('intensity_u8_u16', XYZ32 + (FieldSpec('rgb', 12, pc2.UINT32),
                                  FieldSpec('intensity', 16, pc2.UINT8),
                                  FieldSpec('intensity_raw', 18, pc2.UINT16)),
     '<fffIBxH', (1.0, 2.0, 3.0, 0x00FFFFFF, 200, 60000), (255, 255, 255)),
])
def test_decode_driver_layouts(name, fields, fmt, values, expected_rgb):
    data = struct.pack(fmt, *values)
    step = struct.calcsize(fmt)
    xyz, rgb = _decode_rgb(data, fields, point_step=step)
    np.testing.assert_array_equal(xyz, [[1.0, 2.0, 3.0]])
    if expected_rgb is None:
        assert rgb is None
    else:
        np.testing.assert_array_equal(rgb, [expected_rgb])


@pytest.mark.parametrize('fields,point_step,message,xyz_ok', [
    # Two different x fields: which one is x?
    (XYZ32 + (FieldSpec('x', 12, pc2.FLOAT32),), 16,
     "field name 'x' appears more than once with different layouts", False),
    # A field we read extends past the point.
    ((XYZ32[0], XYZ32[1], FieldSpec('z', 8, pc2.FLOAT64)), 12,
     "field 'z' spans bytes [8, 16) beyond point_step 12", False),
    # rgb over the coordinates: only the colour decoder reads it.
    (XYZ32 + (FieldSpec('rgb', 8, pc2.UINT32),), 12, "fields 'rgb' and 'z' overlap", True),
    (XYZ32 + (FieldSpec('rgb', 12, pc2.UINT32), FieldSpec('rgb', 8, pc2.UINT32)), 16,
     "field name 'rgb' appears more than once", True),
])
def test_contradictory_read_fields_are_errors(fields, point_step, message, xyz_ok):
    data = bytes(point_step)
    with pytest.raises(ValueError) as info:
        _decode_rgb(data, fields, point_step=point_step)
    assert message in str(info.value)
    if xyz_ok:
        np.testing.assert_array_equal(_decode(data, fields, point_step=point_step), [[0, 0, 0]])
    else:
        with pytest.raises(ValueError) as info:
            _decode(data, fields, point_step=point_step)
        assert message in str(info.value)


XYZ64 = (FieldSpec('x', 0, pc2.FLOAT64), FieldSpec('y', 8, pc2.FLOAT64),
         FieldSpec('z', 16, pc2.FLOAT64))


@pytest.mark.parametrize('fields,point_step,width,height,row_step,dtype', [
    (XYZ32, 12, 0, 1, 0, np.float32),        # width 0
    (XYZ32, 12, 5, 0, 60, np.float32),       # height 0
    (XYZ64, 24, 0, 0, 0, np.float64),        # both 0, double fields
    ((), 0, 0, 0, 0, np.float32),            # default-constructed message: no fields at all
    ((), 0, 0, 1, 0, np.float32),
    (XYZ32_RGB, 16, 0, 3, 0, np.float32),    # organised cloud with no columns
    ((FieldSpec('intensity', 0, pc2.FLOAT32),), 4, 0, 1, 0, np.float32),   # no x, y, z at all
])
def test_empty_clouds_decode_to_empty_arrays(fields, point_step, width, height, row_step, dtype):
    out = decode_xyz(b'', fields, point_step, width, height, row_step)
    assert out.shape == (0, 3) and out.dtype == dtype
    xyz, rgb = decode_xyz_rgb(b'', fields, point_step, width, height, row_step)
    assert xyz.shape == (0, 3) and xyz.dtype == dtype
    if fields is XYZ32_RGB:
        assert rgb.shape == (0, 3) and rgb.dtype == np.uint8
    else:
        assert rgb is None
    with pytest.raises(ValueError, match='data is too long: 4 bytes'):
        decode_xyz(b'\0' * 4, fields, point_step, width, height, row_step)


def test_organised_cloud_of_only_nans_decodes_to_empty():
    nan = float('nan')
    data = struct.pack('<24f', *([nan] * 24))   # 2 rows x 2 columns of 24-byte points
    fields = XYZ32 + (FieldSpec('intensity', 12, pc2.FLOAT32), FieldSpec('_', 16, 0, 8))
    out = _decode(data, fields, point_step=24, width=2, height=2, row_step=48)
    assert out.shape == (0, 3)
    kept = _decode(data, fields, point_step=24, width=2, height=2, row_step=48, skip_nans=False)
    assert kept.shape == (4, 3) and np.isnan(kept).all()


# ---- double precision (issue 10 item 2) -------------------------------------------------------

def test_float64_utm_coordinates_decode_exactly():
    points = np.array([[500000.123456789, 5000000.987654321, 12.3456789],
                       [-500123.000001, -5000000.5, -0.000001]])
    for big in (False, True):
        data, fields, step, row_step = encode_xyz(points, pc2.FLOAT64, 32, big)
        out = decode_xyz(data, fields, step, 2, 1, row_step, big)
        assert out.dtype == np.float64
        np.testing.assert_array_equal(out, points)   # bit-exact, no float32 round trip
    # float32 spacing is 1/32 m near 5e5 and 1/2 m near 5e6: y would become 5000001.0.
    assert float(np.float32(points[0, 1])) == 5000001.0


def test_float64_coordinates_with_colour():
    points = np.array([[500000.25, 5000000.125, -3.0625], [500001.5, 5000002.75, 1.0]])
    colors = np.array([[1, 2, 3], [250, 128, 0]], np.uint8)
    data, fields, step, row_step = encode_xyz(points, pc2.FLOAT64, colors=colors)
    assert step == 28 and [f.name for f in fields] == ['x', 'y', 'z', 'rgb']
    xyz, rgb = decode_xyz_rgb(data, fields, step, 2, 1, row_step)
    assert xyz.dtype == np.float64
    np.testing.assert_array_equal(xyz, points)
    np.testing.assert_array_equal(rgb, colors)


def test_mixed_float64_and_float32_coordinates_decode_to_float64():
    # x FLOAT64 @0, y FLOAT32 @8, z INT16 @12, point_step 14.
    fields = (FieldSpec('x', 0, pc2.FLOAT64), FieldSpec('y', 8, pc2.FLOAT32),
              FieldSpec('z', 12, pc2.INT16))
    data = struct.pack('<dfh', 500000.123456789, 0.1, -7)
    out = _decode(data, fields, point_step=14)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [[500000.123456789, float(np.float32(0.1)), -7.0]])


@pytest.mark.parametrize('datatype, dtype', [(5, '<i4'), (6, '<u4')])
def test_32bit_integer_coordinates_decode_exactly(datatype, dtype):
    # float32 holds integers exactly only up to 2**24 = 16777216.
    xyz = np.array([[16777217, 2147483000, 123456789]], dtype=np.int64)
    if dtype == '<i4':
        xyz[0, 1] = -2147483000
    data = xyz.astype(dtype).tobytes()
    fields = [FieldSpec(n, 4 * i, datatype, 1) for i, n in enumerate('xyz')]
    out = decode_xyz(data, fields, 12, 1, 1, 12, False)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, xyz)
