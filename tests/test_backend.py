"""The per-loop parts: one-pass release of a flight's waiters, same-loop checks, detached tasks."""

from __future__ import annotations

import asyncio
import gc

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aioiam._backend import AsyncioLatch, detect

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("n", [1, 100, 5_000])
async def test_every_waiter_is_released_within_two_passes_at_any_n(n: int) -> None:
    """However many wait, set() releases them all in a fixed number of event-loop passes.

    Released waiters keep working (one checkpoint per step, as a crawler worker does): a latch that
    released a few per pass would make them share every pass with those still waiting.
    """
    latch = detect().new_latch()
    released = 0
    stop = False

    async def worker() -> None:
        nonlocal released
        await latch.wait()
        released += 1
        while not stop:
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(worker)
        await anyio.sleep(0.01)  # every worker is waiting now
        assert released == 0
        latch.set()
        for _ in range(2):  # trio may run the setter before the waiters within one batch
            await anyio.lowlevel.checkpoint()
        assert released == n
        stop = True
    assert latch.is_set()


async def test_waiting_on_a_set_latch_is_a_checkpoint_and_returns() -> None:
    latch = detect().new_latch()
    latch.set()
    latch.set()  # idempotent
    with anyio.CancelScope() as scope:
        scope.cancel()
        await latch.wait()  # a checkpoint: the cancellation is delivered here
    assert scope.cancelled_caught


async def test_same_loop_is_true_here_and_false_on_another_loop(anyio_backend_name: str) -> None:
    backend = detect()
    assert backend.name == anyio_backend_name
    assert backend.same_loop()
    assert repr(backend) == f"<Backend {anyio_backend_name}>"
    other_name = "trio" if anyio_backend_name == "asyncio" else "asyncio"
    seen: list[bool] = []

    async def elsewhere() -> None:
        seen.append(backend.same_loop())
        seen.append(detect().same_loop())

    await anyio.to_thread.run_sync(lambda: anyio.run(elsewhere, backend=other_name))
    assert seen == [False, True]


async def test_spawned_task_outlives_a_cancelled_caller_and_stops_with_its_scope() -> None:
    backend = detect()
    scope = anyio.CancelScope()
    started, finished = anyio.Event(), anyio.Event()
    steps = 0

    async def work() -> None:
        nonlocal steps
        try:
            with scope:
                started.set()
                while True:
                    steps += 1
                    await anyio.sleep(1)
        finally:
            finished.set()

    with anyio.CancelScope() as caller:
        backend.spawn(work, name="test work")
        caller.cancel()
        await anyio.lowlevel.checkpoint()  # the caller is cancelled; the spawned task is not its child
    await started.wait()
    await anyio.sleep(2.5)
    assert not finished.is_set()
    assert steps >= 2
    scope.cancel()
    await finished.wait()


def test_detect_outside_a_loop_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="running asyncio or trio event loop"):
        detect()


def test_detect_names_an_unsupported_library(monkeypatch: pytest.MonkeyPatch) -> None:
    import sniffio

    async def main() -> None:
        monkeypatch.setattr(sniffio, "current_async_library", lambda: "curio")
        with pytest.raises(RuntimeError, match="not on curio"):
            detect()

    asyncio.run(main())


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=40),
    cancel_before=st.sets(st.integers(min_value=0, max_value=39)),
    cancel_after=st.sets(st.integers(min_value=0, max_value=39)),
)
def test_asyncio_latch_wakes_everyone_not_cancelled_whoever_is_cancelled_when(
    n: int, cancel_before: set[int], cancel_after: set[int]
) -> None:
    async def main() -> None:
        latch = AsyncioLatch(asyncio.get_running_loop())
        woken: list[int] = []

        async def waiter(i: int) -> None:
            await latch.wait()
            woken.append(i)

        tasks = [asyncio.ensure_future(waiter(i)) for i in range(n)]
        await asyncio.sleep(0)  # all of them are waiting now
        for i in cancel_before & set(range(n)):
            tasks[i].cancel()
        await asyncio.sleep(0)
        latch.set()
        for i in cancel_after & set(range(n)):  # woken but not yet run: cancelled all the same
            tasks[i].cancel()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
        survivors = [i for i in range(n) if not tasks[i].cancelled()]
        assert woken == survivors
        assert not set(woken) & cancel_before

    asyncio.run(main())


@pytest.mark.parametrize("enabled", [True, False], ids=["collector-on", "collector-off"])
def test_releasing_a_crowd_collects_no_garbage_meanwhile_and_leaves_the_collector_as_it_was(enabled: bool) -> None:
    """A crowd's release makes one asyncio Handle per waiter at once; no collection runs while
    they are made (their promotions would set off full collections over every waiting task), and
    afterwards the collector is on exactly if it was on before. A small release leaves it alone."""
    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for n, paused in ((5_000, True), (10, False)):
            latch = AsyncioLatch(loop)
            waiters = [loop.create_task(_wait(latch)) for _ in range(n)]
            await asyncio.sleep(0)
            gc.set_threshold(1)  # with the collector on, every allocation would start a collection
            gc.callbacks.append(count)
            try:
                latch.set()
            finally:
                gc.callbacks.remove(count)
                gc.set_threshold(*thresholds)
            assert gc.isenabled() is enabled
            if not enabled:
                assert collections == []
            elif paused:
                # At threshold 1 every Handle would start a collection (thousands); paused, none
                # runs inside the loop (a tracer such as coverage's may allocate, and so collect,
                # on the way in or out of set()).
                assert len(collections) <= 2
            else:
                assert collections  # a small release runs with the collector, which collected
            collections.clear()
            await asyncio.gather(*waiters)

    thresholds = gc.get_threshold()
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        asyncio.run(main())
    finally:
        (gc.enable if was else gc.disable)()


async def _wait(latch: AsyncioLatch) -> None:
    await latch.wait()
