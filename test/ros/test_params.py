"""Shell unit tests: parameter declaration, mapping to DetectorConfig and label validation."""

from dataclasses import replace

import pytest
from rcl_interfaces.msg import ParameterType
import rclpy
from rclpy.context import Context
from rclpy.exceptions import InvalidParameterValueException
from rclpy.parameter import Parameter
from ros_harness import unique_domain_id

from opendlign_core.config import DetectorConfig
from opendlign_ros import params

pytestmark = pytest.mark.ros


@pytest.fixture
def context():
    ctx = Context()
    rclpy.init(context=ctx, domain_id=unique_domain_id())
    yield ctx
    rclpy.try_shutdown(context=ctx)


def test_every_config_field_is_a_described_parameter():
    specs = {s.name: s for s in params.parameter_specs()}
    assert len(specs) == len(params.parameter_specs())
    for name in ('model_name', 'weights_path', 'device', 'precision', 'projection.resolution',
                 'classifier.top_k', 'segmentation.voxel_size', 'score_threshold', 'nms_iou',
                 'input_qos', 'max_input_points', 'labels'):
        assert specs[name].description
    for name in ('model_name', 'weights_path', 'device', 'precision', 'score_threshold'):
        assert specs[name].read_only
    assert not specs['labels'].read_only and not specs['publish_markers'].read_only
    assert specs['labels'].type == ParameterType.PARAMETER_STRING_ARRAY
    assert specs['labels'].default == list(params.DEFAULT_LABELS)
    assert specs['projection.view_angles_deg'].type == ParameterType.PARAMETER_DOUBLE_ARRAY
    assert specs['precision'].choices == ('fp32', 'bf16', 'fp16', 'auto')
    # The node (not the library) starts from precision auto: robot rate.
    assert specs['precision'].default == 'auto'
    assert params.settings_from_values({}).detector.opendlign.model.precision == 'auto'
    assert specs['score_threshold'].range == (0.0, 1.0)
    d = specs['classifier.top_k'].descriptor()
    assert (d.integer_range[0].from_value, d.integer_range[0].to_value) == (1, 1000)
    assert specs['precision'].descriptor().additional_constraints == \
        'one of: fp32, bf16, fp16, auto'
    assert specs['segmentation.voxel_size'].description.startswith('Edge of the voxel grid')


def test_settings_from_values_maps_nested_fields():
    settings = params.settings_from_values({
        'model_name': 'OpenDlign-Tiny-Test', 'device': 'cuda:1', 'projection.resolution': 64,
        'projection.view_angles_deg': [0.0, 90.0], 'classifier.top_k': 3,
        'segmentation.voxel_size': 0.05, 'score_threshold': 0.25, 'input_qos': 'reliable',
        'labels': [' chair ', 'table']})
    cfg = settings.detector
    assert isinstance(cfg, DetectorConfig)
    assert cfg.opendlign.model.model_name == 'OpenDlign-Tiny-Test'
    assert cfg.opendlign.model.device == 'cuda:1'
    assert cfg.opendlign.projection.resolution == 64
    assert cfg.opendlign.projection.view_angles_deg == (0.0, 90.0)
    assert cfg.opendlign.classifier.top_k == 3
    assert cfg.segmentation.voxel_size == 0.05 and cfg.score_threshold == 0.25
    assert settings.shell.input_qos == 'reliable'
    assert settings.labels == ('chair', 'table')
    assert params.settings_from_values({}).detector == params.node_detector_defaults()
    assert params.node_detector_defaults() == replace(
        DetectorConfig(), opendlign=replace(DetectorConfig().opendlign, model=replace(
            DetectorConfig().opendlign.model, precision='auto')))


@pytest.mark.parametrize('values,message', [
    ({'precision': 'int8'}, "'precision' must be one of"),
    ({'input_qos': 'fast'}, "'input_qos' must be one of"),
    ({'labels': []}, 'must not be empty'),
    ({'nms_iou': 0.0}, 'nms_iou must be in (0, 1]'),
    ({'no_such': 1}, "unknown parameter(s) ['no_such']"),
])
def test_settings_from_values_rejects(values, message):
    with pytest.raises(ValueError) as info:
        params.settings_from_values(values)
    assert message in str(info.value)


@pytest.mark.parametrize('labels,reason', [
    ([], 'must not be empty'),
    (['chair', ''], 'labels[1] is blank'),
    (['chair', 'chair'], "duplicates: ['chair']"),
    (['x' * 201], 'limit is 200'),
    ([f'l{i}' for i in range(params.MAX_LABELS + 1)], f'the limit is {params.MAX_LABELS}'),
    ('chair', 'not a single string'),
])
def test_check_labels(labels, reason):
    assert reason in params.check_labels(labels)


def test_check_labels_accepts_valid_and_on_set_has_no_side_effects():
    assert params.check_labels(['chair', 'shower curtain']) is None
    ok = params.on_set_parameters([Parameter('labels', value=['a', 'b'])])
    bad = params.on_set_parameters([Parameter('labels', value=['a', 'a'])])
    assert ok.successful and not bad.successful and 'duplicates' in bad.reason
    assert params.on_set_parameters([Parameter('other', value=1)]).successful


def test_declare_on_node_reads_overrides(context):
    node = rclpy.create_node('opendlign', context=context, parameter_overrides=[
        Parameter('model_name', value='OpenDlign-Tiny-Test'),
        Parameter('segmentation.min_cluster_points', value=7),
        Parameter('labels', value=['mug', 'plate'])])
    try:
        settings = params.declare_parameters(node)
        assert settings.detector.opendlign.model.model_name == 'OpenDlign-Tiny-Test'
        assert settings.detector.segmentation.min_cluster_points == 7
        assert settings.labels == ('mug', 'plate')
        desc = node.describe_parameter('weights_path')
        assert desc.read_only and 'weights' in desc.description.lower()
        # rclpy enforces read-only and ranges from the descriptors.
        assert not node.set_parameters([Parameter('device', value='cuda')])[0].successful
        assert not node.set_parameters([Parameter('marker_lifetime_sec', value=-1.0)])[0] \
            .successful
        assert node.set_parameters([Parameter('marker_lifetime_sec', value=2.0)])[0].successful
    finally:
        node.destroy_node()


def test_declare_rejects_out_of_range_override(context):
    node = rclpy.create_node('opendlign', context=context, parameter_overrides=[
        Parameter('score_threshold', value=1.5)])
    try:
        with pytest.raises(InvalidParameterValueException):
            params.declare_parameters(node)
    finally:
        node.destroy_node()


def test_frame_and_object_map_parameters():
    specs = {s.name: s for s in params.parameter_specs()}
    assert specs['target_frame'].default == '' and specs['target_frame'].read_only
    assert specs['transform_timeout'].default == 0.1
    assert not specs['transform_timeout'].read_only
    assert specs['transform_timeout'].range == (0.0, 60.0)
    assert specs['object_map.enabled'].default is True and specs['object_map.enabled'].read_only
    map_specs = [s for s in specs.values() if s.path[:1] == ('object_map',)]
    assert {s.name for s in map_specs} >= {'object_map.voxel_size', 'object_map.min_observations',
                                           'object_map.label_fusion'}
    assert specs['object_map.label_fusion'].choices == ('features', 'scores')
    assert all(s.name.startswith('object_map.') and s.read_only and s.description
               for s in map_specs)
    settings = params.settings_from_values({'target_frame': '/odom', 'transform_timeout': 0.5,
                                            'object_map.enabled': False,
                                            'object_map.min_observations': 3,
                                            'object_map.max_age': 30.0})
    assert (settings.object_map.min_observations, settings.object_map.max_age) == (3, 30.0)
    assert (settings.shell.target_frame, settings.shell.transform_timeout) == ('/odom', 0.5)
    assert not settings.object_map_enabled
    assert params.settings_from_values({}).object_map_enabled
    with pytest.raises(ValueError, match='transform_timeout must be >= 0'):
        params.settings_from_values({'transform_timeout': -0.1})
    with pytest.raises(ValueError, match='ObjectMapConfig.min_observations must be'):
        params.settings_from_values({'object_map.min_observations': 0})
