"""Parameter files apply to the detector in any namespace and under any node name."""

import functools
from pathlib import Path
from typing import Any, Dict

import pytest
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter_client import AsyncParameterClient
from ros_harness import TINY, assert_clean_stop, unique_domain_id
import yaml

from opendlign_ros.node_process import NodeProcess, config_path, ros_environment

pytestmark = pytest.mark.ros

CONFIG_DIR = Path(__file__).resolve().parents[2] / 'config'
#: Shipped parameter files (every YAML in config/ with a ros__parameters block).
PARAMS_FILES = sorted(p for p in CONFIG_DIR.glob('*.yaml') if 'ros__parameters' in p.read_text())
#: (namespace remap, node name remap, fully qualified name the node gets).
STARTS = [
    (None, None, '/opendlign'),
    ('/robot1', None, '/robot1/opendlign'),
    ('/a/b', None, '/a/b/opendlign'),
    ('/robot1', 'other', '/robot1/other'),
]


def _flatten(values: Dict[str, Any], prefix: str = '') -> Dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f'{prefix}{key}.'))
        else:
            flat[f'{prefix}{key}'] = value
    return flat


def _cli_args(params_file: Path, namespace: Any, node_name: Any) -> list:
    args = ['--ros-args', '--params-file', str(params_file)]
    if namespace:
        args += ['-r', f'__ns:={namespace}']
    if node_name:
        args += ['-r', f'__node:={node_name}']
    return args


def _applied_parameters(params_file: Path, namespace: Any, node_name: Any) -> tuple:
    """Start a plain node named like the detector; return its name and the file's values."""
    name, values = _node_parameters(_cli_args(params_file, namespace, node_name))
    return name, {k: v for k, v in values.items() if k not in _builtin_parameters()}


@functools.lru_cache(maxsize=1)
def _builtin_parameters() -> frozenset:
    return frozenset(_node_parameters([])[1])


def _node_parameters(cli_args: list) -> tuple:
    ctx = Context()
    rclpy.init(context=ctx, domain_id=unique_domain_id())
    try:
        node = rclpy.create_node(
            'opendlign', context=ctx, cli_args=cli_args,
            automatically_declare_parameters_from_overrides=True)
        try:
            names = node.list_parameters([], 0).names
            values = {name: node.get_parameter(name).value for name in names}
            return node.get_fully_qualified_name(), values
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)


def _params_like_shipped(path: Path, **values: Any) -> Path:
    """Write ``detect.yaml`` with some values replaced, keeping its keys and structure."""
    data = yaml.safe_load(config_path('detect.yaml').read_text())
    (block,) = data.values()
    block['ros__parameters'].update(values)
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_files_exist():
    assert config_path('detect.yaml') in [p.resolve() for p in PARAMS_FILES]


@pytest.mark.parametrize('params_file', PARAMS_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize('namespace,node_name,fqn', STARTS)
def test_shipped_file_applies_in_any_namespace(params_file, namespace, node_name, fqn):
    # rcl's own parser and node-name matching decide which values a node receives.
    expected = {}
    for block in yaml.safe_load(params_file.read_text()).values():
        expected.update(_flatten(block['ros__parameters']))
    name, values = _applied_parameters(params_file, namespace, node_name)
    assert name == fqn
    assert len(expected) > 10
    assert values.keys() == expected.keys()
    for key, value in expected.items():
        assert values[key] == value, key


def test_file_keyed_by_bare_node_name_is_ignored_in_a_namespace(tmp_path):
    # The failure the wildcard key fixes: 'opendlign:' reaches only /opendlign.
    path = tmp_path / 'bare.yaml'
    path.write_text('opendlign:\n  ros__parameters:\n    max_objects: 7\n')
    assert _applied_parameters(path, None, None)[1] == {'max_objects': 7}
    assert _applied_parameters(path, '/robot1', None)[1] == {}


def test_namespaced_node_process_fails_on_weights_path_from_file(tmp_path):
    # Only the file names the missing weights: exit 1 naming it proves the file was applied.
    missing = tmp_path / 'finetuned.safetensors'
    params_file = _params_like_shipped(
        tmp_path / 'detect.yaml', **{**TINY, 'weights_path': str(missing)})
    log_path = tmp_path / 'node.log'
    with open(log_path, 'w') as log, \
            NodeProcess(ros_environment(unique_domain_id()), params_file=params_file,
                        remaps={'__ns': '/robot1'}, log=log) as process:
        status = process.wait(timeout=120)
    text = log_path.read_text()
    assert status == 1, text
    assert 'cannot start' in text and str(missing) in text, text


def test_renamed_node_in_nested_namespace_serves_values_from_file(tmp_path):
    labels = ['teapot', 'kettle', 'ottoman']
    params_file = _params_like_shipped(
        tmp_path / 'detect.yaml', **{**TINY, 'labels': labels, 'max_objects': 7})
    domain = unique_domain_id()
    log_path = tmp_path / 'node.log'
    with open(log_path, 'w') as log, \
            NodeProcess(ros_environment(domain), params_file=params_file,
                        remaps={'__ns': '/a/b', '__node': 'detector'}, log=log) as process:
        ctx = Context()
        rclpy.init(context=ctx, domain_id=domain)
        node = rclpy.create_node('namespace_test_client', context=ctx)
        try:
            client = AsyncParameterClient(node, '/a/b/detector')
            deadline = 120.0
            while not client.wait_for_services(timeout_sec=0.5):
                deadline -= 0.5
                assert process.poll() is None, log_path.read_text()
                assert deadline > 0, 'no /a/b/detector parameter services'
            # The services exist from the node's constructor on; they answer once it spins.
            future = client.get_parameters(['labels', 'max_objects', 'projection.resolution'])
            executor = SingleThreadedExecutor(context=ctx)
            executor.add_node(node)
            while not future.done() and deadline > 0:
                executor.spin_until_future_complete(future, timeout_sec=0.5)
                deadline -= 0.5
                assert process.poll() is None, log_path.read_text()
            executor.shutdown()
            assert future.done(), 'no answer from /a/b/detector/get_parameters'
            values = future.result().values
            assert list(values[0].string_array_value) == labels
            assert values[1].integer_value == 7
            assert values[2].integer_value == TINY['projection.resolution']
        finally:
            node.destroy_node()
            rclpy.try_shutdown(context=ctx)
        assert_clean_stop(process, log_path)


@pytest.fixture
def launch_module(monkeypatch):
    """Import launch/detect.launch.py with stand-ins for the launch packages (not on PyPI)."""
    import importlib.util
    import sys
    import types
    from unittest import mock

    for name in ('launch', 'launch.actions', 'launch.conditions', 'launch.launch_context',
                 'launch.substitutions', 'launch_ros', 'launch_ros.actions',
                 'ament_index_python', 'ament_index_python.packages'):
        module = types.ModuleType(name)
        module.__getattr__ = lambda attr: mock.MagicMock(name=attr)
        monkeypatch.setitem(sys.modules, name, module)
    path = Path(__file__).resolve().parents[2] / 'launch' / 'detect.launch.py'
    spec = importlib.util.spec_from_file_location('detect_launch', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


KEYS = ['opendlign', '/opendlign', '/**', '**', '/**/opendlign', '/robot1/opendlign',
        '/*/opendlign', '/robot1/*', '/a/**/opendlign', '/other']


@pytest.mark.parametrize('namespace,node_name,fqn', STARTS)
def test_launch_key_matching_agrees_with_rcl(tmp_path, launch_module, namespace, node_name,
                                             fqn):
    for key in KEYS:
        path = tmp_path / 'p.yaml'
        path.write_text(f"'{key}':\n  ros__parameters:\n    max_objects: 7\n")
        applied = _applied_parameters(path, namespace, node_name)[1] == {'max_objects': 7}
        assert launch_module.node_key_matches(key, fqn) == applied, (key, fqn)


def test_launch_refuses_a_params_file_the_node_would_ignore(tmp_path, launch_module):
    assert launch_module.node_fqn('') == '/opendlign'
    assert launch_module.node_fqn('robot1') == '/robot1/opendlign'
    assert launch_module.node_fqn('b', '/a') == '/a/b/opendlign'
    assert launch_module.node_fqn('/robot1', '/a') == '/robot1/opendlign'
    for fqn in ('/opendlign', '/robot1/opendlign', '/a/b/opendlign'):
        launch_module.check_params_file(str(config_path('detect.yaml')), fqn)
    bare = tmp_path / 'bare.yaml'
    bare.write_text('opendlign:\n  ros__parameters:\n    max_objects: 7\n')
    launch_module.check_params_file(str(bare), '/opendlign')
    with pytest.raises(RuntimeError, match=r"no parameters for node /robot1/opendlign .*"
                                           r"keys: \['opendlign'\]\); key its block '/\*\*:'"):
        launch_module.check_params_file(str(bare), '/robot1/opendlign')
    with pytest.raises(FileNotFoundError, match='nope.yaml'):
        launch_module.check_params_file(str(tmp_path / 'nope.yaml'), '/opendlign')
