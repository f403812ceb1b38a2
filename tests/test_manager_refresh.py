"""Refresh ahead of expiry, expiry margins, retries, cooldowns and outages."""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import time

import anyio
import anyio.lowlevel
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
    TokenManager,
    TransientIAMError,
)
from aioiam.testing import FakeIAM, Fault
from tests.helpers import NO_JITTER, FixedRandom, FlakyTransport, Recorder, make_manager

pytestmark = pytest.mark.anyio


async def steady_callers(tm: TokenManager, duration: float, every: float = 0.5) -> tuple[int, float, list[str]]:
    """Call get_token every `every` seconds; return (calls, longest wait, tokens seen)."""
    calls = 0
    longest = 0.0
    seen: list[str] = []
    end = anyio.current_time() + duration
    while anyio.current_time() < end:
        start = anyio.current_time()
        token = await tm.get_token_info()
        now = anyio.current_time()
        assert now < token.stale_at, "a token inside its expiry margin was handed out"
        longest = max(longest, now - start)
        if not seen or seen[-1] != token.access_token:
            seen.append(token.access_token)
        calls += 1
        await anyio.sleep(every)
    return calls, longest, seen


async def test_background_refresh_means_no_caller_waits_after_the_first_token() -> None:
    fake = FakeIAM(lifetime=100, latency=0.2)
    async with make_manager(fake, refresh=NO_JITTER) as tm:
        await tm.get_token()
        calls, longest, seen = await steady_callers(tm, duration=390)
    assert calls > 700
    assert longest == 0  # nobody waited for IAM
    # Refreshed at 80% of each lifetime: at 80, 160, 240 and 320 s.
    assert fake.requests == len(seen) == 1 + 4


async def test_refresh_happens_at_80_percent_moved_earlier_by_jitter() -> None:
    fake = FakeIAM(lifetime=1000)
    recorder = Recorder()
    policy = RefreshPolicy(jitter_fraction=0.05)
    async with make_manager(fake, refresh=policy, hooks=[recorder], rng=random.Random(7)) as tm:
        first = await tm.get_token_info()
        assert 750 <= first.refresh_at - first.obtained_at <= 800
        await anyio.sleep(first.refresh_at - anyio.current_time() + 0.001)
        await anyio.lowlevel.checkpoint()
        assert fake.requests == 2
        assert recorder.attempts[-1].background


async def test_jitter_differs_between_managers() -> None:
    offsets = set()
    for seed in range(5):
        tm = make_manager(FakeIAM(lifetime=1000), rng=random.Random(seed))
        token = await tm.get_token_info()
        offsets.add(round(token.refresh_at - token.obtained_at, 3))
        await tm.aclose()
    assert len(offsets) == 5


async def test_on_demand_refresh_runs_in_the_background_and_no_caller_waits_for_it() -> None:
    """Without ``async with``, the caller who finds the token due starts the refresh and, like
    everyone else, returns at once with the still-valid token."""
    fake = FakeIAM(lifetime=100, latency=1.0)
    tm = make_manager(fake, refresh=NO_JITTER)
    first = await tm.get_token()
    await anyio.sleep(85)  # due (80) but not stale (90)
    results: dict[str, tuple[str, float]] = {}

    async def call(name: str) -> None:
        start = anyio.current_time()
        token = await tm.get_token()
        results[name] = (token, anyio.current_time() - start)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "starter")
        await anyio.sleep(0.1)
        tg.start_soon(call, "other")
    assert results == {"starter": (first, 0), "other": (first, 0)}
    assert fake.requests == 2  # the refresh is under way
    await anyio.sleep(1)
    assert await tm.get_token() == fake.issued[1]
    assert fake.requests == 2
    await tm.aclose()


async def test_on_demand_refresh_that_failed_is_not_resent_within_its_backoff() -> None:
    """After a failed on-demand refresh, callers within the backoff keep the usable token without
    asking IAM; the first caller after it asks again."""
    fake = FakeIAM(lifetime=100)
    recorder = Recorder()
    retry = RetryPolicy(initial_delay=4, max_delay=4)
    tm = make_manager(fake, refresh=NO_JITTER, retry=retry, rng=FixedRandom(0.5), hooks=[recorder])
    first = await tm.get_token()
    await anyio.sleep(85)  # due (80) but not stale (90)
    fake.fail_next(1, Fault.error(503))
    assert await tm.get_token() == first  # starts the refresh in the background, returns at once
    await anyio.sleep(0.01)  # the refresh runs, and fails
    assert fake.requests == 2
    assert recorder.attempts[-1].next_attempt_in == pytest.approx(2)  # 0.5 of the 4 s cap
    await anyio.sleep(1.9)
    assert await tm.get_token() == first  # inside the backoff: no new request
    await anyio.sleep(0.01)
    assert fake.requests == 2
    await anyio.sleep(0.2)
    assert await tm.get_token() == first  # after it: this caller starts the next refresh
    await anyio.sleep(0.01)
    assert fake.requests == 3
    assert await tm.get_token() == fake.issued[1]
    await tm.aclose()


async def test_the_default_clock_is_the_monotonic_clock() -> None:
    """Without ``clock=``, a token's schedule is in ``time.monotonic()`` readings, not Unix time."""
    fake = FakeIAM(lifetime=3600)
    tm = TokenManager("test-api-key", url="http://127.0.0.1:1", transport=fake.transport, refresh=NO_JITTER)
    before = time.monotonic()
    token = await tm.get_token_info()
    after = time.monotonic()
    await tm.aclose()
    assert before <= token.obtained_at <= after
    assert token.expires_at == token.obtained_at + 3600
    assert before + 2880 <= token.refresh_at <= after + 2880


async def test_lifetime_counts_from_when_the_request_was_sent() -> None:
    fake = FakeIAM(lifetime=100, latency=5.0)
    tm = make_manager(fake, refresh=NO_JITTER)
    token = await tm.get_token_info()
    assert token.obtained_at == pytest.approx(0.0, abs=1e-6)
    assert token.expires_at == pytest.approx(100.0, abs=1e-6)
    assert token.stale_at == pytest.approx(90.0, abs=1e-6)
    await tm.aclose()


async def test_a_token_inside_its_margin_is_never_handed_out() -> None:
    fake = FakeIAM(lifetime=100)
    async with make_manager(fake, refresh=NO_JITTER, retry=RetryPolicy(timeout=5)) as tm:
        old = await tm.get_token_info()
        fake.down = True
        await anyio.sleep(old.stale_at - anyio.current_time())
        with pytest.raises(IAMUnavailableError) as info:
            await tm.get_token()
        assert anyio.current_time() >= old.stale_at
        assert isinstance(info.value.cause, TransientIAMError)
        assert info.value.status_code == 503


async def test_short_lived_tokens_keep_most_of_their_life() -> None:
    fake = FakeIAM(lifetime=20)
    tm = make_manager(fake, refresh=NO_JITTER)
    token = await tm.get_token_info()
    assert token.stale_at - token.obtained_at == pytest.approx(18)  # margin = 10% of 20 s
    await tm.aclose()


async def test_clock_skew_is_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeIAM(lifetime=100, wall_clock=lambda: 1_000_000.0 + 7200)
    tm = make_manager(fake, wall_clock=lambda: 1_000_000.0, refresh=NO_JITTER)
    with caplog.at_level(logging.WARNING, logger="aioiam"):
        await tm.get_token()
        await anyio.sleep(95)
        await tm.get_token()
    skew = [r for r in caplog.records if "clock" in r.getMessage()]
    assert len(skew) == 1
    assert "7200" in skew[0].getMessage()
    assert fake.requests == 2
    await tm.aclose()


@pytest.mark.parametrize(
    ("skew", "warned"),
    [(61, True), (-61, True), (59, False), (-59, False), (3 * 3600, True), (-3 * 3600, True)],
)
async def test_clock_skew_beyond_a_minute_either_way_is_warned_about_once(
    skew: int, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """IAM's ``expiration`` vs the local wall clock plus ``expires_in``: warned past 60 s, once."""

    def wall_clock() -> float:  # one wall clock for IAM and the manager, moving with virtual time
        return 1_800_000_000.0 + anyio.current_time()

    fake = FakeIAM(lifetime=100, wall_clock=wall_clock)
    fake.fail_next(2, Fault.clock_skew(skew))  # IAM's clock is ``skew`` seconds ahead, twice
    tm = make_manager(fake, wall_clock=wall_clock, refresh=NO_JITTER)
    with caplog.at_level(logging.WARNING, logger="aioiam"):
        first = await tm.get_token_info()
        await anyio.sleep(85)
        second = await tm.get_token_info()
    await tm.aclose()
    assert fake.requests == 2
    assert first.expires_in == second.expires_in == 100  # timed on the monotonic clock all the same
    warnings = [r.getMessage() for r in caplog.records if "local clock differs" in r.getMessage()]
    if warned:
        assert len(warnings) == 1
        assert f"by about {-skew}s" in warnings[0]
    else:
        assert warnings == []


async def test_transient_failures_are_retried_with_backoff() -> None:
    fake = FakeIAM()
    fake.fail_next(3, status=503)
    recorder = Recorder()
    tm = make_manager(fake, hooks=[recorder], retry=RetryPolicy(initial_delay=1, max_delay=8), rng=random.Random(1))
    token = await tm.get_token()
    assert token == fake.issued[0]
    assert fake.requests == 4
    delays = [a.next_attempt_in for a in recorder.attempts if not a.ok]
    assert [a.consecutive_failures for a in recorder.attempts] == [1, 2, 3, 0]
    assert all(d is not None and 0 <= d <= cap for d, cap in zip(delays, [1, 2, 4], strict=True))
    assert anyio.current_time() == pytest.approx(sum(d for d in delays if d is not None), abs=1e-6)
    await tm.aclose()


@pytest.mark.parametrize(
    "error",
    [
        lambda: httpx.ConnectError("connection refused"),
        lambda: httpx.ReadTimeout("read timed out"),
        lambda: httpx.RemoteProtocolError("server disconnected"),
    ],
    ids=["connect", "read-timeout", "reset"],
)
async def test_network_errors_are_transient(error: object) -> None:
    fake = FakeIAM()
    transport = FlakyTransport(fake.transport, failures=2, error=error)  # type: ignore[arg-type]
    tm = make_manager(fake, transport=transport)
    assert await tm.get_token() == fake.issued[0]
    assert transport.calls == 3
    await tm.aclose()


async def test_a_hung_request_times_out_and_is_retried() -> None:
    fake = FakeIAM()
    fake.fail_next(1, Fault(status=200, delay=1000))
    tm = make_manager(fake, retry=RetryPolicy(request_timeout=2, initial_delay=0.1))
    assert await tm.get_token() == fake.issued[0]
    assert 2 <= anyio.current_time() <= 2.2
    await tm.aclose()


async def test_retry_after_is_honoured() -> None:
    fake = FakeIAM()
    fake.fail_next(1, status=429, headers={"Retry-After": "7"}, error_code="BXNIM0436E")
    tm = make_manager(fake)
    await tm.get_token()
    assert anyio.current_time() == pytest.approx(7, abs=1e-6)
    assert fake.requests == 2
    await tm.aclose()


async def test_foreground_caller_gives_up_after_the_timeout() -> None:
    fake = FakeIAM()
    fake.down = True
    tm = make_manager(fake, retry=RetryPolicy(timeout=10, initial_delay=0.5, max_delay=4))
    with pytest.raises(IAMUnavailableError) as info:
        await tm.get_token()
    assert anyio.current_time() <= 10
    assert isinstance(info.value.__cause__, TransientIAMError)
    assert "503" in str(info.value)
    assert fake.requests >= 2
    await tm.aclose()


async def test_retry_after_beyond_the_callers_timeout_fails_fast() -> None:
    fake = FakeIAM()
    fake.fail_next(1, status=503, headers={"Retry-After": "120"})
    tm = make_manager(fake, retry=RetryPolicy(timeout=10))
    with pytest.raises(IAMUnavailableError):
        await tm.get_token()
    assert anyio.current_time() == 0
    assert fake.requests == 1
    await tm.aclose()


async def test_refused_key_fails_at_once_and_is_not_resent_by_new_callers() -> None:
    fake = FakeIAM(api_keys=["the-right-key"])
    tm = make_manager(fake, api_key="a-wrong-key", retry=RetryPolicy(initial_delay=1, max_delay=60))
    errors: list[InvalidCredentialsError] = []

    async def caller() -> None:
        try:
            await tm.get_token()
        except InvalidCredentialsError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(100):
            tg.start_soon(caller)
    assert len(errors) == 100
    assert fake.requests == 1
    assert anyio.current_time() == 0
    first = errors[0]
    assert (first.status_code, first.error_code) == (400, "BXNIM0415E")
    assert first.request_id is not None
    assert first.request_id.startswith("fake-")

    # Within the cooldown: the same error, no new request.
    await anyio.sleep(0.5)
    with pytest.raises(InvalidCredentialsError):
        await tm.get_token()
    assert fake.requests == 1
    # After it: one new request, and a longer cooldown.
    await anyio.sleep(0.6)
    with pytest.raises(InvalidCredentialsError):
        await tm.get_token()
    assert fake.requests == 2
    await anyio.sleep(1.5)
    with pytest.raises(InvalidCredentialsError):
        await tm.get_token()
    assert fake.requests == 2
    await tm.aclose()


async def test_wrong_endpoint_is_a_clear_non_retried_error() -> None:
    fake = FakeIAM()
    tm = make_manager(fake, url="http://127.0.0.1:1/wrong/path")
    with pytest.raises(InvalidResponseError, match="url"):
        await tm.get_token()
    assert fake.requests == 1
    await tm.aclose()


@pytest.mark.parametrize("seed", range(5))
async def test_valid_token_is_served_through_an_outage(seed: int) -> None:
    fake = FakeIAM(lifetime=100)
    recorder = Recorder()
    async with make_manager(fake, refresh=NO_JITTER, hooks=[recorder], rng=random.Random(seed)) as tm:
        first = await tm.get_token()
        fake.down = True
        # Refresh is due at 80 and fails until 87; the token is usable until 90.
        _, longest, seen = await steady_callers(tm, duration=87)
        assert seen == [first]
        failures = [a for a in recorder.attempts if not a.ok]
        assert failures
        assert all(a.background for a in failures)
        fake.down = False
        _, more_longest, more_seen = await steady_callers(tm, duration=50)
    assert longest == more_longest == 0  # nobody waited, nobody got an error
    assert more_seen[0] in (first, fake.issued[1])
    assert more_seen[-1] == fake.issued[1]
    # Retries were spaced by backoff, not a storm.
    assert len(failures) <= 8


async def test_outage_after_expiry_is_bounded_by_backoff_not_by_callers() -> None:
    fake = FakeIAM(lifetime=100)
    async with make_manager(fake, refresh=NO_JITTER, rng=random.Random(3)) as tm:
        await tm.get_token()
        fake.down = True
        await anyio.sleep(95)  # refreshes failed in the background; the token is now stale
        start_requests = fake.requests
        errors = 0

        async def caller() -> None:
            nonlocal errors
            end = anyio.current_time() + 60
            while anyio.current_time() < end:
                try:
                    await tm.get_token()
                except IAMUnavailableError:
                    errors += 1
                await anyio.sleep(0.25)

        async with anyio.create_task_group() as tg:
            for _ in range(100):  # 24,000 calls in the minute
                tg.start_soon(caller)
        assert errors > 0
        assert fake.requests - start_requests <= 15


async def test_hook_that_raises_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    def broken(_: object) -> None:
        raise RuntimeError("hook bug")

    tm = make_manager(FakeIAM(), hooks=[broken])
    with caplog.at_level(logging.WARNING, logger="aioiam"):
        assert await tm.get_token()
    assert any("hook" in r.getMessage() for r in caplog.records)
    await tm.aclose()


async def test_custom_source_bug_reaches_callers_as_an_iam_error() -> None:
    class Broken:
        secrets = ()

        async def fetch(self, client: httpx.AsyncClient) -> object:
            raise ZeroDivisionError

    tm = TokenManager(source=Broken(), clock=anyio.current_time)  # type: ignore[arg-type]
    with pytest.raises(InvalidResponseError, match="token source failed: ZeroDivisionError"):
        await tm.get_token()
    await tm.aclose()


async def test_caller_deadline_before_the_requests_end_gives_unavailable_at_the_deadline() -> None:
    fake = FakeIAM(latency=8)
    tm = make_manager(fake, retry=RetryPolicy(timeout=3, request_timeout=10))

    async def first_caller() -> None:
        with pytest.raises(IAMUnavailableError):  # gives up at its own deadline, t = 3
            await tm.get_token()

    async with tm, anyio.create_task_group() as tg:
        tg.start_soon(first_caller)  # starts the request, which takes 8 s
        await anyio.sleep(1)
        start = anyio.current_time()
        with pytest.raises(IAMUnavailableError, match="no token from IAM within 3s"):
            await tm.get_token()
        assert anyio.current_time() - start == pytest.approx(3)
        assert fake.requests == 1
        tg.cancel_scope.cancel()


async def test_a_callers_deadline_never_cuts_the_shared_request() -> None:
    """On asyncio and trio alike, callers give up at their own ``retry.timeout`` while the one
    request goes on to ``request_timeout``; its token then serves the next caller, with no new
    request and no failure recorded.

    Why the request is not cut at the deadline of the caller who started it: it is shared, so one
    impatient caller must not fail it for the others, nor make IAM a request per caller with
    staggered deadlines, nor count IAM's slowness as a failure with backoff.
    """
    fake = FakeIAM(latency=8)
    tm = make_manager(fake, retry=RetryPolicy(timeout=3, request_timeout=10))
    waits: list[float] = []

    async def caller(delay: float) -> None:
        await anyio.sleep(delay)
        start = anyio.current_time()
        with pytest.raises(IAMUnavailableError, match=r"^no token from IAM within 3s$"):
            await tm.get_token()
        waits.append(anyio.current_time() - start)

    async with anyio.create_task_group() as tg:
        tg.start_soon(caller, 0)
        tg.start_soon(caller, 1)
    assert waits == [pytest.approx(3, abs=0.01), pytest.approx(3, abs=0.01)]
    assert fake.requests == 1
    await anyio.sleep(8 - 4)  # the request answers at 8 s
    start = anyio.current_time()
    assert await tm.get_token() == fake.issued[0]
    assert anyio.current_time() == start
    assert fake.requests == 1
    await tm.aclose()


# ---------------------------------------------------------------------------------------------------
# Faults during a refresh: the token in hand is ridden out. (The same faults on a first token are
# in test_fault_matrix.py, over real sockets.)

#: 300 s tokens refreshed from half their life: with the jitter drawing 0.5 the refresh falls due
#: at 142.5 s, and the token goes stale at 290 s (a 10 s margin).
RIDE_LIFETIME = 300
RIDE_REFRESH = RefreshPolicy(refresh_fraction=0.5)
#: A request may take 150 s, so a hung refresh sent at 142.5 s is cut off after the token went stale.
RIDE_RETRY = RetryPolicy(initial_delay=10, max_delay=50, timeout=600, request_timeout=150)
RIDE_KEY = "SECRET-refresh-key-5c2e8a1f9b"
RIDE_CLIENT_SECRET = "SECRET-refresh-client-secret-77d1"

#: name: (fault, how many times in a row, whether it outlives the token so callers must wait)
RIDE_FAULTS: dict[str, tuple[Fault, int, bool]] = {
    "503-twice": (Fault.error(503), 2, False),
    "429-retry-after-20s": (Fault.error(429, retry_after=20), 1, False),
    "reset-twice": (Fault.reset(), 2, False),
    "502-html": (Fault.html(502), 1, False),
    "400-refused": (Fault.error(400), 1, False),
    "200-invalid-json": (Fault.invalid_json(), 1, False),
    "200-expires_in-0": (Fault.token(expires_in=0), 1, False),
    "hang-past-stale": (Fault.hang(), 1, True),
}


@pytest.mark.parametrize("fault_name", list(RIDE_FAULTS))
@pytest.mark.parametrize("managed", [True, False], ids=["async-with", "on-demand"])
async def test_faults_during_refresh_are_ridden_out(
    fault_name: str, managed: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Callers keep getting the usable token while its refresh fails, and never see an error."""
    fault, count, stalls = RIDE_FAULTS[fault_name]
    caplog.set_level(logging.DEBUG, logger="aioiam")

    def wall_clock() -> float:
        return 1_800_000_000.0 + anyio.current_time()

    fake = FakeIAM(
        api_keys=[RIDE_KEY],
        client_id="bx",
        client_secret=RIDE_CLIENT_SECRET,
        lifetime=RIDE_LIFETIME,
        wall_clock=wall_clock,
    )
    attempts: list[tuple[float, FetchAttempt]] = []
    tm = make_manager(
        fake,
        api_key=RIDE_KEY,
        client_id="bx",
        client_secret=RIDE_CLIENT_SECRET,
        refresh=RIDE_REFRESH,
        retry=RIDE_RETRY,
        rng=FixedRandom(0.5),
        wall_clock=wall_clock,
        hooks=[lambda attempt: attempts.append((anyio.current_time(), attempt))],
    )
    errors: list[IAMError] = []
    waits: list[float] = []
    seen: list[str] = []
    texts: list[str] = []
    async with contextlib.AsyncExitStack() as stack:
        if managed:
            await stack.enter_async_context(tm)
        else:
            stack.push_async_callback(tm.aclose)
        first = await tm.get_token_info()
        assert first.refresh_at == pytest.approx(142.5)
        fake.fail_next(count, fault)
        end = first.obtained_at + RIDE_LIFETIME * 1.5  # past the refresh, its retries and the new token

        async def caller() -> None:
            while anyio.current_time() < end:
                start = anyio.current_time()
                try:
                    token = await tm.get_token_info()
                except IAMError as exc:
                    errors.append(exc)
                else:
                    now = anyio.current_time()
                    assert now < token.stale_at, "a token was handed out at or after its stale_at"
                    assert fake.is_valid(token.access_token), "a token IAM no longer accepts was handed out"
                    waits.append(now - start)
                    seen.append(token.access_token)
                    texts.append(repr(token))
                await anyio.sleep(10)

        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(caller)
        texts += [repr(tm), str(tm), repr(IAMAuth(tm))]

    assert errors == []
    assert fake.max_in_flight == 1
    assert fake.pending_faults == 0
    assert [a.ok for _, a in attempts][: count + 2] == [True] + [False] * count + [True]
    assert seen[-1] != first.access_token
    if stalls:
        # The hung refresh outlived the token: callers waited for the retry, within the bound.
        assert 0 < max(waits) <= RIDE_RETRY.request_timeout + RIDE_RETRY.max_delay
    else:
        # Nobody waited for IAM (the emulator answers in no virtual time), in either mode.
        assert max(waits) == 0
    # Every retry came no earlier than the delay announced after the failure before it. Exact on
    # virtual time: the hook runs in the same step as the manager's own clock reading.
    for (failed_at, failed), (ended_at, retried) in itertools.pairwise(attempts):
        if not failed.ok:
            assert failed.next_attempt_in is not None
            assert ended_at - retried.duration >= failed_at + failed.next_attempt_in
    logs = [record.getMessage() for record in caplog.records]
    # A refresh failed while the token was usable (the hang fails only once it is stale).
    assert any("still serving the current token" in text for text in logs) is not stalls
    texts += logs + [repr(attempt) for _, attempt in attempts]
    for secret in [RIDE_KEY, RIDE_CLIENT_SECRET, *fake.secrets()]:
        assert not any(secret in text for text in texts), secret
