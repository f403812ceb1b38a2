"""The relay latch a flight's waiters wait on under asyncio: everyone wakes, whoever is cancelled."""

from __future__ import annotations

import asyncio

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aioiam._latch import RelayLatch, new_latch


async def _waiters(latch: RelayLatch, n: int) -> tuple[list[asyncio.Task[None]], list[int]]:
    woken: list[int] = []

    async def waiter(i: int) -> None:
        await latch.wait()
        woken.append(i)

    tasks = [asyncio.ensure_future(waiter(i)) for i in range(n)]
    await asyncio.sleep(0)  # all of them are waiting now
    return tasks, woken


def test_every_waiter_wakes_in_order_even_with_more_waiters_than_the_width() -> None:
    async def main() -> None:
        latch = RelayLatch(width=3)
        tasks, woken = await _waiters(latch, 100)
        assert woken == []
        latch.set()
        await asyncio.gather(*tasks)
        assert woken == list(range(100))
        assert latch.is_set()

    asyncio.run(main())


def test_waiting_on_a_set_latch_returns_at_once() -> None:
    async def main() -> None:
        latch = RelayLatch()
        latch.set()
        latch.set()  # idempotent
        await latch.wait()

    asyncio.run(main())


def test_a_waiter_cancelled_before_its_turn_is_skipped() -> None:
    async def main() -> None:
        latch = RelayLatch(width=1)
        tasks, woken = await _waiters(latch, 5)
        tasks[0].cancel()
        tasks[3].cancel()
        await asyncio.sleep(0)
        latch.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert woken == [1, 2, 4]

    asyncio.run(main())


def test_a_waiter_cancelled_after_being_woken_passes_its_turn_on() -> None:
    async def main() -> None:
        latch = RelayLatch(width=1)
        tasks, woken = await _waiters(latch, 4)
        latch.set()  # wakes waiter 0 only: the relay is one wide
        tasks[0].cancel()  # before it has run
        await asyncio.gather(*tasks, return_exceptions=True)
        assert tasks[0].cancelled()
        assert woken == [1, 2, 3]

    asyncio.run(main())


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=40),
    width=st.integers(min_value=1, max_value=5),
    cancel_before=st.sets(st.integers(min_value=0, max_value=39)),
    cancel_after=st.sets(st.integers(min_value=0, max_value=39)),
)
def test_whoever_is_cancelled_when_every_other_waiter_wakes(
    n: int, width: int, cancel_before: set[int], cancel_after: set[int]
) -> None:
    async def main() -> None:
        latch = RelayLatch(width=width)
        tasks, woken = await _waiters(latch, n)
        for i in cancel_before:
            if i < n:
                tasks[i].cancel()
        await asyncio.sleep(0)
        latch.set()
        for i in cancel_after:  # some of these were already woken, some not yet
            if i < n:
                tasks[i].cancel()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
        survivors = [i for i in range(n) if not tasks[i].cancelled()]
        assert sorted(woken) == survivors
        assert all(i not in woken for i in cancel_before if i < n)

    asyncio.run(main())


@pytest.mark.anyio
async def test_new_latch_is_a_relay_on_asyncio_and_an_anyio_event_elsewhere(anyio_backend: object) -> None:
    latch = new_latch()
    on_asyncio = asyncio._get_running_loop() is not None
    assert isinstance(latch, RelayLatch) == on_asyncio
    if not on_asyncio:
        assert isinstance(latch, anyio.Event)
    async with anyio.create_task_group() as tg:
        tg.start_soon(latch.wait)
        await anyio.sleep(0.1)
        latch.set()
    assert latch.is_set()
