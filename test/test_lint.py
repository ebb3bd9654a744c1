"""ROS lint rules (ament flake8/pep257 approximated by ruff; see pyproject.toml)."""

from pathlib import Path
import subprocess
import sys

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    ruff = Path(sys.executable).parent / 'ruff'
    result = subprocess.run([str(ruff), 'check', '--output-format', 'concise', '.'], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
