"""The ``aioiam`` command line. Today: ``aioiam demo``, the library at work on the built-in emulator.

The demo needs no key and no network: thousands of workers call a fake service through
``httpx.AsyncClient`` with :class:`~aioiam.IAMAuth`, while :class:`~aioiam.testing.FakeIAM` issues
short-lived tokens and goes down for a while. It prints progress every second and ends with what
happened. It is not a benchmark (see ``python -m benchmarks`` for figures).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio
import httpx

from ._auth import IAMAuth
from ._exceptions import IAMError
from ._hooks import FetchAttempt
from ._manager import TokenManager
from ._timing import RefreshPolicy
from ._version import __version__
from .testing import FakeIAM

__all__ = ["DemoReport", "main", "run_demo"]


@dataclass
class DemoReport:
    """What the demo saw."""

    calls: int = 0
    caller_errors: int = 0
    service_rejections: int = 0
    iam_requests: int = 0
    tokens_issued: int = 0
    failed_attempts: int = 0
    first_token_wait: float = 0.0
    longest_wait_after_first: float = 0.0

    @property
    def ok(self) -> bool:
        """No caller saw an error and the service never rejected a token."""
        return self.caller_errors == 0 and self.service_rejections == 0


async def run_demo(
    *,
    workers: int = 2000,
    seconds: float = 12.0,
    lifetime: float = 6.0,
    latency: float = 0.05,
    clock: Callable[[], float] = anyio.current_time,
    out: Callable[[str], None] = print,
    seed: int | None = None,
) -> DemoReport:
    """Run the demo in the current event loop and return what happened.

    The emulator issues tokens living ``lifetime`` seconds, refreshed at half their life; it is
    down from 0.85 to 1.25 lifetimes into the run, across a refresh, while the token in hand is
    still valid: the manager must ride that out without a single caller noticing.
    """
    rng = random.Random(seed)

    def wall_clock() -> float:  # one made-up wall clock for the emulator, the service and the manager
        return 1_800_000_000 + clock()

    fake = FakeIAM(api_keys=["demo-api-key"], lifetime=lifetime, latency=latency, wall_clock=wall_clock)
    report = DemoReport()

    first_token_at: float | None = None

    def on_attempt(attempt: FetchAttempt) -> None:
        nonlocal first_token_at
        if not attempt.ok:
            report.failed_attempts += 1
        elif first_token_at is None:
            first_token_at = clock()

    async def service(request: httpx.Request) -> httpx.Response:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if fake.is_valid(token):
            return httpx.Response(200)
        report.service_rejections += 1
        return httpx.Response(401)

    manager = TokenManager(
        "demo-api-key",
        url="http://127.0.0.1",
        transport=fake.transport,
        refresh=RefreshPolicy(refresh_fraction=0.5),
        hooks=[on_attempt],
        clock=clock,
        wall_clock=wall_clock,
        rng=rng,
    )
    start = clock()
    end = start + seconds
    outage = (start + 0.85 * lifetime, start + 1.25 * lifetime)
    out(
        f"aioiam {__version__} demo: {workers:,} workers for {seconds:g}s; FakeIAM answers in "
        f"{latency * 1000:.0f} ms, tokens live {lifetime:g}s, IAM down from {outage[0] - start:.1f}s to "
        f"{outage[1] - start:.1f}s"
    )

    narrator = _Narrator(out, lambda: clock() - start)
    library_logger = logging.getLogger("aioiam")
    library_logger.addHandler(narrator)
    saved_propagate, library_logger.propagate = library_logger.propagate, False
    try:
        async with manager, httpx.AsyncClient(auth=IAMAuth(manager), transport=httpx.MockTransport(service)) as client:

            async def worker() -> None:
                while clock() < end:
                    t0 = clock()
                    try:
                        await manager.get_token()
                        wait = clock() - t0
                        response = await client.get("https://resource-controller.cloud.ibm.com/v2/resource_instances")
                    except IAMError:
                        report.caller_errors += 1
                    else:
                        report.calls += 1
                        if first_token_at is None or t0 < first_token_at:
                            report.first_token_wait = max(report.first_token_wait, wait)
                        else:
                            report.longest_wait_after_first = max(report.longest_wait_after_first, wait)
                        if response.status_code != 200:
                            report.caller_errors += 1
                    await anyio.sleep(rng.uniform(0.2, 0.6))

            async def conductor() -> None:
                await anyio.sleep(max(0.0, outage[0] - clock()))
                fake.down = True
                out(f"  t={clock() - start:5.1f}s  IAM goes down")
                await anyio.sleep(max(0.0, outage[1] - clock()))
                fake.down = False
                out(f"  t={clock() - start:5.1f}s  IAM is back")

            async def progress() -> None:
                while clock() < end:
                    await anyio.sleep(min(1.0, max(0.0, end - clock())))
                    out(
                        f"  t={clock() - start:5.1f}s  calls {report.calls:>9,}  IAM requests {fake.requests:>3}  "
                        f"tokens {len(fake.issued):>2}  caller errors {report.caller_errors}  "
                        f"longest wait since first token {report.longest_wait_after_first * 1000:.1f} ms"
                    )

            async with anyio.create_task_group() as tg:
                tg.start_soon(conductor)
                tg.start_soon(progress)
                for _ in range(workers):
                    tg.start_soon(worker)
                await anyio.sleep(max(0.0, end - clock()))
                tg.cancel_scope.cancel()
    finally:
        library_logger.removeHandler(narrator)
        library_logger.propagate = saved_propagate

    report.iam_requests = fake.requests
    report.tokens_issued = len(fake.issued)
    out("")
    out(f"callers served            {report.calls:,}")
    unanswered = report.iam_requests - report.tokens_issued - report.failed_attempts
    out(
        f"IAM requests              {report.iam_requests} ({report.tokens_issued} tokens, "
        f"{report.failed_attempts} failed attempts during the outage"
        + (f", {unanswered} still in flight at the end" if unanswered > 0 else "")
        + ")"
    )
    out(f"first token               {report.first_token_wait * 1000:.1f} ms for all {workers:,} workers at once")
    out(f"longest wait after that   {report.longest_wait_after_first * 1000:.1f} ms")
    out(f"caller errors             {report.caller_errors}")
    out(f"tokens the service refused {report.service_rejections}")
    out(
        "OK: one request in flight, refreshes in the background, the outage ridden out."
        if report.ok
        else "FAILED: callers saw errors (see above)."
    )
    return report


class _Narrator(logging.Handler):
    """Prints the library's own log lines (INFO and up) in the demo's timeline."""

    def __init__(self, out: Callable[[str], None], elapsed: Callable[[], float]) -> None:
        super().__init__(logging.INFO)
        self._out = out
        self._elapsed = elapsed

    def emit(self, record: logging.LogRecord) -> None:
        self._out(f"  t={self._elapsed():5.1f}s  {record.getMessage()}")


def _number(kind: Callable[[str], float], *, minimum: float, inclusive: bool) -> Callable[[str], float]:
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


def _trio_missing() -> bool:
    """Whether ``import trio`` fails. It imports trio when it can; it does not check trio's version."""
    try:
        importlib.import_module("trio")
    except ImportError:
        return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aioiam`` console script. Returns the exit status.

    0 when the demo ran and no caller saw an error, 1 when callers saw errors or ``--backend trio``
    was asked for without trio installed (one line on stderr, nothing run), 130 on Ctrl-C. Bad
    arguments (no command, an unknown one, a number out of range) do not return: argparse prints
    the usage and the error on stderr and raises ``SystemExit(2)``; so do ``--help`` and
    ``--version``, with status 0.
    """
    parser = argparse.ArgumentParser(prog="aioiam", description="Asynchronous IBM Cloud IAM tokens.")
    parser.add_argument("--version", action="version", version=f"aioiam {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run thousands of workers against the built-in IAM emulator (no key, no network)",
        description="Run thousands of workers through background refreshes and a simulated IAM outage.",
    )
    positive_int = _number(int, minimum=1, inclusive=True)
    positive = _number(float, minimum=0, inclusive=False)
    not_negative = _number(float, minimum=0, inclusive=True)
    demo.add_argument("--workers", type=positive_int, default=2000, help="concurrent workers (default 2000)")
    demo.add_argument("--seconds", type=positive, default=12.0, help="how long to run (default 12)")
    demo.add_argument("--lifetime", type=positive, default=6.0, help="token lifetime in seconds (default 6)")
    demo.add_argument("--latency", type=not_negative, default=0.05, help="IAM answer time in seconds (default 0.05)")
    demo.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio", help="event loop (default asyncio)")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("no command given (try 'aioiam demo', or 'aioiam --help')")
    if args.backend == "trio" and _trio_missing():
        print("aioiam demo: error: trio is not installed; pip install trio, or use --backend asyncio", file=sys.stderr)
        return 1

    async def go() -> DemoReport:
        return await run_demo(workers=args.workers, seconds=args.seconds, lifetime=args.lifetime, latency=args.latency)

    try:
        report = anyio.run(go, backend=args.backend)
    except KeyboardInterrupt:
        return 130
    sys.stdout.flush()
    return 0 if report.ok else 1
