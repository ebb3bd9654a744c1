"""
The ``opendlign`` command line (core commands; the ROS package adds ``bag``).

Run ``opendlign --help`` for the list, or ``python -m opendlign_core`` where ROS is not installed.
"""

import argparse
import logging
import sys
from typing import Any, Callable, List, Optional, Sequence


def build_parser(
    extra_commands: Sequence[Callable[[Any], None]] = (),
) -> argparse.ArgumentParser:
    """
    Build the parser with every core subcommand.

    :param extra_commands: Functions that add more subcommands to the subparsers object (the ROS
        package adds ``bag`` this way, so the core never imports it).
    :return: The parser; each subcommand sets ``func(args) -> int``.
    """
    from opendlign_core.eval_cli import register_eval_commands
    from opendlign_core.scene_cli import register_scene_commands

    parser = argparse.ArgumentParser(
        prog='opendlign',
        description='Open-vocabulary 3D object recognition (OpenDlign) on point clouds.')
    parser.add_argument('-v', '--verbose', action='store_true', help='log debug messages')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    register_eval_commands(sub)
    register_scene_commands(sub)
    for register in extra_commands:
        register(sub)
    return parser


def run(parser: argparse.ArgumentParser, argv: Optional[List[str]] = None) -> int:
    """
    Parse ``argv`` and run the chosen subcommand, turning input errors into exit code 2.

    :param parser: A parser from :func:`build_parser` (possibly extended).
    :param argv: Arguments without the program name; ``None`` reads ``sys.argv``.
    :return: The process exit code.
    """
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format='%(levelname)s %(name)s: %(message)s')
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, TypeError) as e:
        print(f'opendlign {args.command}: error: {e}', file=sys.stderr)
        return 2


def main(argv: Optional[List[str]] = None) -> int:
    """
    Entry point of ``python -m opendlign_core``.

    :param argv: Arguments without the program name.
    :return: The process exit code.
    """
    return run(build_parser(), argv)
