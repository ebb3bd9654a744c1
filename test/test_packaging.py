"""The repository is a complete ament_python package: colcon builds and installs it."""

from pathlib import Path
import shutil
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    colcon = Path(sys.executable).parent / 'colcon'
    if not colcon.exists():
        pytest.skip('colcon is not installed in this environment (requirements-dev.txt has it)')
    ws = tmp_path_factory.mktemp('ws')
    src = ws / 'src' / 'opendlign_ros'
    ignore = shutil.ignore_patterns('.venv', '.git', 'build', 'install', 'log', '__pycache__',
                                    '*.egg-info', 'out', '.pytest_cache', '.ruff_cache')
    shutil.copytree(ROOT, src, ignore=ignore)
    result = subprocess.run([str(colcon), 'build', '--base-paths', 'src'], cwd=ws,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return ws / 'install' / 'opendlign_ros'


def test_colcon_installs_share_files_and_executables(installed):
    share = installed / 'share' / 'opendlign_ros'
    assert (share / 'package.xml').is_file()
    assert (installed / 'share/ament_index/resource_index/packages/opendlign_ros').is_file()
    assert (share / 'launch' / 'detect.launch.py').is_file()
    assert (share / 'config' / 'detect.yaml').is_file()
    for exe in ('opendlign', 'opendlign-detector', 'detector'):
        assert (installed / 'lib' / 'opendlign_ros' / exe).is_file(), exe


def test_colcon_installs_both_python_packages_with_data(installed):
    site = next((installed / 'lib').glob('python3*/site-packages'))
    assert (site / 'opendlign_core' / 'model.py').is_file()
    assert (site / 'opendlign_ros' / 'node.py').is_file()
    assert (site / 'opendlign_core' / 'model_configs' / 'OpenDlign-Tiny-Test.json').is_file()
    assert (site / 'opendlign_core' / 'data' / 'sh3d_labels.csv').is_file()
