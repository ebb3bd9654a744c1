"""
The ``opendlign`` console script: the core commands plus ``bag`` (rosbag2 tools).

rclpy is imported only by the ``bag`` subcommands that start or talk to a node.
"""

from typing import List, Optional

from opendlign_core.cli import build_parser, run


def main(argv: Optional[List[str]] = None) -> int:
    """
    Run the ``opendlign`` command line.

    :param argv: Arguments without the program name; ``None`` reads ``sys.argv``.
    :return: The process exit code.
    """
    from opendlign_ros.bag_cli import register_bag_commands

    return run(build_parser(extra_commands=[register_bag_commands]), argv)
