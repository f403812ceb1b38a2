"""What the subcommands share: argument types, reading a secret from a file or stdin, exit codes."""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from collections.abc import Callable

__all__ = ["EXIT_CREDENTIALS", "EXIT_UNAVAILABLE", "EXIT_USAGE", "fail", "number", "read_secret", "trio_missing"]

#: Bad usage (argparse's own status).
EXIT_USAGE = 2
#: Credentials refused, or configuration missing or unusable.
EXIT_CREDENTIALS = 3
#: IAM unreachable or failing.
EXIT_UNAVAILABLE = 4


def number(kind: Callable[[str], float], *, minimum: float, inclusive: bool) -> Callable[[str], float]:
    """An argparse ``type`` that parses a finite ``kind`` (``int`` or ``float``) above ``minimum``.

    ``minimum`` itself is accepted when ``inclusive``. Anything else raises
    ``argparse.ArgumentTypeError`` with a message naming the bound, which argparse reports as a
    usage error (exit status 2). It does not check an upper bound.
    """
    what = "a whole number" if kind is int else "a finite number"
    bound = f"at least {minimum:g}" if inclusive else f"greater than {minimum:g}"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} {bound}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {what} {bound}, got {text!r}")
        return value

    return parse


def trio_missing() -> bool:
    """Whether ``import trio`` fails. It imports trio when it can; it does not check trio's version."""
    try:
        importlib.import_module("trio")
    except ImportError:
        return True
    return False


def read_secret(path: str, what: str) -> str:
    """The first line of the file at ``path`` (``-``: standard input), stripped.

    Raises:
        ValueError: The file cannot be read or holds nothing; the message names the path, never
            the content.
    """
    try:
        if path == "-":
            text = sys.stdin.readline()
        else:
            with open(path, encoding="utf-8") as file:
                text = file.readline()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {what} from {_shown(path)}: {type(exc).__name__}") from None
    text = text.strip()
    if not text:
        raise ValueError(
            f"{_shown(path)} is empty (expected {what})"
            if path != "-"
            else f"nothing on standard input (expected {what})"
        )
    return text


def fail(command: str, message: str, status: int) -> int:
    """Print ``aioiam COMMAND: error: MESSAGE`` on one line of stderr; return ``status``."""
    print(f"aioiam {command}: error: {' '.join(message.split())}", file=sys.stderr)
    return status


def _shown(path: str) -> str:
    """``path`` as a message may show it: not when it may be the key itself, typed in its place.

    A path with a directory separator or a dot is shown; a bare word is not (IBM Cloud API keys
    are bare words of letters, digits, ``-`` and ``_``).
    """
    if any(mark in path for mark in ("/", ".", "\\")):
        return path
    return "the file given (its name is not shown: it may be a key)"
