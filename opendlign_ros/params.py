"""
The detector node's parameters: one schema, declared with descriptors, mapped to core configs.

The schema mirrors :class:`opendlign_core.config.DetectorConfig` field by field, so a new config
field becomes a parameter without editing this module. Descriptions are the fields' ``#:`` doc
comments; enumerations come from their ``Literal`` types. Names:

* model fields without prefix (``model_name``, ``weights_path``, ``device``, ``precision``);
* ``projection.*``, ``classifier.*``, ``segmentation.*`` for the nested configs;
* the detector's own fields without prefix (``score_threshold``, ``nms_iou``, ...);
* ``object_map.enabled`` and ``object_map.*`` for
  :class:`opendlign_core.object_map.ObjectMapConfig` (all read-only);
* the shell's settings (:class:`ShellSettings`) and ``labels``.

Everything that is baked into the loaded model or the detector is ``read_only`` (set it in the
YAML file or with ``-p`` at start); ``labels`` and the output settings can change at run time.
"""

from dataclasses import dataclass, fields, is_dataclass, replace
import inspect
import re
import typing
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.node import Node
from rclpy.parameter import Parameter

from opendlign_core.classifier import validate_labels
from opendlign_core.config import DetectorConfig
from opendlign_core.object_map import ObjectMapConfig

#: Labels used when no ``labels`` parameter is given (ScanNet-style indoor classes).
DEFAULT_LABELS: Tuple[str, ...] = (
    'chair', 'table', 'sofa', 'bed', 'cabinet', 'bookshelf', 'desk', 'toilet', 'bathtub', 'sink',
    'door', 'window', 'refrigerator', 'curtain', 'picture', 'counter', 'shower curtain',
    'other furniture',
)
#: Most labels accepted in one set (each costs a text-encoder pass per template).
MAX_LABELS = 1000
#: Parameter name of the label list.
LABELS = 'labels'
#: Parameter name of the object map switch.
OBJECT_MAP_ENABLED = 'object_map.enabled'

_PREFIXES = {
    ('opendlign', 'model'): '',
    ('opendlign', 'projection'): 'projection.',
    ('opendlign', 'classifier'): 'classifier.',
    ('segmentation',): 'segmentation.',
    (): '',
}
#: Numeric ranges shown to users and enforced by rclpy; the core dataclasses check the rest.
_RANGES: Dict[str, Tuple[float, float]] = {
    'score_threshold': (0.0, 1.0),
    'unknown_threshold': (0.0, 1.0),
    'nms_iou': (0.0, 1.0),
    'max_points': (1, 100_000_000),
    'max_points_per_object': (1, 1_000_000),
    'min_points_per_object': (1, 1_000_000),
    'max_objects': (1, 10_000),
    'classifier.top_k': (1, 1000),
    'classifier.batch_size': (1, 4096),
    'projection.resolution': (8, 4096),
    'projection.depth_bins': (2, 1024),
    'projection.object_ratio': (0.0, 1.0),
    'projection.far_value': (0.0, 1.0),
    'projection.elevation_deg': (-90.0, 90.0),
    'segmentation.max_outside_fraction': (0.0, 1.0),
    'segmentation.horizontal_tolerance_deg': (0.0, 45.0),
    'segmentation.vertical_tolerance_deg': (0.0, 45.0),
    'segmentation.wall_yaw_search_deg': (0.0, 45.0),
    'segmentation.relief_min_color': (0.0, 442.0),
    'segmentation.relief_color_link': (0.0, 442.0),
    'segmentation.relief_wall_share': (0.0, 1.0),
    'segmentation.relief_post_overlap': (0.0, 1.0),
    'max_input_points': (1, 100_000_000),
    'marker_lifetime_sec': (0.0, 3600.0),
    'log_throttle_sec': (0.0, 3600.0),
    'transform_timeout': (0.0, 60.0),
}
#: Config fields that stay adjustable at run time (none: the detector is built once).
_DYNAMIC_CONFIG: Tuple[str, ...] = ()


@dataclass(frozen=True)
class ShellSettings:
    """Settings of the ROS node itself (not of the detection pipeline)."""

    #: Subscription QoS for ``points``: ``'sensor_data'`` (best effort) or ``'reliable'``;
    #: depth 1 either way, so a slow detector always works on the newest cloud.
    input_qos: typing.Literal['sensor_data', 'reliable'] = 'sensor_data'
    #: Clouds with more points (width x height) are rejected before decoding.
    max_input_points: int = 5_000_000
    #: Publish RViz markers on ``markers``.
    publish_markers: bool = True
    #: Lifetime of published markers, seconds; 0 keeps them until the next cloud's DELETEALL.
    marker_lifetime_sec: float = 0.0
    #: Shortest interval between repeated warnings about dropped clouds, seconds.
    log_throttle_sec: float = 5.0
    #: Frame to detect and publish in (e.g. odom or map): each cloud is transformed into it at
    #: the cloud's stamp, with tf2_ros or, without it, the node's own /tf listener. Empty:
    #: work and publish in each cloud's own frame. A leading / is ignored.
    target_frame: str = ''
    #: Longest wait for a cloud's transform to target_frame, seconds (wall clock); a cloud still
    #: without one is dropped and counted as no_transform.
    transform_timeout: float = 0.1

    def __post_init__(self) -> None:
        if self.input_qos not in ('sensor_data', 'reliable'):
            raise ValueError(
                f"input_qos must be 'sensor_data' or 'reliable', got {self.input_qos!r}")
        if self.max_input_points < 1:
            raise ValueError(f'max_input_points must be >= 1, got {self.max_input_points}')
        if not (self.transform_timeout >= 0):
            raise ValueError(f'transform_timeout must be >= 0, got {self.transform_timeout}')


#: Shell settings that may change while the node runs.
_DYNAMIC_SHELL = ('publish_markers', 'marker_lifetime_sec', 'log_throttle_sec',
                  'transform_timeout')


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter: its name, default, descriptor data and where it maps to."""

    #: Parameter name (dots separate YAML nesting levels).
    name: str
    #: Default value (a ROS parameter type: bool, int, float, str or a list of them).
    default: Any
    #: ``rcl_interfaces/ParameterType`` constant.
    type: int
    #: Text of ``ParameterDescriptor.description``.
    description: str
    #: Field path inside :class:`DetectorConfig`, ``('shell', name)`` for :class:`ShellSettings`,
    #: or ``()`` for ``labels``.
    path: Tuple[str, ...]
    #: Whether the value is fixed after start.
    read_only: bool
    #: Inclusive numeric range, or ``None``.
    range: Optional[Tuple[float, float]] = None
    #: Allowed values of a string enumeration, or ``None``.
    choices: Optional[Tuple[str, ...]] = None

    def descriptor(self) -> ParameterDescriptor:
        """
        Return the ``ParameterDescriptor`` to declare this parameter with.

        :return: Descriptor with description, type, read-only flag, range and constraints.
        """
        d = ParameterDescriptor(name=self.name, type=self.type, description=self.description,
                                read_only=self.read_only)
        if self.choices:
            d.additional_constraints = 'one of: ' + ', '.join(self.choices)
        if self.range is not None:
            lo, hi = self.range
            if self.type == ParameterType.PARAMETER_INTEGER:
                d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
            else:
                d.floating_point_range = [FloatingPointRange(from_value=float(lo),
                                                             to_value=float(hi), step=0.0)]
        return d


@dataclass(frozen=True)
class NodeSettings:
    """Everything the node reads from its parameters at start."""

    detector: DetectorConfig
    shell: ShellSettings
    labels: Tuple[str, ...]
    #: Settings of the persistent object map.
    object_map: ObjectMapConfig = ObjectMapConfig()
    #: Whether the node keeps an object map and publishes ``objects``.
    object_map_enabled: bool = True


def node_detector_defaults() -> DetectorConfig:
    """
    Return the detector settings the node starts from (before its parameter file).

    The core's defaults, except ``precision: auto``: the node runs at robot rate, so its image
    tower computes in bf16 where the CPU or GPU does so natively (about 1.4x faster on the
    bundled model, view features within cosine 0.99998 of fp32; see
    :func:`opendlign_core.model.resolve_precision`), while the library and the evaluation
    scripts keep fp32 for reproducible numbers.

    :return: The node's default :class:`DetectorConfig`.
    """
    base = DetectorConfig()
    model = replace(base.opendlign.model, precision='auto')
    return replace(base, opendlign=replace(base.opendlign, model=model))


def parameter_specs() -> Tuple[ParamSpec, ...]:
    """
    Return the schema of every node parameter, derived from the config dataclasses.

    :return: The specs: detector config fields, object map settings, shell settings, then
        ``labels``.
    """
    specs: List[ParamSpec] = []
    _collect(node_detector_defaults(), (), specs)
    specs.append(ParamSpec(
        OBJECT_MAP_ENABLED, True, ParameterType.PARAMETER_BOOL,
        'Keep a persistent map of the detected objects in the map frame (target_frame, or the '
        "cloud's frame) and publish it on objects and objects_markers (read-only: set at start)",
        ('object_map_enabled',), read_only=True))
    object_map_specs: List[ParamSpec] = []
    _collect(ObjectMapConfig(), (), object_map_specs, prefix='object_map.')
    specs.extend(replace(spec, path=('object_map',) + spec.path) for spec in object_map_specs)
    for f, hint, doc in _documented_fields(ShellSettings):
        specs.append(_spec(f.name, getattr(ShellSettings(), f.name), hint, doc,
                           ('shell', f.name), f.name not in _DYNAMIC_SHELL))
    specs.append(ParamSpec(
        LABELS, list(DEFAULT_LABELS), ParameterType.PARAMETER_STRING_ARRAY,
        'Class names to detect (open vocabulary). Can change at run time; a change is validated '
        f'(non-empty, no blank or duplicate entries, at most {MAX_LABELS} labels) and takes '
        'effect once its text embeddings are built; each detection uses one label set.',
        (), read_only=False))
    return tuple(specs)


def declare_parameters(node: Node) -> NodeSettings:
    """
    Declare every parameter on ``node`` and read the start-up settings.

    Values given with ``--params-file`` or ``-p`` override the defaults here.

    :param node: The node.
    :return: The configs built from the parameter values.
    :raises rclpy.exceptions.ParameterException: If an override has the wrong type or is out of
        range.
    :raises ValueError: If a value is rejected by a config dataclass or ``labels`` is invalid.
    """
    specs = parameter_specs()
    for spec in specs:
        node.declare_parameter(spec.name, spec.default, spec.descriptor())
    values = {spec.name: node.get_parameter(spec.name).value for spec in specs}
    return settings_from_values(values)


def settings_from_values(values: Mapping[str, Any]) -> NodeSettings:
    """
    Map parameter values onto the core and shell configs.

    :param values: Parameter name to value; missing names keep their defaults.
    :return: The settings.
    :raises ValueError: If a name is unknown, a value is rejected by a config dataclass, or the
        labels are invalid.
    """
    specs = {spec.name: spec for spec in parameter_specs()}
    unknown = sorted(set(values) - set(specs))
    if unknown:
        raise ValueError(f'unknown parameter(s) {unknown}')
    config_values: Dict[Tuple[str, ...], Any] = {}
    map_values: Dict[Tuple[str, ...], Any] = {}
    shell_values: Dict[str, Any] = {}
    labels: Sequence[str] = DEFAULT_LABELS
    map_enabled = True
    for name, value in values.items():
        spec = specs[name]
        value = _from_parameter(value, spec)
        if name == LABELS:
            labels = value
        elif name == OBJECT_MAP_ENABLED:
            map_enabled = bool(value)
        elif spec.path[0] == 'shell':
            shell_values[spec.path[1]] = value
        elif spec.path[0] == 'object_map':
            map_values[spec.path[1:]] = value
        else:
            config_values[spec.path] = value
    reason = check_labels(labels)
    if reason is not None:
        raise ValueError(f'parameter {LABELS!r}: {reason}')
    return NodeSettings(detector=_build(node_detector_defaults(), (), config_values),
                        shell=ShellSettings(**shell_values),
                        labels=validate_labels(labels),
                        object_map=_build(ObjectMapConfig(), (), map_values),
                        object_map_enabled=map_enabled)


def check_labels(labels: Any) -> Optional[str]:
    """
    Validate a label list without side effects.

    :param labels: Candidate value of the ``labels`` parameter.
    :return: ``None`` if valid, otherwise the reason it is rejected.
    """
    try:
        checked = validate_labels(labels)
    except (TypeError, ValueError) as e:
        return str(e)
    if len(checked) > MAX_LABELS:
        return f'{len(checked)} labels given; the limit is {MAX_LABELS}'
    return None


def on_set_parameters(parameters: Sequence[Parameter]) -> SetParametersResult:
    """
    Validate a parameter change (the node's on-set callback); has no side effects.

    Type, range and read-only checks are done by rclpy from the descriptors before this runs.

    :param parameters: The parameters being set.
    :return: Success, or failure with the reason.
    """
    for parameter in parameters:
        if parameter.name == LABELS:
            reason = check_labels(list(parameter.value or ()))
            if reason is not None:
                return SetParametersResult(successful=False, reason=f'labels rejected: {reason}')
    return SetParametersResult(successful=True)


def _collect(obj: Any, path: Tuple[str, ...], specs: List[ParamSpec],
             prefix: Optional[str] = None) -> None:
    for f, hint, doc in _documented_fields(type(obj)):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            _collect(value, path + (f.name,), specs)
            continue
        name = (_PREFIXES[path] if prefix is None else prefix) + f.name
        read_only = name not in _DYNAMIC_CONFIG
        specs.append(_spec(name, value, hint, doc, path + (f.name,), read_only))


def _spec(name: str, default: Any, hint: Any, doc: str, path: Tuple[str, ...],
          read_only: bool) -> ParamSpec:
    choices = None
    if typing.get_origin(hint) is typing.Literal:
        choices = tuple(str(a) for a in typing.get_args(hint))
        hint = str
    if hint is bool:
        ptype, default = ParameterType.PARAMETER_BOOL, bool(default)
    elif hint is int:
        ptype, default = ParameterType.PARAMETER_INTEGER, int(default)
    elif hint is float:
        ptype, default = ParameterType.PARAMETER_DOUBLE, float(default)
    elif hint is str:
        ptype, default = ParameterType.PARAMETER_STRING, str(default)
    elif typing.get_origin(hint) is tuple and typing.get_args(hint)[0] is float:
        ptype, default = ParameterType.PARAMETER_DOUBLE_ARRAY, [float(v) for v in default]
    else:
        raise TypeError(f'config field {".".join(path)} has type {hint!r}, which has no ROS '
                        'parameter mapping')
    description = doc
    if read_only:
        description += ' (read-only: set at start)'
    return ParamSpec(name, default, ptype, description, path, read_only, _RANGES.get(name),
                     choices)


def _documented_fields(cls: type) -> List[Tuple[Any, Any, str]]:
    hints = typing.get_type_hints(cls, include_extras=False)
    docs = _field_docs(cls)
    return [(f, hints[f.name], docs.get(f.name, f.name.replace('_', ' ').capitalize() + '.'))
            for f in fields(cls)]


def _field_docs(cls: type) -> Dict[str, str]:
    # Attribute doc comments (``#: text`` above ``name: type = default``), as Sphinx reads them.
    docs: Dict[str, str] = {}
    pending: List[str] = []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith('#:'):
            pending.append(stripped[2:].strip())
            continue
        match = re.match(r'([A-Za-z_]\w*)\s*:', stripped)
        if match and pending:
            text = ' '.join(pending).replace('``', '')
            docs[match.group(1)] = re.sub(r':\w+:`([^`]*)`', r'\1', text)
        pending = []
    return docs


def _from_parameter(value: Any, spec: ParamSpec) -> Any:
    if spec.type == ParameterType.PARAMETER_DOUBLE_ARRAY:
        return tuple(float(v) for v in value)
    if spec.type == ParameterType.PARAMETER_STRING_ARRAY:
        return list(value)
    if spec.type == ParameterType.PARAMETER_DOUBLE:
        return float(value)
    if spec.choices is not None and value not in spec.choices:
        raise ValueError(f'parameter {spec.name!r} must be one of {list(spec.choices)}, '
                         f'got {value!r}')
    return value


def _build(obj: Any, path: Tuple[str, ...], values: Mapping[Tuple[str, ...], Any]) -> Any:
    changes = {}
    for f in fields(obj):
        sub = path + (f.name,)
        current = getattr(obj, f.name)
        if is_dataclass(current):
            changes[f.name] = _build(current, sub, values)
        elif sub in values:
            changes[f.name] = values[sub]
    return replace(obj, **changes)
