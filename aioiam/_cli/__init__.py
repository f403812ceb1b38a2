"""The ``aioiam`` command line: one module per subcommand.

- ``demo``: the library at work on the built-in emulator;
- ``token`` and ``inspect``: a fresh token for the shell, and what a token says;
- ``fake-iam``: the emulator on loopback for local development.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any, NoReturn, cast

from .._redaction import MIN_REDACTABLE_LENGTH
from .._version import __version__
from . import demo, fake_iam, token
from .demo import WAIT_THRESHOLD, DemoReport, run_demo, summary

__all__ = ["WAIT_THRESHOLD", "DemoReport", "main", "run_demo", "summary"]


class _Parser(argparse.ArgumentParser):
    """argparse, except that its error messages never repeat a long argument.

    ``aioiam token <KEY>`` (a key typed where it does not belong) would otherwise print the key in
    "unrecognized arguments". Any word of the command line of 8 characters or more that is not one
    of the parser's own option names or choices is shown as ``[not shown]`` in an error message:
    such a word may be a secret.
    """

    def __init__(self, *args: Any, argv: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._argv = tuple(argv)

    def error(self, message: str) -> NoReturn:
        known = {option for action in self._actions for option in action.option_strings}
        known |= {str(choice) for action in self._actions for choice in (action.choices or ())}
        for word in sorted(set(self._argv), key=len, reverse=True):
            if len(word) >= MIN_REDACTABLE_LENGTH and word not in known:
                message = message.replace(word, "[not shown]")
        super().error(message)


def parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The whole command line; ``argv`` is what its error messages must not repeat (see ``_Parser``)."""
    top = _Parser(prog="aioiam", description="Asynchronous IBM Cloud IAM tokens.", argv=argv)
    top.add_argument("--version", action="version", version=f"aioiam {__version__}")
    commands = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        top.add_subparsers(
            dest="command",
            metavar="COMMAND",
            parser_class=partial(_Parser, argv=argv),  # type: ignore[call-overload]  # a factory, as argparse allows
        ),
    )
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
    words = list(sys.argv[1:] if argv is None else argv)
    top = parser(words)
    args = top.parse_args(words)
    if args.command is None:
        top.error("no command given (try 'aioiam demo', 'aioiam token', or 'aioiam --help')")
    try:
        status: int = args.run(args)
    except KeyboardInterrupt:
        return 0 if args.command == "fake-iam" else 130
    return status
