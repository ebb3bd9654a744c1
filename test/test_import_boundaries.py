"""The core never imports ROS (style H1); training never imports the shell."""

import json
import pkgutil
import subprocess
import sys

import opendlign_core

FORBIDDEN = ('rclpy', 'sensor_msgs', 'launch', 'vision_msgs', 'opendlign_ros', 'rosidl')


def _imported_after(import_lines):
    code = (import_lines + '\nimport sys, json\n'
            'print(json.dumps(sorted(sys.modules)))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_core_and_all_its_modules_import_no_ros():
    names = [m.name for m in pkgutil.iter_modules(opendlign_core.__path__)
             if m.name != '__main__']
    lines = '\n'.join(['import opendlign_core'] + [f'import opendlign_core.{n}' for n in names])
    modules = _imported_after(lines)
    bad = [m for m in modules if m.split('.')[0] in FORBIDDEN]
    assert not bad, f'opendlign_core pulled in ROS modules: {bad}'
    assert 'opendlign_core.model' in modules


def test_public_api_names_resolve():
    for name in opendlign_core.__all__:
        assert getattr(opendlign_core, name) is not None, name
    assert opendlign_core.Detector.__module__ == 'opendlign_core.detection'
