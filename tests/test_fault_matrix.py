"""The fault matrix: every way IAM can fail, over a real socket on loopback, with concurrent callers.

Each test scripts one fault into :class:`~aioiam.testing.FakeIAM`, served over real TCP, and sends
several concurrent callers (in a first wave, and for errors a second wave) at one manager, in
both modes (inside ``async with``, and on demand). It asserts:

- the outcome: recovery, or the right typed error with a clear message;
- how many requests the manager sent and the emulator saw, in which order they failed, and that
  retries kept to the backoff schedule (never earlier than the delay the manager announced);
- that no expired token was handed out: every token returned is before its ``stale_at`` on the
  manager's clock and valid in the emulator's eyes;
- the secrets audit: with DEBUG logging captured, no API key, client secret, access or refresh
  token appears in any log record, exception (with its causes), or ``repr``/``str`` of the
  manager, its tokens, ``IAMAuth`` or the hook records.

These tests run on the real clock, so they assert nothing a loaded machine can miss: no upper
bound on a wait, limits of several seconds wherever a request is answered, short limits only
against a server that never answers, and a backoff check measured so that lateness can only make
it pass (see :func:`check_backoff`). Timing itself (waits, backoff delays, refresh windows) is
pinned on virtual time in ``test_manager_refresh.py``, including every fault during a refresh.

Set ``AIOIAM_MATRIX_REPORT=<file>`` to append one JSON line per run (fault, outcome, requests,
worst wait): ``docs/failures.md``'s table is made from it.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import os
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest

from aioiam import (
    FetchAttempt,
    IAMAuth,
    IAMError,
    IAMUnavailableError,
    InvalidCredentialsError,
    InvalidResponseError,
    RefreshPolicy,
    RetryPolicy,
    Token,
    TokenManager,
    TransientIAMError,
)
from aioiam.testing import OMIT, FakeIAM, Fault
from tests.helpers import FixedRandom

pytestmark = [pytest.mark.anyio, pytest.mark.real_time]

KEY = "SECRET-matrix-key-3e9b41d07c5a"
CLIENT_ID = "matrix-client"
CLIENT_SECRET = "SECRET-matrix-client-secret-8a1f60"
SECRETS = [KEY, CLIENT_SECRET, base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()]

CALLERS = 6
#: Every manager here draws 0.5 for its jitter, so backoff delays are known in advance.
#: Short retries (25 ms, then 50 ms, ...) but generous limits: a caller waits up to 10 s and one
#: request may take 5 s, while loopback answers in milliseconds even on a loaded machine.
FAST = RetryPolicy(initial_delay=0.05, max_delay=0.2, timeout=10, request_timeout=5)
#: For outages: 25 ms after the first failure, 25 s after the second, which is past every
#: caller's 10 s: callers give up after exactly two requests instead of waiting out the timeout.
OUTAGE = RetryPolicy(initial_delay=0.05, multiplier=1000, max_delay=60, timeout=10, request_timeout=5)
#: For a server that never answers: any request timeout is hit, so it can be short (one second,
#: which an answered retry never comes near).
HANG = RetryPolicy(initial_delay=0.05, max_delay=0.2, timeout=10, request_timeout=1)
#: Outages of a server that never answers: its requests are cut off after 0.2 s.
HANG_OUTAGE = dataclasses.replace(OUTAGE, request_timeout=0.2)
#: For errors that are not retried: a 30 s cooldown, which the second wave is always inside.
COOLDOWN = RetryPolicy(initial_delay=30, max_delay=60, timeout=10, request_timeout=5)
#: One TLS context for every transport: making one costs ~20 ms, and these managers talk plain
#: http to loopback anyway.
TLS = ssl.create_default_context()


class TimedTransport(httpx.AsyncBaseTransport):
    """The manager's transport to loopback, recording when each request went out and ended.

    ``times[i]`` is ``(sent, ended)`` on the test's clock: when the request reached the transport
    (after the manager decided to send it) and when its answer's headers or its error came back
    (before the manager looked at them). Like the manager's own client, it keeps no connection
    alive.
    """

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport(verify=TLS, limits=httpx.Limits(max_keepalive_connections=0))
        self.times: list[tuple[float, float]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        sent = anyio.current_time()
        try:
            return await self._inner.handle_async_request(request)
        finally:
            self.times.append((sent, anyio.current_time()))

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.fixture(params=["background", "on_demand"])
def mode(request: pytest.FixtureRequest) -> str:
    """``background``: inside ``async with`` (refresher running); ``on_demand``: without it."""
    return str(request.param)


@dataclass
class Call:
    """One caller's ``get_token_info()``."""

    waited: float
    token: Token | None = None
    error: IAMError | None = None
    before_stale: bool = True  # manager's clock < token.stale_at when it was returned
    valid_at_iam: bool = True  # the emulator's view, when it was returned


@dataclass
class Run:
    """What one matrix run observed."""

    fake: FakeIAM
    waves: list[list[Call]]
    sent_after_wave: list[int]  # tm.request_count after each wave
    seen_after_wave: list[int]  # fake.requests after each wave
    attempts: list[tuple[float, FetchAttempt]]  # (clock when the hook ran, attempt)
    texts: list[str] = field(default_factory=list)
    #: (sent, ended) of each request, from :class:`TimedTransport`.
    request_times: list[tuple[float, float]] = field(default_factory=list)

    @property
    def calls(self) -> list[Call]:
        return [call for wave in self.waves for call in wave]

    @property
    def worst_wait(self) -> float:
        return max(call.waited for call in self.calls)

    def errors(self) -> list[IAMError]:
        return [call.error for call in self.calls if call.error is not None]

    def tokens(self) -> list[Token]:
        return [call.token for call in self.calls if call.token is not None]


async def run_matrix(
    fake: FakeIAM,
    mode: str,
    caplog: pytest.LogCaptureFixture,
    *,
    retry: RetryPolicy = FAST,
    waves: Sequence[int] = (CALLERS,),
    hooks: Sequence[Callable[[FetchAttempt], None]] = (),
    refresh: RefreshPolicy | None = None,
) -> Run:
    """Serve ``fake`` on loopback and send ``waves`` of concurrent callers at one manager."""
    caplog.set_level(logging.DEBUG)
    attempts: list[tuple[float, FetchAttempt]] = []
    run = Run(fake, [], [], [], attempts)

    def record(attempt: FetchAttempt) -> None:
        attempts.append((anyio.current_time(), attempt))

    async def call(tm: TokenManager, calls: list[Call]) -> None:
        start = anyio.current_time()
        try:
            token = await tm.get_token_info()
        except IAMError as exc:
            calls.append(Call(anyio.current_time() - start, error=exc))
            return
        now = anyio.current_time()
        calls.append(
            Call(now - start, token, before_stale=now < token.stale_at, valid_at_iam=fake.is_valid(token.access_token))
        )

    transport = TimedTransport()
    run.request_times = transport.times
    async with fake.serve() as address:
        tm = TokenManager(
            KEY,
            url=address.url,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            retry=retry,
            refresh=refresh,
            clock=anyio.current_time,
            rng=FixedRandom(0.5),
            transport=transport,
            hooks=[record, *hooks],
        )
        async with contextlib.AsyncExitStack() as stack:
            if mode == "background":
                await stack.enter_async_context(tm)
            else:
                stack.push_async_callback(tm.aclose)
            for size in waves:
                calls: list[Call] = []
                async with anyio.create_task_group() as tg:
                    for _ in range(size):
                        tg.start_soon(call, tm, calls)
                run.waves.append(calls)
                run.sent_after_wave.append(tm.request_count)
                run.seen_after_wave.append(fake.requests)
            run.texts += [repr(tm), str(tm), repr(IAMAuth(tm)), str(IAMAuth(tm)), repr(tm.token)]
    run.texts += [repr(attempt) for _, attempt in attempts]
    for token in run.tokens():
        run.texts += [repr(token), str(token), str(dict(token.claims))]
    for error in run.errors():
        run.texts += _exception_texts(error)
    run.texts += [record.getMessage() for record in caplog.records]
    run.texts += [str(record.args) for record in caplog.records if record.args]
    return run


def _exception_texts(error: BaseException) -> list[str]:
    """str and repr of an exception, its attributes, and everything in its cause/context chain."""
    texts: list[str] = []
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        exc = pending.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        texts += [str(exc), repr(exc), repr(vars(exc))]
        pending += [exc.__cause__, exc.__context__, getattr(exc, "cause", None)]
    return texts


def audit(run: Run) -> None:
    """No secret of any kind appears in anything the run produced."""
    assert any("aioiam" in text for text in run.texts), "nothing was logged: the audit proves nothing"
    secrets = [*SECRETS, *run.fake.secrets()]
    for text in run.texts:
        for secret in secrets:
            assert secret not in text, f"a secret leaked into: {text[:300]}"


def check_tokens(run: Run) -> None:
    """No expired token handed out; one flight means every caller of a wave got the same token."""
    for call in run.calls:
        if call.token is not None:
            assert call.before_stale, "a token was handed out at or after its stale_at"
            assert call.valid_at_iam, "a token the emulator no longer accepts was handed out"
    for wave in run.waves:
        assert len({call.token.access_token for call in wave if call.token is not None}) <= 1
    assert run.fake.max_in_flight <= 1, "more than one request to IAM at once"


def check_backoff(run: Run) -> None:
    """Every retry went out at least the announced delay after the failure before it ended.

    Measured at the transport: a failure's end is taken before the manager reads its clock to
    start the backoff, and a retry's start after the manager decided to send it. However late the
    event loop runs, both errors make the gap look longer, never shorter, so only a retry sent
    too early can fail this.
    """
    times = run.request_times
    # Every attempt made one request; one more may have been cut off by the manager closing.
    assert len(run.attempts) <= len(times) <= len(run.attempts) + 1, (len(run.attempts), len(times))
    for index, (_, attempt) in enumerate(run.attempts):
        if attempt.ok or index + 1 == len(times):
            continue
        assert attempt.next_attempt_in is not None
        failed_at = times[index][1]
        retried_at = times[index + 1][0]
        assert retried_at >= failed_at + attempt.next_attempt_in, "a retry came before its backoff delay"


def report(fault: str, mode: str, run: Run, outcome: str) -> None:
    path = os.environ.get("AIOIAM_MATRIX_REPORT")
    if not path:
        return
    row = {
        "fault": fault,
        "mode": mode,
        "outcome": outcome,
        "requests": run.sent_after_wave[0],
        "seen": run.seen_after_wave[0],
        "second_wave_requests": run.sent_after_wave[-1] - run.sent_after_wave[0],
        "worst_wait": round(run.worst_wait, 3),
    }
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(row) + "\n")


def assert_recovered(run: Run, *, requests: int) -> None:
    assert run.errors() == [], [str(e) for e in run.errors()]
    assert len(run.tokens()) == sum(len(wave) for wave in run.waves)
    assert run.sent_after_wave[0] == requests
    assert run.seen_after_wave[0] == requests
    assert run.fake.issued[-1] == run.tokens()[0].access_token


def assert_same_error(run: Run, kind: type[IAMError], wave: int = 0) -> IAMError:
    errors = [call.error for call in run.waves[wave]]
    assert all(type(error) is kind for error in errors), [repr(e) for e in errors]
    first = errors[0]
    assert first is not None
    if kind is IAMUnavailableError:
        # Callers who waited on a request and those who found the backoff too long word it
        # differently ("no token from IAM within ...", "IAM is unavailable ..."); the cause, the
        # last failure, is the same for all.
        assert {str(getattr(error, "cause", None)) for error in errors} == {str(getattr(first, "cause", None))}
    else:
        assert {str(error) for error in errors} == {str(first)}
    return first


# ---------------------------------------------------------------------------------------------------
# First token: the faults hit callers who have no token yet.


async def test_latency(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeIAM(api_keys=[KEY], client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    fake.fail_next(1, Fault.latency(0.1))
    # A slow answer within the request timeout (5 s): one request, not retried.
    run = await run_matrix(fake, mode, caplog, waves=(CALLERS, CALLERS))
    assert_recovered(run, requests=1)
    assert run.sent_after_wave == [1, 1]  # the second wave is served from the cache
    assert [attempt.ok for _, attempt in run.attempts] == [True]
    # The emulator slept 0.1 s after the request reached it, all within the attempt.
    assert run.attempts[0][1].duration >= 0.1
    check_tokens(run)
    audit(run)
    report("latency 0.1 s", mode, run, "token after the delay")


async def test_5xx_then_recovery(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeIAM(api_keys=[KEY], client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    fake.fail_next(2, Fault.error(503))
    run = await run_matrix(fake, mode, caplog)
    assert_recovered(run, requests=3)
    assert [a.consecutive_failures for _, a in run.attempts] == [1, 2, 0]
    assert [a.status_code for _, a in run.attempts] == [503, 503, None]
    # Two retries, after half of each backoff cap (the jitter draws 0.5): 25 ms, then 50 ms.
    assert [a.next_attempt_in for _, a in run.attempts] == [pytest.approx(0.025), pytest.approx(0.05), None]
    check_backoff(run)
    check_tokens(run)
    audit(run)
    report("503 twice", mode, run, "token after 2 retries")


async def test_5xx_outage_gives_unavailable(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeIAM(api_keys=[KEY], client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    fake.down = True
    run = await run_matrix(fake, mode, caplog, retry=OUTAGE)
    error = assert_same_error(run, IAMUnavailableError)
    assert isinstance(error, IAMUnavailableError)
    assert isinstance(error.cause, TransientIAMError)
    assert error.status_code == 503
    # Retried once; the next backoff (25 s) ends after every caller's deadline, so they give up.
    assert str(error).startswith("IAM is unavailable and no usable token is left; last failure: IAM answered 503")
    assert run.sent_after_wave == run.seen_after_wave == [2]
    assert [a.consecutive_failures for _, a in run.attempts] == [1, 2]
    check_backoff(run)
    check_tokens(run)
    audit(run)
    report("5xx outage (down)", mode, run, "IAMUnavailableError once the backoff outlasts retry.timeout")


async def test_429_with_retry_after_is_honoured(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeIAM(api_keys=[KEY], client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    fake.fail_next(1, Fault.error(429, retry_after=0.15))
    run = await run_matrix(fake, mode, caplog)
    assert_recovered(run, requests=2)
    assert run.attempts[0][1].error_code == "BXNIM0436E"
    assert run.attempts[0][1].next_attempt_in == pytest.approx(0.15)
    check_backoff(run)  # so the retry went out at least 0.15 s after the 429
    check_tokens(run)
    audit(run)
    report("429, Retry-After 0.15 s", mode, run, "token after Retry-After")


async def test_429_retry_after_beyond_the_timeout_fails_fast(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeIAM(api_keys=[KEY], client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    fake.fail_next(1, Fault.error(429, retry_after=30))
    run = await run_matrix(fake, mode, caplog, waves=(CALLERS, CALLERS))
    error = assert_same_error(run, IAMUnavailableError)
    assert error.status_code == 429
    assert error.error_code == "BXNIM0436E"
    assert "Too many requests" in str(error)
    assert run.sent_after_wave == [1, 1]  # IAM asked for 30 s: nobody asks again before that
    assert_same_error(run, IAMUnavailableError, wave=1)
    check_tokens(run)
    audit(run)
    report("429, Retry-After 30 s (> retry.timeout)", mode, run, "IAMUnavailableError at once")


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "BXNIM0415E"), (401, "BXNIM0310E"), (403, "BXNIM0513E")],
    ids=["400", "401", "403"],
)
async def test_refused_credentials(status: int, code: str, mode: str, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeIAM(api_keys=[KEY], client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    fake.fail_next(1, Fault.error(status))
    run = await run_matrix(fake, mode, caplog, retry=COOLDOWN, waves=(CALLERS, CALLERS))
    error = assert_same_error(run, InvalidCredentialsError)
    assert (error.status_code, error.error_code) == (status, code)
    assert error.request_id is not None
    assert str(error).startswith(f"IAM answered {status} {code}: ")
    # Never retried: one request for both waves (the second is inside the cooldown).
    assert run.sent_after_wave == [1, 1]
    assert_same_error(run, InvalidCredentialsError, wave=1)
    check_tokens(run)
    audit(run)
    report(f"{status} (IAM error body)", mode, run, "InvalidCredentialsError at once")


async def test_connection_refused_outage(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeIAM(api_keys=[KEY], client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    fake.refusing = True
    run = await run_matrix(fake, mode, caplog, retry=OUTAGE)
    error = assert_same_error(run, IAMUnavailableError)
    assert isinstance(error, IAMUnavailableError)
    assert isinstance(error.cause, TransientIAMError)
    assert "could not reach IAM: ConnectError" in str(error)
    assert run.seen_after_wave == [0]  # nothing ever reached the emulator
    assert run.sent_after_wave == [2]
    check_backoff(run)
    check_tokens(run)
    audit(run)
    report("connection refused (port closed)", mode, run, "IAMUnavailableError once the backoff outlasts retry.timeout")


async def test_connection_refused_then_the_port_reopens(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeIAM(api_keys=[KEY], client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    fake.refusing = True

    def reopen_after_two(attempt: FetchAttempt) -> None:
        if attempt.consecutive_failures == 2:
            fake.refusing = False

    run = await run_matrix(fake, mode, caplog, hooks=[reopen_after_two])
    assert run.errors() == []
    assert run.sent_after_wave == [3]
    assert run.seen_after_wave == [1]  # the two refused connections never reached it
    assert [a.ok for _, a in run.attempts] == [False, False, True]
    check_backoff(run)
    check_tokens(run)
    audit(run)
    report("connection refused twice, then open", mode, run, "token after 2 retries")


async def test_reset_mid_response_is_retried(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeIAM(api_keys=[KEY], client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    fake.fail_next(2, Fault.reset())
    run = await run_matrix(fake, mode, caplog)
    assert_recovered(run, requests=3)
    assert [a.error_type for _, a in run.attempts] == ["TransientIAMError", "TransientIAMError", None]
    check_backoff(run)
    check_tokens(run)
    audit(run)
    report("connection reset mid-response, twice", mode, run, "token after 2 retries")


async def test_reset_every_time_gives_unavailable(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeIAM(api_keys=[KEY], client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    fake.fail_next(1000, Fault.reset())
    run = await run_matrix(fake, mode, caplog, retry=OUTAGE)
    error = assert_same_error(run, IAMUnavailableError)
    assert "could not reach IAM: " in str(error)
    assert ("ReadError" in str(error)) or ("RemoteProtocolError" in str(error))
    assert run.sent_after_wave == run.seen_after_wave == [2]
    check_backoff(run)
    check_tokens(run)
    audit(run)
    report(
        "connection reset on every request", mode, run, "IAMUnavailableError once the backoff outlasts retry.timeout"
    )


async def test_hang_times_out_and_is_retried(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeIAM(api_keys=[KEY], client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    fake.fail_next(1, Fault.hang())
    run = await run_matrix(fake, mode, caplog, retry=HANG)
    assert_recovered(run, requests=2)
    assert [a.error_type for _, a in run.attempts] == ["TransientIAMError", None]
    # The emulator never answers: the request is cut off by the manager's request timeout.
    assert any("IAM did not answer within 1s" in record.getMessage() for record in caplog.records)
    check_backoff(run)
    check_tokens(run)
    audit(run)
    report("no answer (hang)", mode, run, "token after retry.request_timeout and a retry")


async def test_hang_every_time_gives_unavailable(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeIAM(api_keys=[KEY], client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    fake.fail_next(1000, Fault.hang())
    # Never answered, so a short request timeout (0.2 s) is always hit; callers give up once the
    # second backoff (25 s) outlasts their 10 s.
    run = await run_matrix(fake, mode, caplog, retry=HANG_OUTAGE)
    error = assert_same_error(run, IAMUnavailableError)
    assert str(error) == "IAM is unavailable and no usable token is left; last failure: IAM did not answer within 0.2s"
    assert run.sent_after_wave == run.seen_after_wave == [2]
    check_backoff(run)
    check_tokens(run)
    audit(run)
    report("no answer, every time", mode, run, "IAMUnavailableError once the backoff outlasts retry.timeout")


async def test_html_with_200(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeIAM(api_keys=[KEY], client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    fake.fail_next(1, Fault.html(200))
    run = await run_matrix(fake, mode, caplog, retry=COOLDOWN, waves=(CALLERS, CALLERS))
    error = assert_same_error(run, InvalidResponseError)
    assert str(error) == "IAM answered 200 but the body is not JSON"
    assert "<html" not in repr(error)
    assert run.sent_after_wave == [1, 1]
    assert_same_error(run, InvalidResponseError, wave=1)
    check_tokens(run)
    audit(run)
    report("200 with an HTML page", mode, run, "InvalidResponseError at once")


async def test_html_with_502_is_retried(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeIAM(api_keys=[KEY], client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    fake.fail_next(1, Fault.html(502))
    run = await run_matrix(fake, mode, caplog)
    assert_recovered(run, requests=2)
    assert run.attempts[0][1].status_code == 502
    assert not any("<html" in record.getMessage().lower() for record in caplog.records)
    check_backoff(run)
    check_tokens(run)
    audit(run)
    report("502 with an HTML page", mode, run, "token after 1 retry")


async def test_invalid_json(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeIAM(api_keys=[KEY], client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    fake.fail_next(1, Fault.invalid_json())
    run = await run_matrix(fake, mode, caplog, retry=COOLDOWN, waves=(CALLERS, CALLERS))
    error = assert_same_error(run, InvalidResponseError)
    assert str(error) == "IAM answered 200 but the body is not JSON"
    assert run.sent_after_wave == [1, 1]
    check_tokens(run)
    audit(run)
    report("200 with invalid JSON", mode, run, "InvalidResponseError at once")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"access_token": OMIT}, "'access_token' is missing or not a non-empty string"),
        ({"access_token": 42}, "'access_token' is missing or not a non-empty string"),
        ({"access_token": ""}, "'access_token' is missing or not a non-empty string"),
        ({"expires_in": OMIT}, "'expires_in' is missing or not a number"),
        ({"expires_in": "3600"}, "'expires_in' is missing or not a number"),
        ({"expires_in": True}, "'expires_in' is missing or not a number"),
        ({"expires_in": 0}, "'expires_in' is not positive"),
        ({"expires_in": -5}, "'expires_in' is not positive"),
        ({"expires_in": 10**9}, "'expires_in' is longer than 86400 seconds"),
        ({"token_type": "mac"}, "'token_type' is not 'Bearer'"),
        ({"token_type": None}, "'token_type' is not 'Bearer'"),
    ],
    ids=[
        "access_token-missing",
        "access_token-int",
        "access_token-empty",
        "expires_in-missing",
        "expires_in-string",
        "expires_in-bool",
        "expires_in-zero",
        "expires_in-negative",
        "expires_in-absurd",
        "token_type-mac",
        "token_type-null",
    ],
)
async def test_unusable_token_answer(
    fields: dict[str, Any], message: str, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeIAM(api_keys=[KEY], client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    fake.fail_next(1, Fault.token(**fields))
    run = await run_matrix(fake, mode, caplog, retry=COOLDOWN, waves=(CALLERS, CALLERS))
    error = assert_same_error(run, InvalidResponseError)
    assert str(error) == f"IAM answered 200 but {message}"
    assert error.status_code == 200
    assert run.sent_after_wave == [1, 1]
    check_tokens(run)
    audit(run)  # the issued token in the rejected answer is in fake.secrets()
    name = ", ".join(f"{k}={'(missing)' if v is OMIT else json.dumps(v)}" for k, v in fields.items())
    report(f"200 with {name}", mode, run, "InvalidResponseError at once")


async def test_overstated_expires_in_is_cut_to_the_jwt_lifetime(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeIAM(api_keys=[KEY], client_id=CLIENT_ID, client_secret=CLIENT_SECRET, lifetime=60)
    fake.fail_next(1, Fault.token(expires_in=86_400))
    run = await run_matrix(fake, mode, caplog)
    assert_recovered(run, requests=1)
    token = run.tokens()[0]
    assert token.expires_in == 60  # the JWT's exp - iat, not the answer's claim
    expires_at = fake.expires_at(token.access_token)
    assert expires_at is not None
    # The manager stops handing it out before the emulator stops accepting it.
    assert token.stale_at - token.obtained_at < 60
    check_tokens(run)
    audit(run)
    report("200 with expires_in=86400 (JWT says 60)", mode, run, "token, timed by the JWT (60 s)")


@pytest.mark.parametrize("hours", [3, -3])
async def test_expiration_hours_away_from_the_local_clock(
    hours: int, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeIAM(api_keys=[KEY], client_id=CLIENT_ID, client_secret=CLIENT_SECRET, lifetime=3600)
    fake.fail_next(1, Fault.clock_skew(hours * 3600))
    run = await run_matrix(fake, mode, caplog)
    assert_recovered(run, requests=1)
    token = run.tokens()[0]
    assert token.expires_in == 3600  # timed on the monotonic clock, whatever IAM's clock says
    assert token.stale_at - token.obtained_at == pytest.approx(3590)
    warnings = [r.getMessage() for r in caplog.records if "local clock differs" in r.getMessage()]
    assert len(warnings) == 1
    assert f"{-hours * 3600}s" in warnings[0] or f"{-hours * 3600 + 1}s" in warnings[0]
    check_tokens(run)
    audit(run)
    report(f"expiration {hours:+d} h from the local clock", mode, run, "token, one clock-skew warning")


# ---------------------------------------------------------------------------------------------------
# The emulator's own contract, for users who script it in their tests.


def test_faults_in_process_raise_the_matching_httpx_errors() -> None:
    """In process (``fake.transport``) the socket-level faults raise what httpx would raise."""

    async def main() -> None:
        fake = FakeIAM()
        form = {"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": "test-api-key"}
        async with httpx.AsyncClient(transport=fake.transport, base_url="http://iam.test") as client:
            fake.refusing = True
            with pytest.raises(httpx.ConnectError, match="Connection refused"):
                await client.post("/identity/token", data=form)
            fake.refusing = False
            fake.fail_next(1, Fault.reset())
            with pytest.raises(httpx.ReadError, match="reset"):
                await client.post("/identity/token", data=form)
            fake.fail_next(1, Fault.hang())
            with anyio.move_on_after(0.1) as scope:
                await client.post("/identity/token", data=form)
            assert scope.cancelled_caught
            fake.fail_next(1, Fault.error(429, retry_after=7))
            response = await client.post("/identity/token", data=form)
            assert (response.status_code, response.headers["retry-after"]) == (429, "7")
            assert response.json()["errorCode"] == "BXNIM0436E"
            fake.fail_next(1, Fault.token(expires_in=OMIT, token_type="mac"))
            body = (await client.post("/identity/token", data=form)).json()
            assert "expires_in" not in body
            assert body["token_type"] == "mac"
            assert fake.is_valid(body["access_token"])  # issued all the same
            fake.fail_next(1, Fault.clock_skew(3600))
            body = (await client.post("/identity/token", data=form)).json()
            assert body["expiration"] >= fake.wall_clock() + 3600 + 3600 - 2
            assert (await client.post("/identity/token", data=form)).status_code == 200
        assert fake.requests == 6  # the refused one never reached it
        assert fake.pending_faults == 0

    anyio.run(main)


def test_refusing_closes_and_reopens_the_port_of_a_server_in_a_thread() -> None:
    """``refusing`` works from another thread too, and keeps the port."""
    fake = FakeIAM()
    form = {"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": "test-api-key"}
    with fake.serve_in_thread() as address:
        url = address.url + "/identity/token"
        with httpx.Client(timeout=10) as client:
            assert client.post(url, data=form).status_code == 200
            fake.refusing = True
            # A request on the connection opened before is cut off; a new connection is refused.
            with pytest.raises(httpx.ReadError):
                client.post(url, data=form)
        with pytest.raises(httpx.ConnectError):
            httpx.post(url, data=form, timeout=10)
        fake.refusing = False
        assert httpx.post(url, data=form, timeout=10).status_code == 200
        fake.fail_next(1, Fault.reset())
        with pytest.raises(httpx.TransportError):
            httpx.post(url, data=form, timeout=10)
    assert fake.requests == 4
