"""
Decode and encode the byte layout of ``sensor_msgs/PointCloud2`` with NumPy only.

This module knows the wire layout but not the message class: the ROS shell copies the message's
attributes (``fields``, ``point_step``, ``row_step``, ``width``, ``height``, ``is_bigendian``,
``data``) into these functions, so the decoding is testable and usable without ROS.

Layout rules (REP-0104 / ``sensor_msgs/PointField``):

* A point is ``point_step`` bytes; each field lies at ``offset`` bytes inside it and holds
  ``count`` values of ``datatype`` (1..8 = INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32,
  FLOAT64). Bytes that no field covers are padding.
* A row is ``row_step`` bytes holding ``width`` points; bytes after ``width * point_step`` are row
  padding. ``len(data) == row_step * height``. A cloud with ``width * height == 0`` is empty
  (not an error).
* Multi-byte values are big-endian when ``is_bigendian`` is true, little-endian otherwise.
* ``is_dense`` is only a hint; non-finite points are filtered here regardless.

Real drivers (PCL's ``toROSMsg``, Ouster, Velodyne, Livox, RealSense, ZED) describe fields the
decoders never read in many ways PCL accepts: padding fields named ``_`` (several per point),
fields with ``count`` 0, an empty name or datatype 0, repeated names, fields overlapping each
other (``rgb`` plus ``r``/``g``/``b`` over the same bytes). Only the fields a decoder *reads*
(``x``, ``y``, ``z`` and the chosen colour fields) are validated; every other field is ignored.
A read field with ``count`` 0 is read as one value, as PCL does (its ``FieldMatches``, PCL bug
#821). Errors are contradictions among read fields: a read field repeated with a different
layout, two read fields overlapping, a read field with an unknown datatype, a negative offset or
bytes beyond ``point_step``.

Coordinates decode to float32, or to float64 when any of ``x``, ``y``, ``z`` is FLOAT64, INT32 or
UINT32, so that double-precision clouds far from the origin (UTM, map frames) and 32-bit integer
coordinates keep every digit.

Colour (:func:`decode_xyz_rgb`, ``encode_xyz(..., colors=...)``) follows the PCL conventions:

* a scalar ``rgb`` or ``rgba`` field (FLOAT32, UINT32 or INT32) whose 4 bytes are the packed
  integer ``0x00RRGGBB`` / ``0xAARRGGBB``: a FLOAT32 field is reinterpreted bit for bit, never
  converted by value; alpha is ignored;
* or three scalar fields ``r``, ``g``, ``b``: UINT8 as is, FLOAT32/FLOAT64 as 0..1 scaled to
  0..255, other integers clipped to 0..255.

Every message is validated before its buffer is interpreted: the publisher side does not check
the metadata, and a naive ``np.frombuffer`` silently returns a wrong point count.
"""

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

INT8 = 1
UINT8 = 2
INT16 = 3
UINT16 = 4
INT32 = 5
UINT32 = 6
FLOAT32 = 7
FLOAT64 = 8

#: PointField datatype constant -> (NumPy kind and size without byte order, size in bytes).
DATATYPES: Dict[int, Tuple[str, int]] = {
    INT8: ('i1', 1),
    UINT8: ('u1', 1),
    INT16: ('i2', 2),
    UINT16: ('u2', 2),
    INT32: ('i4', 4),
    UINT32: ('u4', 4),
    FLOAT32: ('f4', 4),
    FLOAT64: ('f8', 8),
}

#: PointField datatype constant -> its name, for error messages.
_DATATYPE_NAMES: Dict[int, str] = {
    INT8: 'INT8', UINT8: 'UINT8', INT16: 'INT16', UINT16: 'UINT16', INT32: 'INT32',
    UINT32: 'UINT32', FLOAT32: 'FLOAT32', FLOAT64: 'FLOAT64',
}

#: Names of the coordinate fields that :func:`decode_xyz` reads, in output column order.
XYZ = ('x', 'y', 'z')

#: Names of a packed colour field (PCL convention), in the order :func:`decode_xyz_rgb` looks.
PACKED_RGB = ('rgb', 'rgba')

#: Datatypes a packed colour field may have: 4-byte values whose bits are the packed integer.
PACKED_RGB_DATATYPES = (FLOAT32, UINT32, INT32)

#: Names of separate colour channel fields, in output column order.
RGB = ('r', 'g', 'b')

Buffer = Union[bytes, bytearray, memoryview, Any]


@dataclass(frozen=True)
class FieldSpec:
    """
    One ``sensor_msgs/PointField``: a named value (or fixed-size array) inside each point.

    Only the attributes are stored; :func:`dtype_from_fields` validates a whole field list.
    """

    #: Field name, e.g. ``'x'``, ``'intensity'``.
    name: str
    #: Byte offset of the field inside a point.
    offset: int
    #: PointField datatype constant, 1..8 (INT8 .. FLOAT64).
    datatype: int
    #: Number of consecutive values of ``datatype``; ``1`` for scalars.
    count: int = 1

    @property
    def nbytes(self) -> int:
        """
        Return the number of bytes the field occupies inside a point.

        :return: ``count * sizeof(datatype)``.
        :raises ValueError: If ``datatype`` is not 1..8.
        """
        return _datatype_size(self.datatype, self.name) * self.count


def dtype_from_fields(
    fields: Sequence[FieldSpec], point_step: int, is_bigendian: bool = False,
    names: Optional[Sequence[str]] = None,
) -> np.dtype:
    """
    Build the structured NumPy dtype of one point, validating the fields it holds.

    Padding fields (an empty name, a name starting with ``_``, ``count`` 0 or datatype 0) and,
    when ``names`` is given, every field not named there are left out without any check. The
    fields kept are validated; a kept field may appear several times with the same layout, and
    kept fields may overlap (NumPy reads overlapping fields independently).

    :param fields: The point's fields, in any order.
    :param point_step: Bytes per point (the dtype's ``itemsize``); trailing bytes are padding.
    :param is_bigendian: Byte order of multi-byte values in the buffer.
    :param names: Names of the fields to keep (``None``: every field that is not padding). A
        kept field with ``count`` 0 is read as one value (PCL's convention).
    :return: A structured dtype with one entry per kept field (subarray of shape ``(count,)``
        when ``count > 1``) at its offset, with ``itemsize == point_step``.
    :raises TypeError: If an attribute has the wrong type.
    :raises ValueError: If ``point_step`` is below 1, there are no fields, or a kept field has a
        datatype other than 1..8, a negative offset, bytes beyond ``point_step``, or appears
        again with a different offset, datatype or count.
    """
    point_step = _check_int('point_step', point_step)
    if point_step < 1:
        raise ValueError(f'point_step must be >= 1, got {point_step}')
    if not isinstance(is_bigendian, (bool, np.bool_)):
        raise TypeError(f'is_bigendian must be a bool, got {type(is_bigendian).__name__}')
    _check_fields(fields)
    if len(fields) == 0:
        raise ValueError('fields is empty: a point cloud needs at least the x, y, z fields')
    wanted = None if names is None else set(names)

    order = '>' if is_bigendian else '<'
    kept: Dict[str, Tuple[int, int, int]] = {}
    for field in fields:
        name = field.name
        if wanted is None:
            if _is_padding(field):
                continue
        elif name not in wanted:
            continue
        offset = field.offset
        datatype = field.datatype
        # PCL reads a scalar field declared with count 0 as one value (PCL bug #821).
        count = max(field.count, 1)
        if offset < 0:
            raise ValueError(f'field {name!r} has a negative offset {offset}')
        if field.count < 0:
            raise ValueError(f'field {name!r} has count {field.count}; expected >= 1')
        kind, size = DATATYPES.get(datatype, (None, 0))
        if kind is None:
            raise ValueError(
                f'field {name!r} has unknown datatype {datatype}; expected 1..8 '
                '(INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64)')
        end = offset + size * count
        if end > point_step:
            raise ValueError(
                f'field {name!r} spans bytes [{offset}, {end}) beyond point_step {point_step}')
        layout = (offset, datatype, count)
        if name in kept and kept[name] != layout:
            raise ValueError(
                f'field name {name!r} appears more than once with different layouts: '
                f'(offset, datatype, count) {kept[name]} and {layout}')
        kept[name] = layout

    formats = []
    for offset, datatype, count in kept.values():
        kind, size = DATATYPES[datatype]
        base = np.dtype(order + kind) if size > 1 else np.dtype(kind)
        formats.append(base if count == 1 else np.dtype((base, (count,))))
    return np.dtype({'names': list(kept), 'formats': formats,
                     'offsets': [layout[0] for layout in kept.values()],
                     'itemsize': point_step})


def _check_fields(fields: Any) -> None:
    """
    Check the types of a field list's attributes (values are checked where they are used).

    :param fields: Candidate sequence of :class:`FieldSpec`.
    :raises TypeError: If ``fields`` is not a sequence or an attribute has the wrong type.
    """
    if isinstance(fields, (str, bytes)) or not isinstance(fields, Sequence):
        raise TypeError(f'fields must be a sequence of FieldSpec, got {type(fields).__name__}')
    for index, field in enumerate(fields):
        if not isinstance(field.name, str):
            raise TypeError(
                f'fields[{index}].name must be a str, got {type(field.name).__name__}')
        for attribute in ('offset', 'datatype', 'count'):
            _check_int(f'field {field.name!r} {attribute}', getattr(field, attribute))


def _is_padding(field: FieldSpec) -> bool:
    """
    Tell whether a field carries no information (PCL padding and its relatives).

    :param field: A field whose attribute types are checked.
    :return: True for an empty name, a name starting with ``_`` (PCL names padding ``_``), a
        count of 0 or below, or datatype 0.
    """
    return (not field.name or field.name.startswith('_') or field.count <= 0
            or field.datatype == 0)


def decode_xyz(
    data: Buffer,
    fields: Sequence[FieldSpec],
    point_step: int,
    width: int,
    height: int,
    row_step: int,
    is_bigendian: bool = False,
    skip_nans: bool = True,
    max_points: Optional[int] = None,
) -> np.ndarray:
    """
    Decode the x, y, z coordinates of a PointCloud2 buffer.

    The buffer is interpreted in place (``np.frombuffer`` plus a strided view, so row padding and
    per-point padding are skipped without an intermediate copy); the only copy is the output.

    :param data: The message's ``data``: ``bytes``, ``bytearray``, ``memoryview``,
        ``array.array`` or a contiguous NumPy array (any object exposing a contiguous buffer).
    :param fields: The message's fields as :class:`FieldSpec`; must contain scalar ``x``, ``y``
        and ``z`` of any datatype. Other fields are not read and not checked (see the module
        docstring).
    :param point_step: Bytes per point.
    :param width: Points per row (``0`` for an empty cloud).
    :param height: Rows (``1`` for an unorganised cloud, ``0`` for an empty one).
    :param row_step: Bytes per row, ``>= width * point_step``.
    :param is_bigendian: Byte order of the buffer's multi-byte values.
    :param skip_nans: Drop points with any non-finite coordinate (NaN or infinity); when false,
        return all ``width * height`` points in row-major order.
    :param max_points: Reject clouds with more than this many points (``None``: no cap).
    :return: ``(N, 3)`` array of coordinates in the cloud's frame (metres for ROS clouds), a
        fresh C-contiguous array that does not alias ``data``: float64 when any of x, y, z is
        FLOAT64, INT32 or UINT32 (values exact), else float32. ``N`` is 0 for an empty cloud
        (``width * height == 0``; the fields are then not required) and when ``skip_nans`` is
        true and no point is finite. Integer coordinates are converted without scaling.
    :raises TypeError: If ``data`` does not expose a buffer or an attribute has the wrong type.
    :raises ValueError: If the metadata is inconsistent: see :func:`dtype_from_fields` (applied
        to x, y, z only), plus a negative size, more than ``max_points`` points, a missing or
        non-scalar x/y/z field, two of x, y, z overlapping, ``row_step < width * point_step``,
        or ``len(data) != row_step * height``.
    """
    points, _ = _point_view(data, fields, point_step, width, height, row_step, is_bigendian,
                            max_points, colour=False)
    xyz = _xyz_of(points)
    if skip_nans and not np.isfinite(xyz).all():   # flat check first: clouds are usually dense
        xyz = xyz[np.isfinite(xyz).all(axis=1)]
    return xyz


def decode_xyz_rgb(
    data: Buffer,
    fields: Sequence[FieldSpec],
    point_step: int,
    width: int,
    height: int,
    row_step: int,
    is_bigendian: bool = False,
    skip_nans: bool = True,
    max_points: Optional[int] = None,
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """
    Decode the x, y, z coordinates and the colour of a PointCloud2 buffer.

    The coordinates, the metadata checks and the buffer handling are those of
    :func:`decode_xyz`. The colour comes from the first layout present, in this order:

    * a scalar ``rgb``, else ``rgba``, field of datatype FLOAT32, UINT32 or INT32 whose 4 bytes
      (in the buffer's byte order) are the packed integer ``0x00RRGGBB`` / ``0xAARRGGBB`` (PCL
      convention: a FLOAT32 field is reinterpreted bit for bit, not converted by value); the
      alpha byte is ignored;
    * three scalar fields ``r``, ``g`` and ``b``: UINT8 values are used as is, FLOAT32/FLOAT64
      values are intensities in 0..1 scaled by 255 (clipped to 0..255, NaN as 0, rounded to
      the nearest integer, ties to even), other integer types are clipped to 0..255.

    Other fields (``intensity``, ``ring``, ...) are ignored.

    :param data: The message's ``data``; see :func:`decode_xyz`.
    :param fields: The message's fields as :class:`FieldSpec`; must contain scalar ``x``, ``y``
        and ``z`` of any datatype, and may contain one of the colour layouts above.
    :param point_step: Bytes per point.
    :param width: Points per row (``0`` for an empty cloud).
    :param height: Rows (``1`` for an unorganised cloud, ``0`` for an empty one).
    :param row_step: Bytes per row, ``>= width * point_step``.
    :param is_bigendian: Byte order of the buffer's multi-byte values, colour included.
    :param skip_nans: Drop points with any non-finite coordinate (NaN or infinity) from both
        outputs; when false, return all ``width * height`` points in row-major order.
    :param max_points: Reject clouds with more than this many points (``None``: no cap).
    :return: ``(xyz, rgb)``: ``xyz`` is the ``(N, 3)`` float32 or float64 array
        :func:`decode_xyz` returns; ``rgb`` is an ``(N, 3)`` uint8 array of red, green, blue
        (0..255) for the same rows, or ``None`` when the cloud has no colour field. Both are
        fresh C-contiguous arrays that do not alias ``data``.
    :raises TypeError: If ``data`` does not expose a buffer or an attribute has the wrong type.
    :raises ValueError: For the metadata errors of :func:`decode_xyz`, a colour field with
        ``count > 1``, an ``rgb``/``rgba`` field whose datatype is not FLOAT32, UINT32 or INT32,
        only some of ``r``, ``g``, ``b`` present (without an ``rgb``/``rgba`` field), or a
        colour field overlapping another read field.
    """
    points, colour_names = _point_view(data, fields, point_step, width, height, row_step,
                                       is_bigendian, max_points, colour=True)
    xyz = _xyz_of(points)
    rgb = None if colour_names is None else _rgb_of(points, colour_names)
    if skip_nans and not np.isfinite(xyz).all():   # flat check first: clouds are usually dense
        finite = np.isfinite(xyz).all(axis=1)
        xyz = xyz[finite]
        rgb = None if rgb is None else rgb[finite]
    return xyz, rgb


def encode_xyz(
    points: np.ndarray,
    datatype: int = FLOAT32,
    point_step: Optional[int] = None,
    is_bigendian: bool = False,
    colors: Optional[np.ndarray] = None,
) -> Tuple[bytes, Tuple[FieldSpec, ...], int, int]:
    """
    Encode coordinates as an unorganised PointCloud2 buffer (``height == 1``, ``width == N``).

    :param points: ``(N, 3)`` array of x, y, z (any real dtype; non-finite values are kept).
    :param datatype: ``FLOAT32`` (7) or ``FLOAT64`` (8).
    :param point_step: Bytes per point, ``>= 3 * sizeof(datatype)``, plus 4 with ``colors``;
        extra bytes are zero padding. ``None`` means that minimum.
    :param is_bigendian: Write multi-byte values big-endian (the packed colour included).
    :param colors: Optional ``(N, 3)`` integer array of red, green, blue, each 0..255, for the
        same rows as ``points``. Written as a FLOAT32 field ``rgb`` right after z (offset
        ``3 * sizeof(datatype)``) whose bits are the packed integer ``0x00RRGGBB`` (PCL
        convention; read it back with :func:`decode_xyz_rgb`).
    :return: ``(data, fields, point_step, row_step)``; ``fields`` are x, y, z at offsets 0,
        s, 2s for value size s, then ``rgb`` at 3s when ``colors`` is given, and
        ``row_step == N * point_step``.
    :raises TypeError: If ``points`` is not a real-valued array or ``colors`` is not an integer
        array.
    :raises ValueError: If ``points`` is not ``(N, 3)``, ``datatype`` is not a float type,
        ``point_step`` is too small, or ``colors`` is not ``(N, 3)`` or has a value outside
        0..255.
    """
    points = np.asarray(points)
    if points.dtype.kind not in 'fiub':
        raise TypeError(f'points must be a real-valued array, got dtype {points.dtype}')
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f'points must have shape (N, 3), got {points.shape}')
    if colors is not None:
        colors = _check_colors(colors, points.shape[0])
    datatype = _check_int('datatype', datatype)
    if datatype not in (FLOAT32, FLOAT64):
        raise ValueError(f'datatype must be FLOAT32 (7) or FLOAT64 (8), got {datatype}')
    size = DATATYPES[datatype][1]
    minimum = 3 * size if colors is None else 3 * size + 4
    if point_step is None:
        point_step = minimum
    point_step = _check_int('point_step', point_step)
    if point_step < minimum:
        with_colors = '' if colors is None else ' with colors'
        raise ValueError(f'point_step must be >= {minimum} for datatype {datatype}'
                         f'{with_colors}, got {point_step}')
    fields = tuple(FieldSpec(name, i * size, datatype, 1) for i, name in enumerate(XYZ))
    if colors is not None:
        fields += (FieldSpec('rgb', 3 * size, FLOAT32, 1),)
    dtype = dtype_from_fields(fields, point_step, is_bigendian)
    out = np.zeros(points.shape[0], dtype=dtype)
    for column, name in enumerate(XYZ):
        out[name] = points[:, column]
    if colors is not None:
        # Write the packed integer through a uint32 view so the float field holds its exact
        # bits (no value conversion).
        _bits_u4(out['rgb'])[...] = (
            (colors[:, 0] << 16) | (colors[:, 1] << 8) | colors[:, 2])
    return out.tobytes(), fields, point_step, points.shape[0] * point_step


def _check_colors(colors: Any, num_points: int) -> np.ndarray:
    """
    Validate the ``colors`` argument of :func:`encode_xyz`.

    :param colors: Candidate ``(N, 3)`` integer array of red, green, blue.
    :param num_points: ``N``, the number of points.
    :return: The colours as a native ``(N, 3)`` uint32 array, ready for bit packing.
    :raises TypeError: If ``colors`` is not an integer array.
    :raises ValueError: If ``colors`` is not ``(num_points, 3)`` or a value is outside 0..255.
    """
    colors = np.asarray(colors)
    if colors.dtype.kind not in 'iu':
        raise TypeError(
            f'colors must be an integer array (e.g. uint8) of values 0..255, got dtype '
            f'{colors.dtype}')
    if colors.shape != (num_points, 3):
        raise ValueError(
            f'colors must have shape (N, 3) = ({num_points}, 3) like points, got {colors.shape}')
    if colors.size and (colors.min() < 0 or colors.max() > 255):
        raise ValueError(
            f'colors must be in 0..255, got values in {colors.min()}..{colors.max()}')
    return colors.astype(np.uint32)


def _point_view(
    data: Buffer,
    fields: Sequence[FieldSpec],
    point_step: int,
    width: int,
    height: int,
    row_step: int,
    is_bigendian: bool,
    max_points: Optional[int],
    colour: bool,
) -> Tuple[np.ndarray, Optional[Tuple[str, ...]]]:
    """
    Validate a PointCloud2's metadata and buffer and view the buffer as structured points.

    Shared by the decoders; the parameters and errors are those of :func:`decode_xyz`.

    :param colour: Also pick and validate the colour fields (:func:`_colour_fields`).
    :return: ``(points, colour_names)``: a ``(height, width)`` structured array holding only the
        read fields and aliasing ``data`` (strides ``row_step`` and ``point_step``, so row
        padding is skipped without a copy), and the colour layout (``None`` without colour or
        when ``colour`` is false). An empty cloud gives a ``(0,)`` array of x, y, z.
    """
    width = _check_int('width', width)
    height = _check_int('height', height)
    row_step = _check_int('row_step', row_step)
    point_step = _check_int('point_step', point_step)
    if width < 0 or height < 0 or row_step < 0:
        raise ValueError(f'width, height and row_step must be >= 0, got width={width}, '
                         f'height={height}, row_step={row_step}')
    num_points = width * height
    if max_points is not None and num_points > max_points:
        raise ValueError(
            f'cloud has {num_points} points (width={width} x height={height}), over the cap '
            f'max_points={max_points}')
    _check_fields(fields)
    if num_points == 0:
        size, expected = len(_as_bytes(data)), row_step * height
        if size != expected:
            raise ValueError(f'data is too {"short" if size < expected else "long"}: {size} '
                             f'bytes, expected row_step * height = {row_step} * {height} = '
                             f'{expected}')
        if len(fields) == 0 or point_step < 1 or any(
                name not in {f.name for f in fields} for name in XYZ):
            # E.g. a default-constructed message (no fields, point_step 0): nothing to read.
            return np.zeros(0, dtype=[(name, _empty_xyz_dtype(fields)) for name in XYZ]), None
    colour_names = _colour_fields(fields) if colour else None
    read = XYZ + (colour_names or ())
    dtype = dtype_from_fields(fields, point_step, is_bigendian, names=read)
    for name in XYZ:
        if name not in dtype.names:
            present = sorted({f.name for f in fields if not _is_padding(f)})
            raise ValueError(f'field {name!r} is missing; fields are {present}')
    for name in read:
        if dtype.fields[name][0].shape != ():
            kind = 'colour field' if name not in XYZ else 'field'
            raise ValueError(
                f'{kind} {name!r} has count {dtype.fields[name][0].shape[0]}; expected 1')
    spans = sorted((dtype.fields[name][1], dtype.fields[name][1] + dtype.fields[name][0].itemsize,
                    name) for name in read)
    for (_, end_a, name_a), (start_b, _, name_b) in zip(spans, spans[1:]):
        if start_b < end_a:
            raise ValueError(
                f'fields {name_a!r} and {name_b!r} overlap (bytes {start_b}..{end_a - 1})')
    if row_step < width * point_step:
        raise ValueError(
            f'row_step {row_step} is smaller than width * point_step = {width} * {point_step} '
            f'= {width * point_step}')
    buffer = _as_bytes(data)
    expected = row_step * height
    if buffer.size != expected:
        kind = 'short' if buffer.size < expected else 'long'
        raise ValueError(
            f'data is too {kind}: {buffer.size} bytes, expected row_step * height = '
            f'{row_step} * {height} = {expected}')
    if num_points == 0:
        return np.zeros(0, dtype=dtype), colour_names
    return np.ndarray(shape=(height, width), dtype=dtype, buffer=buffer,
                      strides=(row_step, point_step)), colour_names


def _empty_xyz_dtype(fields: Sequence[FieldSpec]) -> np.dtype:
    """
    Return the coordinate dtype of an empty cloud whose layout cannot be built.

    :param fields: Fields with checked attribute types.
    :return: float64 when a field named x, y or z is FLOAT64, else float32.
    """
    wide = any(f.name in XYZ and f.datatype == FLOAT64 for f in fields)
    return np.dtype(np.float64 if wide else np.float32)


def _xyz_of(points: np.ndarray) -> np.ndarray:
    """
    Copy the coordinates out of a structured point view, without filtering.

    :param points: Structured view from :func:`_point_view`.
    :return: ``(height * width, 3)`` float64 array when any coordinate field is FLOAT64,
        INT32 or UINT32 (float32 holds integers exactly only up to 2**24, so these would lose
        digits), else float32; row-major.
    """
    wide = any(points.dtype.fields[name][0].itemsize >= 4
               and not (points.dtype.fields[name][0].kind == 'f'
                        and points.dtype.fields[name][0].itemsize == 4) for name in XYZ)
    xyz = np.empty((points.size, 3), dtype=np.float64 if wide else np.float32)
    for column, name in enumerate(XYZ):
        # Assignment casts and byte-swaps to the native output type in one pass.
        xyz[:, column] = points[name].reshape(-1)
    return xyz


def _colour_fields(fields: Sequence[FieldSpec]) -> Optional[Tuple[str, ...]]:
    """
    Pick and validate the colour layout of a field list.

    Fields with an empty name, a name starting with ``_`` or datatype 0 never count as colour.

    :param fields: Fields with checked attribute types.
    :return: ``(name,)`` for a packed ``rgb``/``rgba`` field, ``('r', 'g', 'b')`` for separate
        channels, or ``None`` when there is no colour field.
    :raises ValueError: If a packed field is not FLOAT32, UINT32 or INT32, or only some of
        ``r``, ``g``, ``b`` are present. Counts, offsets and repeats are checked with the
        coordinates.
    """
    by_name = {field.name: field for field in fields
               if field.name and not field.name.startswith('_') and field.datatype != 0}
    for name in PACKED_RGB:
        if name in by_name:
            field = by_name[name]
            if field.datatype not in PACKED_RGB_DATATYPES:
                raise ValueError(
                    f'colour field {name!r} has datatype {field.datatype} '
                    f'({_DATATYPE_NAMES.get(field.datatype, "unknown")}); expected FLOAT32 (7), '
                    'UINT32 (6) or INT32 (5) holding packed 0x00RRGGBB bits')
            return (name,)
    present = [name for name in RGB if name in by_name]
    if not present:
        return None
    if len(present) < len(RGB):
        missing = [name for name in RGB if name not in by_name]
        raise ValueError(
            f'colour fields r, g, b must all be present; missing {missing} '
            f'(fields are {list(by_name)})')
    return RGB


def _rgb_of(points: np.ndarray, names: Tuple[str, ...]) -> np.ndarray:
    """
    Copy the colour out of a structured point view, without filtering.

    :param points: Structured view from :func:`_point_view`.
    :param names: Colour layout from :func:`_colour_fields`.
    :return: ``(height * width, 3)`` uint8 array of red, green, blue, row-major.
    """
    rgb = np.empty((points.size, 3), dtype=np.uint8)
    # (height, width, 3) view of the output: channels are written without flattening the
    # strided input first.
    grid = rgb.reshape(points.shape + (3,))
    if len(names) == 1:
        # Native uint32 copy of the packed bits; the float value is never looked at.
        packed = _bits_u4(points[names[0]]).astype(np.uint32)
        for column, shift in enumerate((16, 8, 0)):
            grid[..., column] = (packed >> shift) & 0xFF
        return rgb
    for column, name in enumerate(names):
        values = points[name]
        if values.dtype.kind == 'f':
            scaled = np.rint(np.clip(values.astype(np.float64) * 255.0, 0.0, 255.0))
            scaled[np.isnan(scaled)] = 0.0
            grid[..., column] = scaled
        elif values.dtype == np.uint8:
            grid[..., column] = values
        else:
            grid[..., column] = np.clip(values.astype(np.int64), 0, 255)
    return rgb


def _bits_u4(values: np.ndarray) -> np.ndarray:
    """
    View 4-byte values (float32, int32 or uint32) as uint32 of the same byte order.

    :param values: Array of a 4-byte dtype, possibly strided or a structured-array field.
    :return: A view of the same memory whose values are the raw bits.
    """
    return values.view(np.dtype(values.dtype.str[0] + 'u4'))


def _as_bytes(data: Buffer) -> np.ndarray:
    if isinstance(data, np.ndarray):
        if not data.flags.c_contiguous:
            raise ValueError('data must be a C-contiguous array')
        return data.reshape(-1).view(np.uint8)
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(
            f'data must expose a buffer (bytes, array.array, ...), got {type(data).__name__}'
        ) from None
    if not view.c_contiguous:
        raise ValueError('data must be a contiguous buffer')
    return np.frombuffer(view.cast('B') if view.format != 'B' or view.ndim != 1 else view,
                         dtype=np.uint8)


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f'{name} must be an int, got {type(value).__name__} {value!r}')
    return int(value)


def _datatype_size(datatype: int, name: str) -> int:
    if datatype not in DATATYPES:
        raise ValueError(f'field {name!r} has unknown datatype {datatype}; expected 1..8')
    return DATATYPES[datatype][1]
