"""Property: cancelling random waiters at random moments never breaks the others or single flight."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aioiam import RetryPolicy
from aioiam.testing import FakeIAM
from tests.helpers import make_manager, run_virtual


@settings(max_examples=60, deadline=None)
@given(
    callers=st.integers(1, 25),
    cancels=st.lists(st.tuples(st.integers(0, 24), st.floats(0, 3, allow_nan=False)), max_size=25),
    starts=st.lists(st.floats(0, 3, allow_nan=False), min_size=25, max_size=25),
    latency=st.floats(0.001, 1.0, allow_nan=False),
    failures=st.integers(0, 3),
    managed=st.booleans(),
    backend=st.sampled_from(["asyncio", "trio"]),
)
def test_cancelling_random_waiters_never_hurts_the_rest(
    callers: int,
    cancels: list[tuple[int, float]],
    starts: list[float],
    latency: float,
    failures: int,
    managed: bool,
    backend: str,
) -> None:
    fake = FakeIAM(latency=latency)
    fake.fail_next(failures, status=503)
    results: dict[int, str] = {}
    cancelled = {i for i, _ in cancels if i < callers}

    async def main() -> None:
        tm = make_manager(fake, retry=RetryPolicy(initial_delay=0.1, max_delay=0.4))
        scopes = [anyio.CancelScope() for _ in range(callers)]

        async def caller(i: int) -> None:
            await anyio.sleep(starts[i])
            with scopes[i]:
                results[i] = await tm.get_token()

        async def canceller(i: int, at: float) -> None:
            await anyio.sleep(at)
            scopes[i].cancel()

        async def scenario() -> None:
            async with anyio.create_task_group() as tg:
                for i in range(callers):
                    tg.start_soon(caller, i)
                for i, at in cancels:
                    if i < callers:
                        tg.start_soon(canceller, i, at)

        if managed:
            async with tm:
                await scenario()
                final = await tm.get_token()
        else:
            await scenario()
            final = await tm.get_token()
            await tm.aclose()
        assert final == fake.issued[0]

    run_virtual(main, backend)
    assert fake.max_in_flight == 1
    assert len(fake.issued) == 1
    assert fake.requests == failures + 1
    for i in range(callers):
        if i not in cancelled:
            assert results[i] == fake.issued[0]
    assert set(results.values()) <= {fake.issued[0]}


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_virtual_runner_really_runs_both_backends(backend: str) -> None:
    seen: list[str] = []

    async def main() -> None:
        import sniffio

        seen.append(sniffio.current_async_library())
        await anyio.sleep(1000)

    run_virtual(main, backend)
    assert seen == [backend]
