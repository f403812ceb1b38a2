"""The ``aioiam`` command line: one module per subcommand.

- ``demo``: the library at work on the built-in emulator;
- ``token`` and ``inspect``: a fresh token for the shell, and what a token says;
- ``fake-iam``: the emulator on loopback for local development.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .._version import __version__
from . import demo, fake_iam, token
from .demo import WAIT_THRESHOLD, DemoReport, run_demo, summary

__all__ = ["WAIT_THRESHOLD", "DemoReport", "main", "run_demo", "summary"]


def parser() -> argparse.ArgumentParser:
    """The whole command line."""
    top = argparse.ArgumentParser(prog="aioiam", description="Asynchronous IBM Cloud IAM tokens.")
    top.add_argument("--version", action="version", version=f"aioiam {__version__}")
    commands = top.add_subparsers(dest="command", metavar="COMMAND")
    demo.add_command(commands)
    token.add_commands(commands)
    fake_iam.add_command(commands)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aioiam`` console script. Returns the exit status.

    Each subcommand's own status (see its ``--help``); 130 on Ctrl-C, except for ``fake-iam``,
    for which Ctrl-C is the way to stop (0). Bad arguments (no command, an unknown one, a number
    out of range) do not return: argparse prints the usage and the error on stderr and raises
    ``SystemExit(2)``; so do ``--help`` and ``--version``, with status 0.
    """
    top = parser()
    args = top.parse_args(argv)
    if args.command is None:
        top.error("no command given (try 'aioiam demo', 'aioiam token', or 'aioiam --help')")
    try:
        status: int = args.run(args)
    except KeyboardInterrupt:
        return 0 if args.command == "fake-iam" else 130
    return status
