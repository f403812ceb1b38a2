"""Single flight, cancellation safety and lifecycle of TokenManager."""

from __future__ import annotations

import contextlib
import math

import anyio
import anyio.lowlevel
import httpx
import pytest

from aioiam import IAMUnavailableError, ManagerClosedError, RetryPolicy, TokenManager
from aioiam.testing import FakeIAM
from tests.helpers import KEY, FixedRandom, make_manager

pytestmark = pytest.mark.anyio


async def fan_in(tm: TokenManager, n: int) -> tuple[list[str], list[float]]:
    tokens: list[str] = []
    waits: list[float] = []

    async def caller() -> None:
        start = anyio.current_time()
        tokens.append(await tm.get_token())
        waits.append(anyio.current_time() - start)

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(caller)
    return tokens, waits


@pytest.mark.parametrize("managed", [True, False], ids=["async-with", "on-demand"])
async def test_thousand_concurrent_first_callers_share_one_request(managed: bool) -> None:
    fake = FakeIAM(latency=0.05)
    tm = make_manager(fake)
    if managed:
        async with tm:
            tokens, waits = await fan_in(tm, 1000)
    else:
        tokens, waits = await fan_in(tm, 1000)
        await tm.aclose()
    assert fake.requests == 1
    assert fake.max_in_flight == 1
    assert len(tokens) == 1000
    assert set(tokens) == {fake.issued[0]}
    # Released the moment the answer is parsed: nobody waits longer than IAM took (no polling).
    assert max(waits) == pytest.approx(0.05, abs=1e-6)


async def test_later_callers_get_the_cached_token_without_waiting() -> None:
    fake = FakeIAM(latency=0.05)
    async with make_manager(fake) as tm:
        await tm.get_token()
        start = anyio.current_time()
        for _ in range(100):
            await tm.get_token()
        assert anyio.current_time() == start
    assert fake.requests == 1


@pytest.mark.parametrize("managed", [True, False], ids=["async-with", "on-demand"])
async def test_cancelling_the_caller_who_started_the_fetch_does_not_cancel_it(managed: bool) -> None:
    fake = FakeIAM(latency=1.0)
    tm = make_manager(fake)
    results: list[str] = []

    async def others() -> None:
        results.append(await tm.get_token())

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            starter = anyio.CancelScope()

            async def first() -> None:
                with starter:
                    await tm.get_token()

            tg.start_soon(first)
            await anyio.sleep(0.1)  # the fetch is now in flight, started by `first`
            for _ in range(10):
                tg.start_soon(others)
            await anyio.sleep(0.1)
            starter.cancel()

    if managed:
        async with tm:
            await run()
            assert await tm.get_token() == fake.issued[0]
    else:
        await run()
        assert await tm.get_token() == fake.issued[0]
        await tm.aclose()
    assert results == [fake.issued[0]] * 10
    assert fake.requests == 1


async def test_in_async_with_mode_a_cancelled_waiter_returns_at_once() -> None:
    fake = FakeIAM(latency=5.0)
    async with make_manager(fake) as tm:
        with anyio.move_on_after(0.5):
            await tm.get_token()
        assert anyio.current_time() == pytest.approx(0.5)
        # The request went on without the cancelled caller.
        assert await tm.get_token() == fake.issued[0]
    assert fake.requests == 1


async def test_every_waiter_cancelled_leaves_the_manager_usable() -> None:
    fake = FakeIAM(latency=1.0)
    tm = make_manager(fake)
    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(tm.get_token)
        await anyio.sleep(0.2)
        tg.cancel_scope.cancel()
    assert await tm.get_token() == fake.issued[0]
    assert fake.requests == 1
    await tm.aclose()


async def test_get_token_after_close_raises_manager_closed() -> None:
    tm = make_manager()
    await tm.get_token()
    await tm.aclose()
    await tm.aclose()  # idempotent
    assert tm.closed
    with pytest.raises(ManagerClosedError):
        await tm.get_token()
    with pytest.raises(ManagerClosedError):
        await tm.get_token_info()


async def test_leaving_async_with_closes_the_manager() -> None:
    async with make_manager() as tm:
        await tm.get_token()
    with pytest.raises(ManagerClosedError):
        await tm.get_token()
    with pytest.raises(ManagerClosedError):
        async with tm:
            pass


async def test_closing_wakes_waiters_promptly_with_manager_closed() -> None:
    fake = FakeIAM(latency=30.0)
    errors: list[BaseException] = []
    async with make_manager(fake) as tm:

        async def waiter() -> None:
            try:
                await tm.get_token()
            except ManagerClosedError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(waiter)
            await anyio.sleep(1.0)
            await tm.aclose()
        assert anyio.current_time() == pytest.approx(1.0)
    assert len(errors) == 20


async def test_closing_an_on_demand_manager_wakes_waiters_promptly() -> None:
    fake = FakeIAM(latency=30.0)
    tm = make_manager(fake)
    errors: list[BaseException] = []

    async def waiter() -> None:
        try:
            await tm.get_token()
        except ManagerClosedError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)  # starts the request and runs it, shielded
        await anyio.sleep(0.5)
        for _ in range(5):
            tg.start_soon(waiter)
        await anyio.sleep(0.5)
        await tm.aclose()
        with anyio.fail_after(0.01):  # the five waiters are released at once, not after 30 s
            while len(errors) < 5:
                await anyio.lowlevel.checkpoint()
    assert len(errors) == 6  # the one running the request, shielded, gives up when the client closes


async def test_exception_in_the_body_propagates_unwrapped() -> None:
    with pytest.raises(KeyError, match="boom"):
        async with make_manager():
            raise KeyError("boom")


async def test_entering_twice_is_an_error() -> None:
    async with make_manager() as tm:
        with pytest.raises(RuntimeError, match="already"):
            async with tm:
                pass


async def test_aclose_inside_the_block_does_not_cancel_the_block() -> None:
    steps: list[str] = []
    async with make_manager() as tm:
        await tm.aclose()
        assert tm.closed
        assert anyio.current_effective_deadline() == math.inf  # -inf inside a cancelled scope
        start = anyio.current_time()
        await anyio.sleep(1)  # a cancelled block would be interrupted here
        steps.append(f"slept {anyio.current_time() - start:g}s")
        with pytest.raises(ManagerClosedError):
            await tm.get_token()
        steps.append("closed")
    assert steps == ["slept 1s", "closed"]


async def test_no_task_is_left_running_after_the_block() -> None:
    fake = FakeIAM(latency=0.01, lifetime=10)
    async with make_manager(fake) as tm:
        await tm.get_token()
    requests = fake.requests
    await anyio.sleep(100)  # ten lifetimes: a leftover refresher would have fetched
    assert fake.requests == requests


async def test_on_demand_manager_runs_nothing_in_the_background() -> None:
    fake = FakeIAM(lifetime=10)
    tm = make_manager(fake)
    await tm.get_token()
    await anyio.sleep(100)
    assert fake.requests == 1
    await tm.aclose()


class ClosingTransport(httpx.AsyncBaseTransport):
    """Answers through ``inner`` and counts how often the client that owns it closed it."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.closes = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        self.closes += 1


@pytest.mark.parametrize("managed", [True, False], ids=["async-with", "on-demand"])
async def test_the_client_the_manager_made_is_closed_and_a_users_client_is_not(managed: bool) -> None:
    fake = FakeIAM()
    made = ClosingTransport(fake.transport)  # the manager makes its client around this
    users = ClosingTransport(fake.transport)
    own = httpx.AsyncClient(transport=users)
    for tm in (make_manager(fake, transport=made), make_manager(fake, http_client=own)):
        if managed:
            async with tm:
                await tm.get_token()
        else:
            await tm.get_token()
            await tm.aclose()
    assert made.closes == 1
    assert users.closes == 0
    assert not own.is_closed
    await own.aclose()
    assert users.closes == 1  # closing a client does reach its transport: the count above means something


async def test_user_client_auth_is_not_applied_to_token_requests() -> None:
    fake = FakeIAM()
    own = httpx.AsyncClient(transport=fake.transport, auth=("user", "pass"))
    tm = make_manager(fake, http_client=own)
    assert await tm.get_token() == fake.issued[0]
    await own.aclose()


async def test_invalidate_drops_only_the_current_token() -> None:
    fake = FakeIAM()
    tm = make_manager(fake)
    first = await tm.get_token()
    assert not tm.invalidate("some-older-token")
    assert tm.token is not None
    assert tm.invalidate(first)
    assert tm.token is None
    second = await tm.get_token()
    assert second != first
    assert not tm.invalidate(first)
    assert fake.requests == 2
    await tm.aclose()


async def test_token_info_carries_the_schedule_and_claims() -> None:
    fake = FakeIAM(lifetime=3600)
    tm = make_manager(fake, refresh=None)
    token = await tm.get_token_info()
    assert token.iam_id == "IBMid-fake0001"
    assert token.account_id == "fakeaccount0001"
    assert token.obtained_at <= token.refresh_at < token.stale_at < token.expires_at
    assert tm.request_count == 1
    await tm.aclose()


def test_constructor_rejects_conflicting_arguments() -> None:
    fake = FakeIAM()
    client = httpx.AsyncClient()
    with pytest.raises(ValueError, match="either http_client or transport"):
        TokenManager(KEY, http_client=client, transport=fake.transport)
    with pytest.raises(TypeError, match="AsyncClient"):
        TokenManager(KEY, http_client=httpx.Client())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="api_key is missing"):
        TokenManager()
    with pytest.raises(TypeError, match="TokenSource"):
        TokenManager(source=object())  # type: ignore[arg-type]


def test_source_and_api_key_together_are_an_error() -> None:
    from aioiam import ApiKeySource

    with pytest.raises(ValueError, match="either source or api_key"):
        TokenManager(KEY, source=ApiKeySource(KEY))


async def test_on_demand_token_info_is_served_from_cache() -> None:
    fake = FakeIAM()
    tm = make_manager(fake)
    first = await tm.get_token_info()
    assert await tm.get_token_info() is first
    assert fake.requests == 1
    await tm.aclose()


@pytest.mark.parametrize("managed", [True, False], ids=["async-with", "on-demand"])
async def test_a_caller_who_joined_a_failing_flight_keeps_the_deadline_of_its_own_call(managed: bool) -> None:
    """The cold crowd waits for the flight without a decision step, and its deadline still counts
    from its own call: IAM answers 503 after 1 s each time, retried 0.1 s later, so a caller
    arriving at 0.5 s with a 3 s timeout gives up at 3.5 s (the third request would end after it)."""
    fake = FakeIAM(latency=1.0)
    fake.fail_next(10, status=503)
    tm = make_manager(
        fake,
        retry=RetryPolicy(timeout=3.0, request_timeout=2.0, initial_delay=0.1, multiplier=1.0),
        rng=FixedRandom(1.0),
    )
    gave_up: dict[str, float] = {}

    async def caller(name: str, arrive: float) -> None:
        await anyio.sleep(arrive)
        with pytest.raises(IAMUnavailableError, match=r"within 3s; last failure: .*503"):
            await tm.get_token()
        gave_up[name] = anyio.current_time() - start

    start = anyio.current_time()
    async with contextlib.AsyncExitStack() as stack:
        if managed:
            await stack.enter_async_context(tm)
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller, "starter", 0.0)
            tg.start_soon(caller, "joiner", 0.5)
        await tm.aclose()
    assert gave_up == {"starter": pytest.approx(3.0), "joiner": pytest.approx(3.5)}
    # Sent at 0, 1.1, 2.2 and 3.3 (the last one cut by the close).
    assert fake.requests == 4
