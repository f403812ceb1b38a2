"""``aioiam fake-iam``: the emulator served on loopback for local development, until interrupted."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import AsyncIterator

import anyio

from ..testing import FakeIAM
from .arguments import number

__all__ = ["add_command"]


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``fake-iam`` to the command line's subcommands."""
    serve = commands.add_parser(
        "fake-iam",
        help="serve the IAM emulator on loopback for local development",
        description=(
            "Serve aioiam.testing.FakeIAM on 127.0.0.1 until interrupted (Ctrl-C): the API-key, "
            "compute-resource and assume grants, and a VPC metadata service."
        ),
    )
    serve.add_argument(
        "--port", type=number(int, minimum=0, inclusive=True), default=0, help="port (default: a free one)"
    )
    serve.add_argument(
        "--lifetime",
        type=number(float, minimum=0, inclusive=False),
        default=3600.0,
        help="token lifetime (default 3600 s)",
    )
    serve.add_argument(
        "--latency", type=number(float, minimum=0, inclusive=True), default=0.0, help="answer time (default 0 s)"
    )
    serve.set_defaults(run=run_command)


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeIAM(lifetime=args.lifetime, latency=args.latency)
    with contextlib.ExitStack() as stack:
        # Ctrl-C (SIGINT) or a service manager's SIGTERM ends the serving normally. Listened for
        # before the banner, so a signal sent once the banner is out always ends it this way and
        # never races the event loop's own handling of Ctrl-C (cancelling the main task), which
        # once left the server running.
        signals: AsyncIterator[signal.Signals] | None
        try:
            signals = stack.enter_context(anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM))
        except NotImplementedError:  # Windows: Ctrl-C raises KeyboardInterrupt instead
            signals = None
        async with fake.serve(port=int(args.port)) as address:
            print(f"FakeIAM serving on {address.url} (tokens live {args.lifetime:g} s, answers in {args.latency:g} s)")
            print(f"API key it accepts:        {fake.api_key}")
            print(f"compute-resource token:    {fake.cr_token} (trusted profile Profile-test, named test-profile)")
            print(f"try:  IBMCLOUD_API_KEY={fake.api_key} aioiam token --url {address.url}")
            print("Ctrl-C stops it.", flush=True)
            if signals is None:
                await anyio.sleep_forever()
            else:
                async for _ in signals:
                    return


def run_command(args: argparse.Namespace) -> int:
    """Serve until interrupted; 0 then, 1 when the port cannot be had."""
    try:
        anyio.run(_serve, args)
    except OSError as exc:
        print(f"aioiam fake-iam: error: cannot serve on port {args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
