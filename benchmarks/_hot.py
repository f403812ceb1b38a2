"""Scenario 2, hot path: nanoseconds per ``await tm.get_token()`` on a cached token.

Every contender is timed in the same tight loop, in the same call shape, against a bare coroutine
method that returns a constant (the cost of the ``await`` itself). The loops are interleaved, and
each figure is the fastest of several rounds (the round least disturbed by the rest of the
machine), with the median of the rounds kept too.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aioiam

from ._contenders import AIOIAM, AIOIAM_ON_DEMAND, API_KEY, HAND_ROLLED, IBM, contender, ibm_token_manager
from ._emulator import Emulator

__all__ = ["BARE", "BARE_CLOCK", "IBM_DIRECT", "run"]

BARE = "bare coroutine"
BARE_CLOCK = "bare coroutine + clock check"
IBM_DIRECT = "ibm-cloud-sdk-core, called directly"


class _Bare:
    """The yardstick: a coroutine method that returns a constant."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def get_token(self) -> str:
        return self._token


class _BareClock:
    """The yardstick of any cache that checks expiry per call: one ``time.monotonic()`` and a compare."""

    def __init__(self, token: str) -> None:
        self._token = token
        self._until = time.monotonic() + 3600

    async def get_token(self) -> str:
        if time.monotonic() < self._until:
            return self._token
        raise RuntimeError("expired")


class _Direct:
    """ibm-cloud-sdk-core's ``get_token()`` called on the event loop (it blocks it when it fetches)."""

    def __init__(self, manager: Any) -> None:
        self._manager = manager

    async def get_token(self) -> str:
        token: str = self._manager.get_token()
        return token


async def _time_loop(tm: Any, n: int) -> float:
    """Nanoseconds per ``await tm.get_token()`` over ``n`` calls (the call shape users write)."""
    perf = time.perf_counter_ns
    start = perf()
    for _ in range(n):
        await tm.get_token()
    return (perf() - start) / n


class _Wrapped:
    """Gives a ``get_token`` function the ``tm.get_token()`` call shape."""

    def __init__(self, get_token: Callable[[], Awaitable[str]]) -> None:
        self.get_token = get_token


async def run(*, calls: int, slow_calls: int, rounds: int, log: Any) -> dict[str, Any]:
    """Time every contender; ``slow_calls`` for the thread-hopping one."""
    results: dict[str, Any] = {"calls": calls, "slow_calls": slow_calls, "rounds": rounds, "rows": []}
    async with Emulator(lifetime=3600, latency=0.0) as emulator:
        # aioiam on demand reads the clock on every call; inside async with it reads none.
        on_demand = aioiam.TokenManager(API_KEY, url=emulator.url)
        ibm = ibm_token_manager(emulator.url)
        try:
            async with (
                aioiam.TokenManager(API_KEY, url=emulator.url) as running,
                contender(HAND_ROLLED, emulator.url) as hand_rolled,
                contender(IBM, emulator.url) as ibm_threaded,
            ):
                token = await running.get_token()
                await on_demand.get_token()
                await hand_rolled()
                await ibm_threaded()
                await asyncio.to_thread(ibm.get_token)
                subjects: dict[str, tuple[Any, int]] = {
                    BARE: (_Bare(token), calls),
                    BARE_CLOCK: (_BareClock(token), calls),
                    AIOIAM: (running, calls),
                    AIOIAM_ON_DEMAND: (on_demand, calls),
                    HAND_ROLLED: (_Wrapped(hand_rolled), calls),
                    IBM_DIRECT: (_Direct(ibm), calls),
                    IBM: (_Wrapped(ibm_threaded), slow_calls),
                }
                timings: dict[str, list[float]] = {name: [] for name in subjects}
                gc.collect()
                gc.freeze()
                try:
                    for subject, n in subjects.values():  # warm-up
                        await _time_loop(subject, max(1, n // 10))
                    for _ in range(rounds):
                        for name, (subject, n) in subjects.items():
                            timings[name].append(await _time_loop(subject, n))
                finally:
                    gc.unfreeze()
        finally:
            await on_demand.aclose()
    bare = min(timings[BARE])
    for name, values in timings.items():
        best = min(values)
        row = {
            "contender": name,
            "ns_per_call": best,
            "ns_per_call_median": statistics.median(values),
            "ratio_to_bare": best / bare,
            "calls": subjects[name][1],
            "rounds_ns": values,
        }
        results["rows"].append(row)
        log(f"  hot {name:<36} {best:10.0f} ns/call  {best / bare:7.2f}x bare")
    return results
