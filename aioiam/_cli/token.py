"""``aioiam token`` and ``aioiam inspect``: a fresh token for the shell, and what a token says.

``token`` prints the access token and nothing else on stdout, so ``$(aioiam token)`` works. The
credentials are found as ``TokenManager.from_env`` finds them, or read from a file (or standard
input) named by ``--api-key-file``. An API key is never taken on the command line: every user of
the machine can read a process's arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import datetime, timezone
from typing import Any

import anyio

from .. import (
    IAMError,
    IAMUnavailableError,
    ManagerClosedError,
    RetryPolicy,
    Token,
    TokenManager,
    TransientIAMError,
)
from .._token import decode_jwt_claims
from .arguments import EXIT_CREDENTIALS, EXIT_UNAVAILABLE, EXIT_USAGE, fail, number, read_secret

__all__ = ["add_commands", "describe_expiry", "token_details"]

_NO_KEY_ARGUMENT = (
    "an API key is never taken on the command line (every user of the machine can read a process's "
    "arguments); use --api-key-file PATH, --api-key-file - (standard input), or IBMCLOUD_API_KEY"
)


def describe_expiry(exp: float, now: float) -> str:
    """``expires in 41 minutes`` or ``expired 3 minutes ago``, in the largest whole unit that fits."""
    left = exp - now
    span = abs(left)
    for unit, seconds in (("day", 86_400), ("hour", 3_600), ("minute", 60), ("second", 1)):
        if span >= seconds or unit == "second":
            count = int(span // seconds)
            words = f"{count} {unit}{'' if count == 1 else 's'}"
            break
    return f"expires in {words}" if left > 0 else f"expired {words} ago"


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def token_details(token: Token, now: float) -> dict[str, Any]:
    """What ``aioiam token --json`` prints: the token, its expiry (Unix time and ISO) and claims."""
    expires_at = token.expiration if token.expiration is not None else now + (token.expires_at - token.obtained_at)
    return {
        "access_token": token.access_token,
        "token_type": token.token_type,
        "expires_in": token.expires_in,
        "expiration": expires_at,
        "expires": _iso(expires_at),
        "scope": token.scope,
        "claims": dict(token.claims),
    }


def _add_credentials(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--service", metavar="NAME", help="read NAME's credentials the IBM way (from_env)")
    parser.add_argument("--url", help="IAM's base URL (default: as configured, else https://iam.cloud.ibm.com)")
    parser.add_argument(
        "--api-key-file", metavar="PATH", help="read the API key from PATH's first line ('-': standard input)"
    )
    parser.add_argument(
        "--timeout",
        type=number(float, minimum=0, inclusive=False),
        default=15.0,
        help="give up after this many seconds",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show the library's warnings on stderr")
    parser.add_argument("--api-key", nargs="?", const="", default=None, help=argparse.SUPPRESS)


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``token`` and ``inspect`` to the command line's subcommands."""
    token = commands.add_parser(
        "token",
        help="print a fresh access token (for $(aioiam token))",
        description="Print a fresh IAM access token on stdout, and nothing else.",
        epilog=(
            "Credentials: --api-key-file, else --service NAME's (ibm-credentials.env, NAME_* variables, "
            "VCAP_SERVICES), else IBMCLOUD_API_KEY. Exit status: 0 a token; 2 bad usage; "
            f"{EXIT_CREDENTIALS} credentials refused, or configuration missing or wrong; {EXIT_UNAVAILABLE} IAM "
            "unavailable."
        ),
        allow_abbrev=False,
    )
    _add_credentials(token)
    token.add_argument("--json", action="store_true", help="print the token's details (expiry, claims) as JSON")
    token.set_defaults(run=run_token)

    inspect = commands.add_parser(
        "inspect",
        help="show a token's claims and when it expires",
        description="Decode a token's claims (no signature check) and say when it expires.",
        epilog="TOKEN '-' reads it from standard input; without TOKEN, one is fetched as 'aioiam token' does.",
        allow_abbrev=False,
    )
    inspect.add_argument("access_token", nargs="?", metavar="TOKEN", help="the token, or '-' for standard input")
    _add_credentials(inspect)
    inspect.set_defaults(run=run_inspect)


def _manager(args: argparse.Namespace) -> TokenManager:
    overrides: dict[str, Any] = {"retry": RetryPolicy(timeout=args.timeout)}
    if args.url:
        overrides["url"] = args.url
    if args.api_key_file is not None:
        return TokenManager(read_secret(args.api_key_file, "the API key"), **overrides)
    return TokenManager.from_env(args.service, **overrides)


async def _fetch(args: argparse.Namespace) -> Token:
    async with _manager(args) as tm:
        return await tm.get_token_info()


def _exit_status(error: BaseException) -> int:
    if isinstance(error, (IAMUnavailableError, TransientIAMError)):
        return EXIT_UNAVAILABLE
    return EXIT_CREDENTIALS


def _fetch_or_fail(command: str, args: argparse.Namespace) -> Token | int:
    if args.api_key is not None:
        return fail(command, _NO_KEY_ARGUMENT, EXIT_USAGE)
    library = logging.getLogger("aioiam")
    if args.verbose:
        if not library.handlers:
            library.addHandler(logging.StreamHandler(sys.stderr))
    elif not library.handlers:
        # Each failure is one line of the command's own; the retries' warnings are for --verbose.
        library.addHandler(logging.NullHandler())
    try:
        return anyio.run(_fetch, args)
    except (IAMError, ValueError) as exc:  # ConfigurationError is both; a bad --url or key is a ValueError
        if isinstance(exc, ManagerClosedError):
            raise
        return fail(command, str(exc), _exit_status(exc) if isinstance(exc, IAMError) else EXIT_CREDENTIALS)


def run_token(args: argparse.Namespace) -> int:
    """Print the token (or its details as JSON); the exit status."""
    token = _fetch_or_fail("token", args)
    if isinstance(token, int):
        return token
    if args.json:
        print(json.dumps(token_details(token, time.time()), indent=2, sort_keys=True))
    else:
        print(token.access_token)
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    """Print a token's expiry in words and its claims as JSON; the exit status."""
    if args.access_token is None:
        fetched = _fetch_or_fail("inspect", args)
        if isinstance(fetched, int):
            return fetched
        text = fetched.access_token
    elif args.access_token == "-":
        text = sys.stdin.read().strip()
    else:
        text = args.access_token.strip()
    claims = decode_jwt_claims(text)
    if not claims:
        return fail("inspect", "that is not a JWT with a JSON payload (an IAM access token is one)", EXIT_USAGE)
    exp = claims.get("exp")
    if isinstance(exp, (int, float)) and not isinstance(exp, bool):
        print(f"{describe_expiry(exp, time.time())} ({_iso(exp)})")
    else:
        print("no 'exp' claim: when it expires cannot be told")
    print(json.dumps(dict(claims), indent=2, sort_keys=True))
    return 0
