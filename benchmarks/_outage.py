"""Scenario 5, outage: many callers through a minute of IAM failing, after the token has expired.

Shape, for every contender: get a token while IAM is up; IAM goes down (every answer a 503 after
the IAM latency); nobody calls until the token has expired; then ``callers`` tasks loop for
``outage`` seconds, each calling ``get_token()`` and pausing ``pause`` seconds after every answer
or error. The figure is how many requests reach IAM from the moment the token expired to the end of
the window, with how the callers fared in that window. Requests that aioiam's background
refresher made before the expiry, while it still served the valid token, are counted separately.

aioiam and the hand-rolled cache run on a virtual clock against the in-process emulator, so a
minute takes well under a second, and are repeated (aioiam's backoff is jittered). ibm-cloud-sdk-core
reads the wall clock and sleeps in threads, so it runs once, in real time, against the emulator
process.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

from aioiam.testing import FakeIAM

from ._contenders import IBM, GetToken, contender, ibm_token_manager
from ._emulator import Emulator
from ._virtual_time import VirtualTimeLoop

__all__ = ["run"]


class _Callers:
    """``count`` callers looping on ``get_token`` until ``until``; a snapshot can be taken any time."""

    def __init__(self, get_token: GetToken, *, count: int, until: float, pause: float, clock: Callable[[], float]):
        self._get_token = get_token
        self._count = count
        self._until = until
        self._pause = pause
        self._clock = clock
        self.ok = 0
        self.failed = 0
        self.longest = 0.0
        self._in_call: dict[int, float] = {}

    async def run(self) -> None:
        await asyncio.gather(*(self._caller(i) for i in range(self._count)))

    async def _caller(self, i: int) -> None:
        clock = self._clock
        while clock() < self._until:
            called = self._in_call[i] = clock()
            try:
                await self._get_token()
                self.ok += 1
            except Exception:
                self.failed += 1
            del self._in_call[i]
            self.longest = max(self.longest, clock() - called)
            await asyncio.sleep(self._pause)

    def snapshot(self) -> dict[str, Any]:
        now = self._clock()
        waiting = [now - called for called in self._in_call.values()]
        return {
            "calls_ok": self.ok,
            "calls_failed": self.failed,
            "calls_waiting_at_end": len(waiting),
            "longest_call_s": max([self.longest, *waiting]),
        }


async def _virtual(
    name: str, *, callers: int, outage: float, lifetime: float, latency: float, pause: float
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    fake = FakeIAM(lifetime=lifetime, latency=latency)
    async with contender(name, "http://127.0.0.1", transport=fake.transport, clock=loop.time) as get_token:
        fetched_at = loop.time()
        await get_token()
        fake.down = True
        await asyncio.sleep(fetched_at + lifetime + 0.001 - loop.time())  # until the token has expired
        before = fake.requests - 1
        expired_at = loop.time()
        crowd = _Callers(get_token, count=callers, until=expired_at + outage, pause=pause, clock=loop.time)
        snapshot: dict[str, Any] = {}

        def at_end() -> None:
            snapshot.update(crowd.snapshot(), requests=fake.requests - 1 - before)

        loop.call_at(expired_at + outage, at_end)
        await crowd.run()
        if not snapshot:
            await asyncio.sleep(expired_at + outage - loop.time())
    return {"requests_before_expiry": before, **snapshot}


def _run_virtual(name: str, **kwargs: Any) -> dict[str, Any]:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(_virtual(name, **kwargs))
    finally:
        loop.close()


async def _real_ibm(*, callers: int, outage: float, latency: float, pause: float) -> dict[str, Any]:
    """ibm-cloud-sdk-core through ``asyncio.to_thread``, on the wall clock."""
    # 11 s tokens: it treats a token as expired 10 s before ``exp``, so this one expires within 2 s.
    async with Emulator(lifetime=11, latency=latency) as emulator:
        manager = ibm_token_manager(emulator.url)
        await asyncio.to_thread(manager.get_token)
        await emulator.configure(down=True)
        while not manager._is_token_expired():  # noqa: ASYNC110 - polling the peer's own notion of expiry
            await asyncio.sleep(0.05)
        await emulator.configure(reset=True)

        async def get_token() -> str:
            token: str = await asyncio.to_thread(manager.get_token)
            return token

        perf = time.perf_counter
        until = perf() + outage
        crowd = _Callers(get_token, count=callers, until=until, pause=pause, clock=perf)
        task = asyncio.create_task(crowd.run())
        await asyncio.sleep(max(0.0, until - perf()))
        snapshot = {**crowd.snapshot(), "requests": await emulator.requests()}
        if not task.done():
            # Its waiting threads poll until 60 s after its last attempt. After the measurement,
            # let IAM recover and end that wait so the threads (and the callers) finish.
            await emulator.configure(down=False)
            manager.request_time = 0
        await task
    return {"requests_before_expiry": 0, **snapshot}


async def run(
    names: list[str],
    *,
    callers: list[int],
    repeats: int,
    outage: float,
    ibm_outage: float,
    lifetime: float,
    latency: float,
    pause: float,
    log: Any,
) -> dict[str, Any]:
    results: dict[str, Any] = {
        "outage_s": outage,
        "ibm_outage_s": ibm_outage,
        "lifetime_s": lifetime,
        "latency_ms": latency * 1e3,
        "pause_s": pause,
        "repeats": repeats,
        "rows": [],
    }
    for name in names:
        for count in callers if name != IBM else callers[:1]:
            runs: list[dict[str, Any]] = []
            for _ in range(1 if name == IBM else repeats):
                if name == IBM:
                    runs.append(await _real_ibm(callers=count, outage=ibm_outage, latency=latency, pause=pause))
                else:
                    runs.append(
                        await asyncio.to_thread(
                            _run_virtual,
                            name,
                            callers=count,
                            outage=outage,
                            lifetime=lifetime,
                            latency=latency,
                            pause=pause,
                        )
                    )
            requests = [r["requests"] for r in runs]
            row: dict[str, Any] = {
                "contender": name,
                "callers": count,
                "clock": "wall" if name == IBM else "virtual",
                "window_s": ibm_outage if name == IBM else outage,
                "requests": max(requests),
                "requests_median": statistics.median(requests),
                "requests_min": min(requests),
                "requests_before_expiry": max(r["requests_before_expiry"] for r in runs),
                "calls_ok": statistics.median(r["calls_ok"] for r in runs),
                "calls_failed": statistics.median(r["calls_failed"] for r in runs),
                "calls_waiting_at_end": max(r["calls_waiting_at_end"] for r in runs),
                "longest_call_s": max(r["longest_call_s"] for r in runs),
                "runs": runs,
            }
            results["rows"].append(row)
            log(
                f"  outage {name:<18} callers={count:>6,} requests max {row['requests']} "
                f"(median {row['requests_median']:g}, {len(runs)} runs; before expiry {row['requests_before_expiry']}) "
                f"ok={row['calls_ok']:g} failed={row['calls_failed']:g} waiting at end={row['calls_waiting_at_end']} "
                f"longest call {row['longest_call_s']:.1f} s"
            )
    return results
