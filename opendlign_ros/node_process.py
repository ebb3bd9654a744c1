"""
Start and stop the detector node as a separate process, as users run it.

Used by ``opendlign bag eval``, the soak benchmark and the integration tests. The process runs
``python -m opendlign_ros.node --ros-args --params-file FILE -p name:=value ...`` (the same entry
point as the ``opendlign-detector`` console script) in its own session, so signals sent to the
caller's process group do not reach it; it is stopped with SIGTERM and killed after a timeout.
"""

import os
from pathlib import Path
import signal
import subprocess
import sys
from typing import IO, Any, Mapping, Optional, Sequence, Union

#: The Fast DDS profile for large clouds shipped with the package.
FASTDDS_PROFILE = 'fastdds_large_msgs.xml'
#: The default parameter file shipped with the package.
PARAMS_FILE = 'detect.yaml'


def config_path(name: str) -> Path:
    """
    Return the path of a file shipped in the package's ``config/`` folder.

    Looks next to the package first (a source checkout or an editable install), then in the
    installed share folder found through ``ament_index`` (``AMENT_PREFIX_PATH``).

    :param name: File name, e.g. ``'detect.yaml'``.
    :return: The path.
    :raises FileNotFoundError: If neither location has the file.
    """
    candidates = [Path(__file__).resolve().parent.parent / 'config' / name]
    try:
        from ament_index_python.packages import get_package_share_directory
        candidates.append(Path(get_package_share_directory('opendlign_ros')) / 'config' / name)
    except (ImportError, LookupError, OSError, ValueError):
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f'config file {name!r} not found in {[str(c) for c in candidates]}')


def ros_environment(domain_id: int, large_messages: bool = True,
                    base: Optional[Mapping[str, str]] = None) -> dict:
    """
    Return an environment for ROS processes confined to this machine.

    :param domain_id: ``ROS_DOMAIN_ID`` (0..101), one per test or run to isolate graphs.
    :param large_messages: Set ``FASTDDS_DEFAULT_PROFILES_FILE`` to the shipped profile.
    :param base: Environment to extend (default: ``os.environ``).
    :return: The environment, with loopback-only discovery.
    :raises ValueError: If ``domain_id`` is out of range.
    """
    if not 0 <= int(domain_id) <= 101:
        raise ValueError(f'domain_id must be in [0, 101], got {domain_id}')
    env = dict(os.environ if base is None else base)
    env['ROS_DOMAIN_ID'] = str(int(domain_id))
    # ROS_LOCALHOST_ONLY is ignored by Kilted; this keeps discovery on loopback.
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')
    if large_messages:
        env['FASTDDS_DEFAULT_PROFILES_FILE'] = str(config_path(FASTDDS_PROFILE))
    env['PYTHONUNBUFFERED'] = '1'
    root = str(Path(__file__).resolve().parent.parent)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (root, env.get('PYTHONPATH', '')) if p)
    return env


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (list, tuple)):
        return '[' + ', '.join(_format_value(v) for v in value) + ']'
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


class NodeProcess:
    """
    The detector node running in a child process.

    :param env: Process environment (see :func:`ros_environment`).
    :param params_file: ``--params-file`` argument; ``None`` uses the shipped ``detect.yaml``.
    :param overrides: Parameter overrides passed as ``-p name:=value``.
    :param remaps: Topic remappings passed as ``-r from:=to``.
    :param log: File the node's stdout and stderr go to (default: discarded).
    :param python: Interpreter to run the node with.
    """

    def __init__(self, env: Mapping[str, str], params_file: Union[str, Path, None] = None,
                 overrides: Optional[Mapping[str, Any]] = None,
                 remaps: Optional[Mapping[str, str]] = None,
                 log: Optional[IO] = None, python: str = sys.executable) -> None:
        params_file = config_path(PARAMS_FILE) if params_file is None else Path(params_file)
        if not params_file.is_file():
            raise FileNotFoundError(f'params_file {str(params_file)!r} does not exist')
        self.command = [python, '-m', 'opendlign_ros.node', '--ros-args',
                        '--params-file', str(params_file)]
        self.command += format_overrides(overrides or {})
        for source, target in (remaps or {}).items():
            self.command += ['-r', f'{source}:={target}']
        self._process = subprocess.Popen(
            self.command, env=dict(env), stdout=log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def pid(self) -> int:
        """
        Return the child's process id.

        :return: The pid.
        """
        return self._process.pid

    def poll(self) -> Optional[int]:
        """
        Return the exit status if the process has ended.

        :return: The exit status, or ``None`` while it runs.
        """
        return self._process.poll()

    def wait(self, timeout: Optional[float] = None) -> int:
        """
        Wait for the process to end.

        :param timeout: Seconds; ``None`` waits forever.
        :return: The exit status.
        :raises subprocess.TimeoutExpired: If it is still running after ``timeout``.
        """
        return self._process.wait(timeout)

    def stop(self, timeout: float = 10.0) -> int:
        """
        Stop the node with SIGTERM, killing it if it has not ended after ``timeout`` seconds.

        :param timeout: Seconds to wait after SIGTERM (and again after SIGKILL).
        :return: The exit status (negative for a signal).
        """
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout)
        return self._process.returncode

    def rss_bytes(self) -> int:
        """
        Return the resident set size of the process (Linux ``/proc``).

        :return: Bytes; 0 if the process has ended.
        """
        try:
            with open(f'/proc/{self._process.pid}/statm') as f:
                return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
        except (FileNotFoundError, ProcessLookupError):
            return 0

    def __enter__(self) -> 'NodeProcess':
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def format_overrides(overrides: Mapping[str, Any]) -> Sequence[str]:
    """
    Return ``-p name:=value`` arguments for parameter overrides.

    :param overrides: Parameter name to value (bool, int, float, str or a list of them).
    :return: The argument list.
    """
    args = []
    for name, value in overrides.items():
        args += ['-p', f'{name}:={_format_value(value)}']
    return args
