"""``aioiam demo``: the library at work on the built-in emulator.

The demo needs no key and no network: thousands of workers call a fake service through
``httpx.AsyncClient`` with :class:`~aioiam.IAMAuth`, while :class:`~aioiam.testing.FakeIAM` issues
short-lived tokens and goes down across a refresh (an hour-long token compressed into seconds: the
retry backoff is compressed with it). It narrates what happens, with the time each
thing happened, and ends with a summary of what it measured. It is not a benchmark (see
``python -m benchmarks`` for figures).

What it checks (the summary says ``OK`` only when all of these held):

- **At most one IAM request in flight at any time**, counted by a wrapper around the emulator's
  transport.
- **No call after the first token waited longer than** :data:`WAIT_THRESHOLD` (50 ms): every
  ``get_token()`` call that began once some worker held a token is timed, and the slow ones are
  counted. A slow call is put down to IAM when an IAM request ended while it was waiting (the
  only way a waiting caller is released), and to the machine otherwise: a call with a usable token
  in hand returns without ever yielding to the event loop, so if it still took longer, the
  process itself was stalled (a loaded machine, a garbage collection), not waiting for IAM.
  Calls still waiting when the run stops are judged by how long they had waited by then.
- **No caller saw an error**, and the service refused no token.

It also measures, and states as such, how long the first token took to reach every worker: from
the moment the emulator produced its first token answer (recorded by the same transport wrapper,
since the emulator runs in process) to the moment the last worker's first ``get_token()``
returned. Workers that have their token keep calling the service meanwhile, so this is release
under load.

The exit status (:attr:`DemoReport.exit_status`) is 1 when a guarantee of aioiam was broken and
0 otherwise, including when the only shortfall is calls slowed by the machine with a token in
hand: the summary then says ``NOT OK`` and why, but a loaded CI runner does not fail the build
for a stall that is not aioiam's doing. Calls that waited for IAM longer than the threshold do
fail it, however loaded the machine.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import httpx

from .. import FetchAttempt, IAMAuth, IAMError, RefreshPolicy, RetryPolicy, TokenManager, __version__
from ..testing import FakeIAM
from .arguments import number, trio_missing

__all__ = ["WAIT_THRESHOLD", "DemoReport", "add_command", "run_demo", "summary"]

#: A call after the first token that takes longer than this counts as slow (seconds).
WAIT_THRESHOLD = 0.050

#: How long a worker pauses between calls, drawn uniformly from this range (seconds). Two
#: thousand workers then make about 1,300 calls a second: enough to keep the event loop busy,
#: not so many that a modest machine falls behind and the narration's times drift from the plan.
PAUSE = (1.0, 2.0)

#: The outage, in token lifetimes from the start. The second token is fetched at about half a
#: lifetime (tokens are refreshed from half their life, 0-5% earlier at random), so its own
#: refresh falls due between 0.9 and 1 lifetime, inside the outage, and it goes stale (within
#: its expiry margin, the last 10% of its life) no earlier than 1.35 lifetimes: 0.2 lifetimes
#: after IAM is back, for the refresher's retries to get through.
OUTAGE = (0.8, 1.15)


@dataclass
class DemoReport:
    """What the demo saw. Times are seconds from the start of the run (``None``: never happened)."""

    workers: int = 0
    seconds: float = 0.0
    calls: int = 0
    caller_errors: int = 0
    service_rejections: int = 0
    iam_requests: int = 0
    tokens_issued: int = 0
    failed_attempts: int = 0
    cut_off: int = 0
    max_in_flight: int = 0
    first_answer_at: float | None = None
    all_served_at: float | None = None
    workers_waiting: int = 0
    workers_served: int = 0
    calls_after_first: int = 0
    calls_unfinished: int = 0
    longest_wait_after_first: float = 0.0
    slow_calls: int = 0
    slow_calls_with_token: int = 0
    outage_planned: tuple[float, float] | None = None
    outage_started: float | None = None
    outage_ended: float | None = None
    longest_lag: float = 0.0
    threshold: float = WAIT_THRESHOLD

    @property
    def first_token_spread(self) -> float | None:
        """From IAM's first token answer until the last worker had its first token."""
        if self.first_answer_at is None or self.all_served_at is None:
            return None
        return self.all_served_at - self.first_answer_at

    @property
    def slow_calls_for_iam(self) -> int:
        """Slow calls after the first token that were waiting for IAM."""
        return self.slow_calls - self.slow_calls_with_token

    def problems(self) -> list[str]:
        """What went wrong, one phrase each; empty when every guarantee held."""
        found: list[str] = []
        if self.max_in_flight > 1:
            found.append(f"{_plural(self.max_in_flight, 'IAM request')} in flight at once")
        if self.workers and self.all_served_at is None:
            found.append("not every worker got a token")
        if self.slow_calls_for_iam:
            found.append(
                f"{_plural(self.slow_calls_for_iam, 'call')} after the first token waited for IAM longer than "
                f"{_ms(self.threshold)}"
            )
        if self.slow_calls_with_token:
            found.append(
                f"{_plural(self.slow_calls_with_token, 'call')} took longer than {_ms(self.threshold)} with a "
                "usable token in hand (the process was stalled: the machine, not IAM)"
            )
        if self.caller_errors:
            found.append(f"{_plural(self.caller_errors, 'caller error')}")
        if self.service_rejections:
            found.append(f"{_plural(self.service_rejections, 'token')} refused by the service")
        return found

    @property
    def ok(self) -> bool:
        """Every guarantee held: the summary says ``OK``."""
        return not self.problems()

    @property
    def exit_status(self) -> int:
        """0 when every guarantee of aioiam held, 1 when one was broken.

        Slow calls with a usable token in hand make the summary ``NOT OK`` (they are slow, and
        the demo says so) but leave the status 0: such a call never yields to the event loop, so
        its time is the machine's (a loaded CI runner descheduling the process, a garbage
        collection), not a wait for IAM. Everything else (two requests in flight, a call that
        waited for IAM longer than the threshold, a caller error, a refused token, a worker left
        without a token) is aioiam's doing and makes the status 1.
        """
        if self.problems() and not (self.slow_calls_with_token and len(self.problems()) == 1):
            return 1
        return 0


def _plural(count: int, noun: str) -> str:
    """``1 request``, ``2 requests``, ``1,000 requests`` (nouns here take an ``s``)."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def _ms(seconds: float) -> str:
    """A duration for people: ``0.1 ms``, ``450 ms``, ``5.18 s``."""
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"


def _at(seconds: float) -> str:
    return f"{seconds:.2f} s"


def summary(report: DemoReport) -> list[str]:
    """The summary lines the demo prints at the end: a label, a number, then what it means.

    Pure: a function of ``report`` only, so its wording and alignment are tested without a run.
    """
    rows: list[tuple[str, str, str]] = []
    rows.append(("calls served", f"{report.calls:,}", "a token fetched, then a call to the service with it"))
    answers = [_plural(report.tokens_issued, "token")]
    if report.failed_attempts:
        answers.append(f"{_plural(report.failed_attempts, 'failed attempt')} during the outage")
    elif report.outage_started is not None:
        answers.append("none while IAM was down: no refresh fell in the outage")
    if report.cut_off:
        answers.append(f"{report.cut_off:,} still in flight at the end")
    rows.append(("IAM requests", f"{report.iam_requests:,}", ", ".join(answers)))
    rows.append(("most IAM requests in flight", f"{report.max_in_flight:,}", "at any one time"))
    if report.outage_started is not None:
        until = report.outage_ended if report.outage_ended is not None else report.seconds
        to = _at(report.outage_ended) if report.outage_ended is not None else "the end"
        rows.append(("IAM down", _at(until - report.outage_started), f"from {_at(report.outage_started)} to {to}"))
    spread = report.first_token_spread
    everyone = "the one worker" if report.workers == 1 else f"all {report.workers:,} workers"
    if spread is None:
        rows.append(
            ("first token", "none", f"{report.workers_served:,} of {report.workers:,} workers had one by the end")
        )
    else:
        waiting = (
            ""
            if report.workers_waiting == report.workers
            else f" ({report.workers_waiting:,} of them were waiting for it)"
        )
        rows.append(("first token", _ms(spread), f"from IAM's answer until {everyone} had it{waiting}"))
        if report.workers > 1:
            # Released at once, the workers run one after another: each served worker starts its
            # service call before the next one runs, and that is most of this figure.
            rows.append(("", "", "(each worker served starts its call before the next one runs)"))
    rows.append(
        (
            "calls after the first token",
            f"{report.calls_after_first:,}",
            f"longest wait for a token {_ms(report.longest_wait_after_first)}",
        )
    )
    slow = "none" if not report.slow_calls else ""
    if report.slow_calls:
        slow = f"{report.slow_calls_for_iam:,} waiting for IAM, {report.slow_calls_with_token:,} with a token in hand"
    rows.append((f"  slower than {_ms(report.threshold)}", f"{report.slow_calls:,}", slow))
    if report.calls_unfinished:
        rows.append(("  still waiting at the end", f"{report.calls_unfinished:,}", "for a token, when the run stopped"))
    rows.append(("caller errors", f"{report.caller_errors:,}", ""))
    rows.append(("tokens the service refused", f"{report.service_rejections:,}", ""))
    rows.append(("event loop lag", _ms(report.longest_lag), "the longest, over the whole run"))

    label_width = max(len(label) for label, _, _ in rows)
    number_width = max(len(number) for _, number, _ in rows)
    lines = [
        f"{label:<{label_width}}  {number:>{number_width}}{'   ' + note if note else ''}"
        for label, number, note in rows
    ]
    problems = report.problems()
    if not problems:
        held = [
            "at most one IAM request in flight",
            f"every worker had its first token {_ms(spread or 0.0)} after IAM's answer",
            f"no call after that waited longer than {_ms(report.threshold)}",
            "no caller errors",
        ]
        if report.failed_attempts:
            held.append("the outage ridden out")
        lines.append("OK: " + "; ".join(held) + ".")
    else:
        lines.append("NOT OK: " + "; ".join(problems) + ".")
        if report.exit_status == 0:
            lines.append("Exit status 0 all the same: no guarantee of aioiam was broken (see `aioiam demo --help`).")
    return lines


class _Recorder(httpx.AsyncBaseTransport):
    """Wraps the emulator's transport to see every IAM request: how many at once, and when answered."""

    def __init__(self, inner: httpx.AsyncBaseTransport, clock: Callable[[], float]) -> None:
        self._inner = inner
        self._clock = clock
        self.in_flight = 0
        self.max_in_flight = 0
        self.ended = 0  # requests that ended, answered or not
        self.tokens = 0  # answered 200
        self.errors = 0  # answered with an error status
        self.first_token_at: float | None = None  # when the emulator's first token answer came back

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            response = await self._inner.handle_async_request(request)
        finally:
            self.in_flight -= 1
            self.ended += 1
        if response.status_code == 200:
            self.tokens += 1
            if self.first_token_at is None:
                self.first_token_at = self._clock()
        else:
            self.errors += 1
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


async def run_demo(
    *,
    workers: int = 2000,
    seconds: float = 12.0,
    lifetime: float = 6.0,
    latency: float = 0.05,
    outage: tuple[float, float] | None = None,
    threshold: float = WAIT_THRESHOLD,
    clock: Callable[[], float] = anyio.current_time,
    out: Callable[[str], None] = print,
    seed: int | None = None,
) -> DemoReport:
    """Run the demo in the current event loop and return what happened.

    Args:
        workers: Concurrent workers, each calling ``get_token()`` and then the service, pausing
            1-2 s between calls, until the end.
        seconds: How long the workers run.
        lifetime: The lifetime of the emulator's tokens; the manager refreshes from half of it.
        latency: How long the emulator takes to answer.
        outage: When IAM is down, in seconds from the start; by default from 0.8 to 1.15
            lifetimes, across the second refresh while the token in hand is still valid.
        threshold: A call after the first token slower than this is counted as slow.
        clock: The event loop's clock (the manager, the emulator and the narration share it).
        out: Where lines go.
        seed: Seeds the pauses and the refresh jitter.

    Returns:
        A :class:`DemoReport`. It does not raise for what went wrong in the run: that is in the
        report (and the summary printed from it).
    """
    rng = random.Random(seed)

    def wall_clock() -> float:  # one made-up wall clock for the emulator, the service and the manager
        return 1_800_000_000 + clock()

    fake = FakeIAM(api_keys=["demo-api-key"], lifetime=lifetime, latency=latency, wall_clock=wall_clock)
    recorder = _Recorder(fake.transport, clock)
    down_at, up_at = outage if outage is not None else (OUTAGE[0] * lifetime, OUTAGE[1] * lifetime)
    report = DemoReport(workers=workers, seconds=seconds, threshold=threshold)
    start = end = math.inf  # set when the workers start, once the manager and the client are ready

    def elapsed() -> float:
        return clock() - start

    def say(text: str, at: float | None = None) -> None:
        out(f"  t={elapsed() if at is None else at:6.2f}s  {text}")

    first_calls_pending = 0  # workers whose first get_token() has begun and not returned
    token_held = False  # some worker has returned from get_token() with a token

    def on_attempt(attempt: FetchAttempt) -> None:
        if not attempt.ok:
            return  # the library's own warning narrates a failure
        answered = _ms(attempt.duration)
        if report.first_answer_at is None:
            report.first_answer_at = (recorder.first_token_at or clock()) - start
            say(
                f"first token: IAM answered in {answered}, for {_plural(first_calls_pending, 'worker')} waiting",
                report.first_answer_at,
            )
        elif attempt.background:
            say(f"token refreshed in the background: IAM answered in {answered}, callers kept the old one meanwhile")
        else:
            say(f"new token after IAM answered in {answered}; callers with no usable token waited for it")

    async def service(request: httpx.Request) -> httpx.Response:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if fake.is_valid(token):
            return httpx.Response(200)
        report.service_rejections += 1
        return httpx.Response(401)

    manager = TokenManager(
        "demo-api-key",
        url="http://127.0.0.1",
        transport=recorder,
        refresh=RefreshPolicy(refresh_fraction=0.5),
        # An hour-long token compressed into seconds: the backoff shrinks with it (the default,
        # 0.5 s, from 12 s tokens up), or a short token could go stale between two retries.
        retry=RetryPolicy(initial_delay=min(0.5, lifetime / 24)),
        hooks=[on_attempt],
        clock=clock,
        wall_clock=wall_clock,
        rng=rng,
    )
    if down_at >= seconds:
        plan = f"IAM would go down at {_at(down_at)}, after the end"
    elif up_at >= seconds:
        plan = f"IAM down from {_at(down_at)} to the end"
    else:
        plan = f"IAM down from {_at(down_at)} to {_at(up_at)}"
    out(
        f"aioiam {__version__} demo: {_plural(workers, 'worker')} call a service for {seconds:g} s "
        "through httpx.AsyncClient with aioiam.IAMAuth"
    )
    out(
        f"FakeIAM answers in {_ms(latency)}; tokens live {lifetime:g} s, refreshed in the background from half "
        f"their life; {plan}"
    )
    report.outage_planned = (down_at, up_at)

    async def sleep_until(moment: float) -> None:
        """Sleep until ``moment`` (from the start), and note how late the event loop woke us."""
        await anyio.sleep(max(0.0, moment - elapsed()))
        report.longest_lag = max(report.longest_lag, elapsed() - moment)

    def lateness(planned: float) -> str:
        """Say so when a planned event happened visibly later than the header said."""
        actual = elapsed()
        if f"{actual:.2f}" == f"{planned:.2f}":
            return ""
        return f" ({_ms(actual - planned)} after the planned {_at(planned)}: the event loop was busy)"

    narrator = _Narrator(say)
    library_logger = logging.getLogger("aioiam")
    library_logger.addHandler(narrator)
    saved_propagate, library_logger.propagate = library_logger.propagate, False
    try:
        async with manager, httpx.AsyncClient(auth=IAMAuth(manager), transport=httpx.MockTransport(service)) as client:
            # Calls waiting in get_token(), by worker: when each began, whether after the first
            # token, and how many IAM requests had ended by then. Those left when the run stops
            # are judged by how long they had waited.
            waiting: dict[int, tuple[float, bool, int]] = {}

            def judge(wait: float, after_first: bool, ended: int) -> None:
                if after_first:
                    report.longest_wait_after_first = max(report.longest_wait_after_first, wait)
                    if wait > threshold:
                        report.slow_calls += 1
                        if recorder.ended == ended:  # no IAM request ended: it never waited for one
                            report.slow_calls_with_token += 1

            async def worker(me: int) -> None:
                nonlocal first_calls_pending, token_held
                first = True
                first_calls_pending += 1
                if recorder.first_token_at is None:
                    report.workers_waiting += 1
                while clock() < end:
                    after_first = token_held
                    ended = recorder.ended
                    t0 = clock()
                    waiting[me] = (t0, after_first, ended)
                    try:
                        await manager.get_token()
                    except IAMError:
                        del waiting[me]
                        report.caller_errors += 1
                    else:
                        del waiting[me]
                        wait = clock() - t0
                        token_held = True
                        if first:
                            first = False
                            first_calls_pending -= 1
                            report.workers_served += 1
                            if report.workers_served == workers:
                                report.all_served_at = elapsed()
                                if report.first_answer_at is not None:
                                    spread = _ms(report.all_served_at - report.first_answer_at)
                                    everyone = "the one worker has" if workers == 1 else f"all {workers:,} workers have"
                                    say(f"{everyone} a token, {spread} after IAM's answer")
                        if after_first:
                            report.calls_after_first += 1
                        judge(wait, after_first, ended)
                        response = await client.get("https://resource-controller.cloud.ibm.com/v2/resource_instances")
                        report.calls += 1
                        if response.status_code != 200:
                            report.caller_errors += 1
                    await anyio.sleep(rng.uniform(*PAUSE))

            async def conductor() -> None:
                if down_at >= seconds:
                    return
                await sleep_until(down_at)
                fake.down = True
                report.outage_started = elapsed()
                say("IAM goes down" + lateness(down_at))
                if up_at >= seconds:
                    return
                await sleep_until(up_at)
                fake.down = False
                report.outage_ended = elapsed()
                say("IAM is back" + lateness(up_at))

            async def progress() -> None:
                tick = 1.0
                while tick < seconds:
                    await sleep_until(tick)
                    say(
                        f"calls {report.calls:>7,}  IAM requests {fake.requests:>2}  tokens {len(fake.issued):>2}  "
                        f"slow calls {report.slow_calls}  caller errors {report.caller_errors}"
                    )
                    tick += 1.0

            async def lag_meter() -> None:
                while True:
                    await sleep_until(elapsed() + 0.02)

            start = clock()
            end = start + seconds
            async with anyio.create_task_group() as tg:
                tg.start_soon(conductor)
                tg.start_soon(progress)
                tg.start_soon(lag_meter)
                for me in range(workers):
                    tg.start_soon(worker, me)
                await anyio.sleep(max(0.0, end - clock()))
                stop = clock()
                for t0, after_first, ended in waiting.values():
                    report.calls_unfinished += 1
                    if after_first:
                        report.calls_after_first += 1
                    judge(stop - t0, after_first, ended)
                tg.cancel_scope.cancel()
            say("time is up: the workers stop and the manager closes")
    finally:
        library_logger.removeHandler(narrator)
        library_logger.propagate = saved_propagate

    report.iam_requests = recorder.ended
    report.tokens_issued = recorder.tokens
    report.failed_attempts = recorder.errors
    report.cut_off = recorder.ended - recorder.tokens - recorder.errors  # cancelled when the manager closed
    report.max_in_flight = recorder.max_in_flight
    out("")
    for line in summary(report):
        out(line)
    return report


class _Narrator(logging.Handler):
    """Prints the library's own log records in the demo's timeline.

    Those that reach it: INFO and up, and only warnings unless the ``aioiam`` logger's level is set
    lower (Python's default is WARNING).
    """

    def __init__(self, say: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self._say = say

    def emit(self, record: logging.LogRecord) -> None:
        self._say(record.getMessage())


_DEMO_EPILOG = f"""\
The summary says OK only when: at most one IAM request was ever in flight; every worker
got a token; no call after the first token took longer than {_ms(WAIT_THRESHOLD)}; no caller saw an
error; and the service refused no token.

Exit status: 0 when OK, 1 when a guarantee of aioiam was broken. One exception: a call
slower than {_ms(WAIT_THRESHOLD)} with a usable token in hand never waited for IAM (such a call
does not even yield to the event loop): the machine stalled the process. The summary
then says NOT OK, but the exit status stays 0: a loaded CI machine does not fail the
build for what is not aioiam's doing.
"""


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``demo`` to the command line's subcommands."""
    demo = commands.add_parser(
        "demo",
        help="run thousands of workers against the built-in IAM emulator (no key, no network)",
        description="Run thousands of workers through background refreshes and a simulated IAM outage.",
        epilog=_DEMO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    positive = number(float, minimum=0, inclusive=False)
    demo.add_argument(
        "--workers", type=number(int, minimum=1, inclusive=True), default=2000, help="concurrent workers (default 2000)"
    )
    demo.add_argument("--seconds", type=positive, default=12.0, help="how long to run (default 12)")
    demo.add_argument("--lifetime", type=positive, default=6.0, help="token lifetime in seconds (default 6)")
    demo.add_argument(
        "--latency",
        type=number(float, minimum=0, inclusive=True),
        default=0.05,
        help="IAM answer time in seconds (default 0.05)",
    )
    demo.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio", help="event loop (default asyncio)")
    demo.set_defaults(run=run_command)


def run_command(args: argparse.Namespace) -> int:
    """Run the demo as the command line asked; :attr:`DemoReport.exit_status`, or 1 without trio."""
    if args.backend == "trio" and trio_missing():
        print("aioiam demo: error: trio is not installed; pip install trio, or use --backend asyncio", file=sys.stderr)
        return 1

    async def go() -> DemoReport:
        return await run_demo(workers=args.workers, seconds=args.seconds, lifetime=args.lifetime, latency=args.latency)

    report = anyio.run(go, backend=args.backend)
    sys.stdout.flush()
    return report.exit_status
