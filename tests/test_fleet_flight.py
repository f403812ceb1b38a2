"""Fleet mode's flight on virtual time, several managers sharing an in-memory store (a dict plays
Redis): adopt, contend, wait, take over a dead holder's lock, fall back when the store fails."""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any

import anyio
import pytest

from aioiam import IAMUnavailableError, RetryPolicy, TokenManager
from aioiam._decisions import NO_FAILURES
from aioiam._sealing import SealKeys
from aioiam.testing import FakeIAM, Fault
from tests.fleet_helpers import MemoryCache, MemoryStore
from tests.helpers import KEY, Recorder, make_manager

pytestmark = pytest.mark.anyio

LOCK_TTL = 5.0 + 2 * 0.5 + 1.0  # lock_ttl(request_timeout=5, store timeout=0.5)


def fleet(fake: FakeIAM, store: MemoryStore, count: int, **kwargs: Any) -> list[TokenManager]:
    kwargs.setdefault("retry", RetryPolicy(request_timeout=5.0, timeout=15.0))
    return [make_manager(fake, cache=MemoryCache(store), **kwargs) for _ in range(count)]


async def close_all(managers: list[TokenManager]) -> None:
    for manager in managers:
        await manager.aclose()


async def test_a_second_manager_adopts_the_first_ones_token() -> None:
    fake, store = FakeIAM(lifetime=100), MemoryStore()
    a, b = fleet(fake, store, 2)
    try:
        token = await a.get_token()
        assert await b.get_token() == token
        assert (fake.requests, a.request_count, b.request_count) == (1, 1, 0)
    finally:
        await close_all([a, b])


async def test_a_cold_fleet_makes_one_request_and_everyone_gets_its_token() -> None:
    fake, store = FakeIAM(lifetime=100, latency=1.0), MemoryStore()
    managers = fleet(fake, store, 6)
    got: list[str] = []

    async def call(manager: TokenManager) -> None:
        got.append(await manager.get_token())

    try:
        async with anyio.create_task_group() as tg:
            for manager in managers * 20:
                tg.start_soon(call, manager)
        assert fake.requests == 1
        assert len(set(got)) == 1
        assert len(got) == 120
    finally:
        await close_all(managers)


def keys_of(manager: TokenManager) -> SealKeys:
    return manager._settings.cache.keys  # type: ignore[union-attr]


async def test_a_cold_fleet_costs_the_fetcher_two_store_calls_and_each_waiter_two() -> None:
    """No read before the lock: the fetcher contends and publishes; each waiter contends, and its
    wait brings the token itself (no read after waking). IAM answers within the poll interval,
    so no waiter looks at the lock again meanwhile."""
    fake, store = FakeIAM(lifetime=100, latency=0.1), MemoryStore()
    managers = fleet(fake, store, 4)
    try:
        async with anyio.create_task_group() as tg:
            for manager in managers:
                tg.start_soon(manager.get_token)
        assert fake.requests == 1
        assert sorted(store.flights) == [["acquire", "publish"]] + [["acquire", "wait"]] * 3
    finally:
        await close_all(managers)


async def test_a_fresh_entry_is_adopted_in_one_store_call_and_a_due_one_refreshed_in_three() -> None:
    fake, store = FakeIAM(lifetime=100), MemoryStore()
    a, b, c = fleet(fake, store, 3)
    try:
        token = await a.get_token()
        assert store.flights == [["acquire", "publish"]]  # nothing stored: the lock at once
        assert await b.get_token() == token
        assert store.flights[-1] == ["acquire"]
        await anyio.sleep(85)  # due (refreshed at 75-80 s), not stale (90 s)
        assert await c.get_token() != token
        assert store.flights[-1] == ["acquire", "acquire", "publish"]  # judged, then contended with it
        assert fake.requests == 2
    finally:
        await close_all([a, b, c])


async def test_a_waiter_that_comes_after_the_announcement_takes_it_at_once() -> None:
    fake, store = FakeIAM(lifetime=100), MemoryStore()
    a, b = fleet(fake, store, 2)
    keys = keys_of(a)
    try:
        token = await a.get_token()
        announced = store.get(keys.entry)
        assert isinstance(announced, bytes)
        # Seen from b: its contending found the lock held by "holder-h", and by the time it
        # waits, the holder has announced its entry (and b does not read the entry again).
        del store.values[keys.entry]
        store.put(keys.lock, "holder-h", LOCK_TTL)
        store.announce(f"{keys.done}:holder-h", announced)
        started = anyio.current_time()
        assert await b.get_token() == token
        assert anyio.current_time() == started  # no wait at all
        assert store.flights[-1] == ["acquire", "wait"]
        assert fake.requests == 1
    finally:
        await close_all([a, b])


async def test_an_old_token_announced_again_is_judged_by_its_true_age() -> None:
    """Whoever can write the store can push an old sealed entry onto a holder's list: it is judged
    with the clock of the read that named the holder, so by its true age (stale here), and the
    waiter does not spin on it."""
    fake, store = FakeIAM(lifetime=100), MemoryStore()
    a, b = fleet(fake, store, 2)
    keys = keys_of(a)
    try:
        old = await a.get_token()
        replayed = store.get(keys.entry)
        assert isinstance(replayed, bytes)
        await anyio.sleep(200)  # long stale, and gone from the store
        assert store.get(keys.entry) is None
        store.put(keys.lock, "holder-h", LOCK_TTL)
        store.announce(f"{keys.done}:holder-h", replayed)
        new = await b.get_token()
        assert new != old
        assert fake.is_valid(new)
        assert fake.requests == 2  # b asked, once the planted lock lapsed
        flight = store.flights[-1]
        assert flight.count("wait") == 1  # the holder's announcement is read once
        assert flight.count("acquire") <= LOCK_TTL / 0.25 + 3  # then the lock, every poll interval
    finally:
        await close_all([a, b])


async def test_a_token_announced_is_timed_from_the_read_that_named_its_holder() -> None:
    """The waiter judges the announced token with the clocks of its read that found the lock held
    (no read after waking): on virtual time, where a read takes no time, exactly as the fetcher
    times it, and not older by the 0.2 s the fetcher waited for IAM."""
    fake, store = FakeIAM(lifetime=100, latency=0.2), MemoryStore()
    a, b = fleet(fake, store, 2)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.get_token)
            await anyio.sleep(0.05)  # a holds the lock and waits for IAM
            tg.start_soon(b.get_token)
        mine, adopted = await a.get_token_info(), await b.get_token_info()
        assert adopted.access_token == mine.access_token
        assert store.flights[-1] == ["acquire", "wait"]
        assert mine.obtained_at == pytest.approx(0.0, abs=1e-6)
        assert adopted.obtained_at == pytest.approx(0.0, abs=1e-6)
    finally:
        await close_all([a, b])


async def test_one_refresh_per_lifetime_across_a_running_fleet() -> None:
    fake, store = FakeIAM(lifetime=100), MemoryStore()
    managers = fleet(fake, store, 4)
    async with managers[0], managers[1], managers[2], managers[3]:
        for manager in managers:
            await manager.get_token()
        await anyio.sleep(330)  # refreshes at 75-80 s of each lifetime: four of them
        tokens = {await manager.get_token() for manager in managers}
    assert fake.requests == 5
    assert len(tokens) == 1
    assert sum(m.request_count for m in managers) == 5


async def test_an_unreadable_entry_is_ignored_and_replaced() -> None:
    fake, store = FakeIAM(lifetime=100), MemoryStore()
    (a,) = fleet(fake, store, 1)
    entry = a._settings.cache.keys.entry  # type: ignore[union-attr]
    store.put(entry, b"aioiam1:garbage-that-is-no-token")
    try:
        token = await a.get_token()
        assert fake.requests == 1
        assert fake.is_valid(token)
        assert store.get(entry) != b"aioiam1:garbage-that-is-no-token"
        (b,) = fleet(fake, store, 1)
        assert await b.get_token() == token  # the replacement is readable
        await b.aclose()
    finally:
        await a.aclose()


async def test_a_dead_holders_lock_blocks_the_fleet_no_longer_than_its_expiry() -> None:
    fake, store = FakeIAM(lifetime=100), MemoryStore()
    (a,) = fleet(fake, store, 1)
    store.put(a._settings.cache.keys.lock, "a-process-that-died", LOCK_TTL)  # type: ignore[union-attr]
    try:
        started = anyio.current_time()
        await a.get_token()
        waited = anyio.current_time() - started
        assert fake.requests == 1
        assert LOCK_TTL - 0.5 <= waited <= LOCK_TTL + 1.0
    finally:
        await a.aclose()


async def test_a_lock_that_never_lapses_is_waited_out_for_the_locks_time_then_the_waiter_asks_alone() -> None:
    """A store that keeps a lock past its expiry (or someone who keeps re-taking it): the waiter
    looks again every poll interval, and once a lock's whole time has passed, asks IAM alone."""
    fake, store = FakeIAM(lifetime=100), MemoryStore()
    (a,) = fleet(fake, store, 1)
    keys = keys_of(a)
    store.put(keys.lock, "stuck-holder", math.inf)
    try:
        started = anyio.current_time()
        token = await a.get_token()
        assert LOCK_TTL <= anyio.current_time() - started <= LOCK_TTL + 1.0
        assert fake.requests == 1
        assert store.get(keys.lock) == "stuck-holder"  # not ours: left alone
        assert store.get(keys.entry) is not None  # stored for the fleet all the same
        flight = store.flights[-1]
        assert flight[-1] == "publish"
        assert flight.count("wait") >= LOCK_TTL / 0.25 - 2  # one wait per poll interval
        (b,) = fleet(fake, store, 1)
        assert await b.get_token() == token
        await b.aclose()
    finally:
        await a.aclose()


async def test_a_released_lock_wakes_the_waiters_and_one_of_them_asks() -> None:
    fake, store = FakeIAM(lifetime=100), MemoryStore()
    managers = fleet(fake, store, 3)
    lock = managers[0]._settings.cache.keys.lock  # type: ignore[union-attr]
    done = managers[0]._settings.cache.keys.done  # type: ignore[union-attr]
    store.put(lock, "another-holder", LOCK_TTL)

    async def holder_gives_up() -> None:
        await anyio.sleep(1.0)
        del store.values[lock]
        store.announce(f"{done}:another-holder", b"")

    try:
        started = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder_gives_up)
            for manager in managers:
                tg.start_soon(manager.get_token)
        assert fake.requests == 1
        assert anyio.current_time() - started < 2.0
    finally:
        await close_all(managers)


async def test_a_refused_token_is_not_adopted_again() -> None:
    fake, store = FakeIAM(lifetime=100), MemoryStore()
    a, b = fleet(fake, store, 2)
    try:
        old = await a.get_token()
        assert await b.get_token() == old
        assert a.invalidate(old)
        new = await a.get_token()
        assert new != old
        assert fake.requests == 2
        assert b.invalidate(old)
        assert await b.get_token() == new  # the fleet's new token: no request
        assert fake.requests == 2
    finally:
        await close_all([a, b])


async def test_a_store_that_fails_is_bypassed_logged_once_and_used_again_when_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="aioiam")
    fake, store = FakeIAM(lifetime=100), MemoryStore()
    recorder = Recorder()
    a, b = fleet(fake, store, 2, hooks=[recorder])
    store.down = True
    try:
        for manager in (a, b) * 3:
            token = await manager.get_token()
            assert manager.invalidate(token)
            await anyio.sleep(5)  # each manager drops every 10 s: the cooldown between drops (see invalidate)
        assert fake.requests == 6  # each asked IAM itself
        assert all(attempt.ok for attempt in recorder.attempts)
        assert a._record == NO_FAILURES
        assert b._record == NO_FAILURES
        failed = [r for r in caplog.records if "failed" in r.getMessage()]
        assert len(failed) == 2  # one per manager, not one per flight
        store.down = False
        await anyio.sleep(5.0)  # the recheck time
        fresh = await a.get_token()
        assert await b.get_token() == fresh
        assert fake.requests == 7
        assert len([r for r in caplog.records if "shared again" in r.getMessage()]) == 2  # one per manager
    finally:
        await close_all([a, b])


async def test_a_slow_store_bounds_the_callers_wait() -> None:
    fake, store = FakeIAM(lifetime=100, latency=0.1), MemoryStore()
    store.latency = 30.0  # far past the store's 0.5 s timeout
    (a,) = fleet(fake, store, 1)
    try:
        started = anyio.current_time()
        await a.get_token()
        assert anyio.current_time() - started <= 0.5 + 0.1 + 0.05
        assert fake.requests == 1
    finally:
        await a.aclose()


async def test_an_iam_failure_releases_the_lock_and_is_the_holders_failure() -> None:
    fake, store = FakeIAM(lifetime=100), MemoryStore()
    fake.fail_next(1, Fault.error(400))
    (a,) = fleet(fake, store, 1)
    lock = a._settings.cache.keys.lock  # type: ignore[union-attr]
    try:
        with pytest.raises(Exception, match="API key"):
            await a.get_token()
        assert store.get(lock) is None  # released at once, not left to lapse
        assert a._record.failures == 1
    finally:
        await a.aclose()


async def test_closing_a_manager_mid_fetch_releases_its_lock() -> None:
    fake, store = FakeIAM(lifetime=100, latency=3.0), MemoryStore()
    (a,) = fleet(fake, store, 1)
    lock = a._settings.cache.keys.lock  # type: ignore[union-attr]
    async with anyio.create_task_group() as tg:

        async def call() -> None:
            with pytest.raises(Exception, match="closed"):
                await a.get_token()

        tg.start_soon(call)
        await anyio.sleep(1.0)
        assert store.get(lock) is not None
        await a.aclose()
    assert store.get(lock) is None


async def test_an_entry_from_a_store_with_another_clock_is_timed_by_the_store_clock() -> None:
    """The store's clock is what times entries: a host clock far off changes nothing."""
    fake, store = FakeIAM(lifetime=100), MemoryStore()
    a, b = fleet(fake, store, 2)
    try:
        token = await a.get_token()
        await anyio.sleep(50)
        info = await b.get_token_info()
        assert info.access_token == token
        assert info.obtained_at == pytest.approx(anyio.current_time() - 50, abs=0.01)
    finally:
        await close_all([a, b])


async def test_without_a_cache_nothing_changes() -> None:
    fake = FakeIAM(lifetime=100)
    a, b = make_manager(fake), make_manager(fake, api_key=KEY)
    try:
        await a.get_token()
        await b.get_token()
        assert fake.requests == 2
    finally:
        await close_all([a, b])


# ------------------------------------------------------------------ a flight's Redis client


class _Client:
    """Stands in for a coredis client: what entering and leaving it did, and when."""

    def __init__(self, events: list[str], *, fail_open: bool = False, fail_close: bool = False) -> None:
        self.events = events
        self.fail_open = fail_open
        self.fail_close = fail_close

    async def __aenter__(self) -> _Client:
        if self.fail_open:
            raise ConnectionError("refused")
        self.events.append("opened")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.events.append("closing")
        await anyio.sleep(1)
        if self.fail_close:
            raise RuntimeError("the socket was gone already")
        self.events.append("closed")


async def test_a_flights_client_is_closed_after_the_flight_has_left_not_before() -> None:
    from aioiam._redis import _closed_behind

    events: list[str] = []
    async with _closed_behind(lambda: _Client(events)):  # type: ignore[arg-type,return-value]
        events.append("flight")
    events.append("left")  # at once: the close is not waited for
    assert events == ["opened", "flight", "left"]
    await anyio.sleep(2)
    assert events == ["opened", "flight", "left", "closing", "closed"]


async def test_a_client_that_fails_to_open_fails_the_flight_and_one_that_fails_to_close_does_not() -> None:
    from aioiam._redis import _closed_behind

    events: list[str] = []
    with pytest.raises(ConnectionError, match="refused"):
        async with _closed_behind(lambda: _Client(events, fail_open=True)):  # type: ignore[arg-type,return-value]
            events.append("flight")
    async with _closed_behind(lambda: _Client(events, fail_close=True)):  # type: ignore[arg-type,return-value]
        events.append("flight")
    await anyio.sleep(2)  # the failed close is dropped (on trio, a raising system task would end the run)
    assert events == ["opened", "flight", "closing"]


async def test_a_flight_cancelled_while_its_client_opens_still_closes_it() -> None:
    from aioiam._redis import _closed_behind

    events: list[str] = []

    class SlowToOpen(_Client):
        async def __aenter__(self) -> _Client:
            await anyio.sleep(1)
            return await super().__aenter__()

    with anyio.move_on_after(0.5):
        async with _closed_behind(lambda: SlowToOpen(events)):  # type: ignore[arg-type,return-value]
            events.append("flight")
    await anyio.sleep(3)
    assert events == ["opened", "closing", "closed"]


@pytest.mark.parametrize("managed", [True, False], ids=["async-with", "on-demand"])
async def test_the_cold_crowd_of_a_flight_longer_than_a_callers_wait_keeps_each_callers_own_deadline(
    managed: bool,
) -> None:
    """A flight through the cache may outlast a caller's whole wait (here it waits out a stuck
    lock for 7 s, with a 3 s timeout): the cold crowd waits for it with one timer for all, and
    each caller still gives up at its own deadline, counted from its own call; the flight goes
    on, and the token it gets serves the next caller at once."""
    fake, store = FakeIAM(lifetime=100), MemoryStore()
    (a,) = fleet(fake, store, 1, retry=RetryPolicy(request_timeout=5.0, timeout=3.0))
    store.put(keys_of(a).lock, "stuck-holder", math.inf)
    gave_up: dict[str, float] = {}

    async def caller(name: str, arrive: float) -> None:
        await anyio.sleep(arrive)
        with pytest.raises(IAMUnavailableError, match="within 3s"):
            await a.get_token()
        gave_up[name] = anyio.current_time() - start

    start = anyio.current_time()
    async with contextlib.AsyncExitStack() as stack:
        if managed:
            await stack.enter_async_context(a)
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller, "starter", 0.0)
            tg.start_soon(caller, "joiner", 0.5)
            tg.start_soon(caller, "late joiner", 2.9)
        assert gave_up == {
            "starter": pytest.approx(3.0),
            "joiner": pytest.approx(3.5),
            "late joiner": pytest.approx(5.9),
        }
        assert fake.requests == 0  # still waiting out the lock
        await anyio.sleep(LOCK_TTL + 0.5 - (anyio.current_time() - start))
        assert fake.requests == 1  # then the flight asked IAM alone
        started = anyio.current_time()
        assert fake.is_valid(await a.get_token())
        assert anyio.current_time() == started
        await a.aclose()
