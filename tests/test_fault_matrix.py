"""The fault matrix: every way IAM can fail, over a real socket on loopback, with concurrent callers.

Each test scripts one fault into :class:`~aioiam.testing.FakeIAM`, served over real TCP, and sends
several concurrent callers (in a first wave, and for errors a second wave) at one manager, in
both modes (inside ``async with``, and on demand). It asserts:

- the outcome: recovery, or the right typed error with a clear message;
- how many requests the manager sent and the emulator saw, and that retries kept to the backoff
  schedule (never earlier than the delay the manager announced);
- how long callers waited (bounded);
- that no expired token was handed out: every token returned is before its ``stale_at`` on the
  manager's clock and valid in the emulator's eyes;
- the secrets audit: with DEBUG logging captured, no API key, client secret, access or refresh
  token appears in any log record, exception (with its causes), or ``repr``/``str`` of the
  manager, its tokens, ``IAMAuth`` or the hook records.

Set ``AIOIAM_MATRIX_REPORT=<file>`` to append one JSON line per run (fault, outcome, requests,
worst wait): ``docs/failures.md``'s table is made from it.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import logging
import os
import re
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

pytestmark = [pytest.mark.anyio, pytest.mark.real_time]

KEY = "SECRET-matrix-key-3e9b41d07c5a"
CLIENT_ID = "matrix-client"
CLIENT_SECRET = "SECRET-matrix-client-secret-8a1f60"
SECRETS = [KEY, CLIENT_SECRET, base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()]

CALLERS = 6
#: Real-time scheduling slack on a busy shared machine, added to every bound on a wait.
SLACK = 0.5
#: Short retries: first delay up to 50 ms, capped at 200 ms; callers give up after 0.3 s; one
#: request may take 0.15 s.
FAST = RetryPolicy(initial_delay=0.05, max_delay=0.2, timeout=0.3, request_timeout=0.15)
#: For errors that are not retried: a cooldown long enough that the second wave is inside it.
#: One TLS context for every manager: making one per manager costs ~20 ms, and these managers
#: talk plain http to loopback anyway.
TLS = ssl.create_default_context()
COOLDOWN = RetryPolicy(initial_delay=1.0, max_delay=2.0, timeout=0.3, request_timeout=0.15)


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
    attempts: list[tuple[float, FetchAttempt]]  # (clock at the end of the attempt, attempt)
    texts: list[str] = field(default_factory=list)

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

    async with fake.serve() as address:
        tm = TokenManager(
            KEY,
            url=address.url,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            retry=retry,
            refresh=refresh,
            clock=anyio.current_time,
            verify=TLS,
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
    """Every retry waited at least the delay announced after the failure before it."""
    for (end, before), (after_end, after) in itertools.pairwise(run.attempts):
        if before.ok:
            continue
        assert before.next_attempt_in is not None
        start = after_end - after.duration
        assert start >= end + before.next_attempt_in - 0.01, "a retry came before its backoff delay"


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
        # differently ("no token from IAM within ...", "IAM is unavailable ..."); the cause is one
        # kind of failure. Its time may differ: an on-demand caller cuts the request it runs off
        # at its own deadline ("did not answer within 0.125s" instead of the 0.15s timeout).
        def cause(error: IAMError | None) -> str:
            return re.sub(r"\d+(\.\d+)?s\b", "<t>s", str(getattr(error, "cause", None)))

        assert {cause(error) for error in errors} == {cause(first)}
    else:
        assert {str(error) for error in errors} == {str(first)}
    return first


# ---------------------------------------------------------------------------------------------------
# First token: the faults hit callers who have no token yet.


async def test_latency(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeIAM(api_keys=[KEY], client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    fake.fail_next(1, Fault.latency(0.1))
    # A slow answer within the request timeout (here 1 s).
    retry = RetryPolicy(initial_delay=0.05, max_delay=0.2, timeout=2, request_timeout=1)
    run = await run_matrix(fake, mode, caplog, retry=retry, waves=(CALLERS, CALLERS))
    assert_recovered(run, requests=1)
    assert run.sent_after_wave == [1, 1]  # the second wave is served from the cache
    assert all(0.1 - 0.01 <= call.waited <= 0.1 + SLACK for call in run.waves[0])
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
    # Two retries, each at most its backoff cap (0.05 s, then 0.1 s) after the failure.
    assert run.worst_wait <= 0.05 + 0.1 + SLACK
    check_backoff(run)
    check_tokens(run)
    audit(run)
    report("503 twice", mode, run, "token after 2 retries")


async def test_5xx_outage_gives_unavailable(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeIAM(api_keys=[KEY], client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    fake.down = True
    run = await run_matrix(fake, mode, caplog)
    error = assert_same_error(run, IAMUnavailableError)
    assert isinstance(error, IAMUnavailableError)
    assert isinstance(error.cause, TransientIAMError)
    assert error.status_code == 503
    assert str(error).startswith("no token from IAM within 0.3s; last failure: IAM answered 503") or str(
        error
    ).startswith("IAM is unavailable and no usable token is left; last failure: IAM answered 503")
    # Callers give up at retry.timeout, never much later.
    assert all(call.waited <= FAST.timeout + SLACK for call in run.calls)
    # Retried, but no faster than the backoff schedule allows.
    assert 2 <= run.sent_after_wave[0] <= 25
    check_backoff(run)
    check_tokens(run)
    audit(run)
    report("5xx outage (down)", mode, run, "IAMUnavailableError at retry.timeout")


async def test_429_with_retry_after_is_honoured(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeIAM(api_keys=[KEY], client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    fake.fail_next(1, Fault.error(429, retry_after=0.15))
    run = await run_matrix(fake, mode, caplog)
    assert_recovered(run, requests=2)
    assert run.attempts[0][1].error_code == "BXNIM0436E"
    assert run.attempts[0][1].next_attempt_in == pytest.approx(0.15)
    assert all(0.15 - 0.01 <= call.waited <= 0.15 + SLACK for call in run.calls)
    check_backoff(run)
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
    assert run.worst_wait <= SLACK
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
    assert run.worst_wait <= SLACK
    check_tokens(run)
    audit(run)
    report(f"{status} (IAM error body)", mode, run, "InvalidCredentialsError at once")


async def test_connection_refused_outage(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeIAM(api_keys=[KEY], client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    fake.refusing = True
    run = await run_matrix(fake, mode, caplog)
    error = assert_same_error(run, IAMUnavailableError)
    assert isinstance(error, IAMUnavailableError)
    assert isinstance(error.cause, TransientIAMError)
    assert "could not reach IAM: ConnectError" in str(error)
    assert run.seen_after_wave == [0]  # nothing ever reached the emulator
    assert 2 <= run.sent_after_wave[0] <= 25
    assert all(call.waited <= FAST.timeout + SLACK for call in run.calls)
    check_backoff(run)
    check_tokens(run)
    audit(run)
    report("connection refused (port closed)", mode, run, "IAMUnavailableError at retry.timeout")


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
    assert run.worst_wait <= 0.05 + 0.1 + SLACK
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
    assert run.worst_wait <= 0.05 + 0.1 + SLACK
    check_backoff(run)
    check_tokens(run)
    audit(run)
    report("connection reset mid-response, twice", mode, run, "token after 2 retries")


async def test_reset_every_time_gives_unavailable(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeIAM(api_keys=[KEY], client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    fake.fail_next(1000, Fault.reset())
    run = await run_matrix(fake, mode, caplog)
    error = assert_same_error(run, IAMUnavailableError)
    assert "could not reach IAM: " in str(error)
    assert ("ReadError" in str(error)) or ("RemoteProtocolError" in str(error))
    assert all(call.waited <= FAST.timeout + SLACK for call in run.calls)
    check_backoff(run)
    check_tokens(run)
    audit(run)
    report("connection reset on every request", mode, run, "IAMUnavailableError at retry.timeout")


async def test_hang_times_out_and_is_retried(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeIAM(api_keys=[KEY], client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    fake.fail_next(1, Fault.hang())
    run = await run_matrix(fake, mode, caplog)
    assert_recovered(run, requests=2)
    assert run.attempts[0][1].duration == pytest.approx(FAST.request_timeout, abs=0.1)
    assert all(FAST.request_timeout - 0.01 <= call.waited <= FAST.request_timeout + 0.05 + SLACK for call in run.calls)
    assert any("IAM did not answer within 0.15s" in record.getMessage() for record in caplog.records)
    check_backoff(run)
    check_tokens(run)
    audit(run)
    report("no answer (hang)", mode, run, "token after retry.request_timeout and a retry")


async def test_hang_every_time_gives_unavailable(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeIAM(api_keys=[KEY], client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    fake.fail_next(1000, Fault.hang())
    run = await run_matrix(fake, mode, caplog)
    error = assert_same_error(run, IAMUnavailableError)
    # The request is cut off at request_timeout (0.15 s), or sooner at the caller's own
    # retry.timeout when an on-demand caller runs it.
    assert re.search(r"IAM did not answer within 0\.1\d*s", str(error)), str(error)
    assert all(call.waited <= FAST.timeout + SLACK for call in run.calls)
    assert run.sent_after_wave[0] <= 3
    check_tokens(run)
    audit(run)
    report("no answer, every time", mode, run, "IAMUnavailableError at retry.timeout")


async def test_html_with_200(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeIAM(api_keys=[KEY], client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    fake.fail_next(1, Fault.html(200))
    run = await run_matrix(fake, mode, caplog, retry=COOLDOWN, waves=(CALLERS, CALLERS))
    error = assert_same_error(run, InvalidResponseError)
    assert str(error) == "IAM answered 200 but the body is not JSON"
    assert "<html" not in repr(error)
    assert run.sent_after_wave == [1, 1]
    assert_same_error(run, InvalidResponseError, wave=1)
    assert run.worst_wait <= SLACK
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
    assert run.worst_wait <= SLACK
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
    assert run.worst_wait <= SLACK
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
# Refresh: the faults hit the refresh of a token that is still usable.

#: 0.3 s tokens, refreshed from half their life: a refresh falls due 0.135-0.15 s after the token
#: was requested, and the token goes stale at 0.27 s.
LIFETIME = 0.3
REFRESH = RefreshPolicy(refresh_fraction=0.5)
REFRESH_RETRY = RetryPolicy(initial_delay=0.01, max_delay=0.05, timeout=0.6, request_timeout=0.15)

#: name: (fault, how many times in a row, whether it outlives the token so callers must wait)
REFRESH_FAULTS: dict[str, tuple[Fault, int, bool]] = {
    "503 twice": (Fault.error(503), 2, False),
    "429, Retry-After 0.02 s": (Fault.error(429, retry_after=0.02), 1, False),
    "connection reset twice": (Fault.reset(), 2, False),
    "502 with an HTML page": (Fault.html(502), 1, False),
    "400 (credentials refused)": (Fault.error(400), 1, False),
    "200 with invalid JSON": (Fault.invalid_json(), 1, False),
    "200 with expires_in=0": (Fault.token(expires_in=0), 1, False),
    "no answer (hang) past the token's stale time": (Fault.hang(), 1, True),
}


class Barrier:
    """Releases everyone once ``parties`` have arrived."""

    def __init__(self, parties: int) -> None:
        self.waiting = parties
        self.event = anyio.Event()

    async def wait(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.event.set()
        await self.event.wait()


async def refresh_run(name: str, mode: str, runs: dict[str, tuple[Run, Token]], ready: Barrier) -> None:
    """One manager whose first refresh meets ``REFRESH_FAULTS[name]``, polled by several callers."""
    fault, count, _ = REFRESH_FAULTS[name]
    fake = FakeIAM(api_keys=[KEY], client_id=CLIENT_ID, client_secret=CLIENT_SECRET, lifetime=LIFETIME)
    attempts: list[tuple[float, FetchAttempt]] = []
    calls: list[Call] = []

    async with fake.serve() as address:
        tm = TokenManager(
            KEY,
            url=address.url,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            retry=REFRESH_RETRY,
            refresh=REFRESH,
            clock=anyio.current_time,
            verify=TLS,
            hooks=[lambda attempt: attempts.append((anyio.current_time(), attempt))],
        )
        # Making a manager (its TLS context) blocks the event loop for a few milliseconds: make
        # them all before any request is timed.
        await ready.wait()
        async with contextlib.AsyncExitStack() as stack:
            if mode == "background":
                await stack.enter_async_context(tm)
            else:
                stack.push_async_callback(tm.aclose)
            first = await tm.get_token_info()
            fake.fail_next(count, fault)
            # Long enough for the refresh and its retries, short of the new token's own refresh.
            end = first.obtained_at + LIFETIME * 1.5

            async def caller() -> None:
                while anyio.current_time() < end:
                    start = anyio.current_time()
                    try:
                        token = await tm.get_token_info()
                    except IAMError as exc:
                        calls.append(Call(anyio.current_time() - start, error=exc))
                    else:
                        now = anyio.current_time()
                        calls.append(
                            Call(
                                now - start,
                                token,
                                before_stale=now < token.stale_at,
                                valid_at_iam=fake.is_valid(token.access_token),
                            )
                        )
                    await anyio.sleep(0.01)

            async with anyio.create_task_group() as tg:
                for _ in range(CALLERS):
                    tg.start_soon(caller)
            texts = [repr(tm), str(tm), repr(IAMAuth(tm))]
    run = Run(fake, [calls], [tm.request_count], [fake.requests], attempts, texts)
    run.texts += [repr(call.token) for call in calls if call.token is not None]
    run.texts += [repr(a) for _, a in attempts]
    runs[name] = (run, first)


async def test_faults_during_refresh_are_ridden_out(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    """Callers keep getting the usable token while its refresh fails, and never see an error.

    Every fault of :data:`REFRESH_FAULTS` hits the first refresh of its own manager; the managers
    run side by side to keep the test short.
    """
    caplog.set_level(logging.DEBUG)
    runs: dict[str, tuple[Run, Token]] = {}
    ready = Barrier(len(REFRESH_FAULTS))
    async with anyio.create_task_group() as tg:
        for name in REFRESH_FAULTS:
            tg.start_soon(refresh_run, name, mode, runs, ready)
    logs = [record.getMessage() for record in caplog.records]
    assert any("still serving the current token" in text for text in logs)

    for name, (_, count, stalls) in REFRESH_FAULTS.items():
        run, first = runs[name]
        assert run.errors() == [], (name, [str(e) for e in run.errors()])
        for call in run.calls:
            if call.token is not None:
                assert call.before_stale, (name, "a token was handed out at or after its stale_at")
                assert call.valid_at_iam, (name, "a token the emulator no longer accepts was handed out")
        assert run.fake.max_in_flight <= 1, name
        assert run.fake.pending_faults == 0, name
        outcomes = [attempt.ok for _, attempt in run.attempts]
        assert outcomes[: count + 2] == [True] + [False] * count + [True], (name, outcomes)
        assert run.tokens()[-1].access_token != first.access_token, name
        if stalls:
            # The hung refresh outlived the token: callers waited for the retry, within the bound.
            assert run.worst_wait <= REFRESH_RETRY.request_timeout + REFRESH_RETRY.max_delay + SLACK, name
        elif mode == "background":
            # Nobody waited for IAM: the refresher retried while the token was still usable.
            assert run.worst_wait <= SLACK / 5, (name, run.worst_wait)
        else:
            # On demand, the caller who finds the refresh due sends it and waits for that answer.
            assert run.worst_wait <= REFRESH_RETRY.request_timeout + SLACK, (name, run.worst_wait)
        check_backoff(run)
        run.texts += logs
        audit(run)
        report(f"during refresh: {name}", mode, run, "ridden out" if not stalls else "callers wait, no error")


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
        with httpx.Client(timeout=2) as client:
            assert client.post(url, data=form).status_code == 200
            fake.refusing = True
            # A request on the connection opened before is cut off; a new connection is refused.
            with pytest.raises(httpx.ReadError):
                client.post(url, data=form)
        with pytest.raises(httpx.ConnectError):
            httpx.post(url, data=form, timeout=2)
        fake.refusing = False
        assert httpx.post(url, data=form, timeout=2).status_code == 200
        fake.fail_next(1, Fault.reset())
        with pytest.raises(httpx.TransportError):
            httpx.post(url, data=form, timeout=2)
    assert fake.requests == 4
