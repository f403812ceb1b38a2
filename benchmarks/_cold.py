"""Scenario 1, cold fan-in: N concurrent first calls on a manager with no token yet.

Each caller records the moment it called and the moment its call returned; the figure is the
longest of those waits, and the number of requests that reached IAM. Two floors run alongside,
the same N tasks with no library at all:

- ``floor: timer``: the first caller starts a timer of the IAM latency, and every caller waits on
  one plain ``asyncio.Event`` that the timer sets. Nothing that releases N waiting tasks after the
  IAM latency can do better: it is Python's own cost of scheduling and waking N tasks.
- ``floor: raw request``: the first caller sends one prepared HTTP request to the emulator over a
  new TCP connection with bare ``asyncio`` streams and sets the event when the answer is in. This
  adds the real round trip (the emulator's own work, TCP on loopback) and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import statistics
import time
from collections.abc import Iterator
from typing import Any

from ._contenders import FLOOR, IBM, GetToken, contender
from ._emulator import Emulator

__all__ = ["FLOOR_REQUEST", "TimerFloor", "fan_in", "frozen_heap", "raw_request_get_token", "run"]

FLOOR_REQUEST = "floor: raw request"
_FORM = b"grant_type=urn%3Aibm%3Aparams%3Aoauth%3Agrant-type%3Aapikey&apikey=test-api-key&response_type=cloud_iam"


async def fan_in(get_token: GetToken, n: int) -> tuple[list[float], int]:
    """Start ``n`` callers of ``get_token`` at once; their waits in seconds, and how many failed."""
    waits = [0.0] * n
    failures = 0
    remaining = n
    loop = asyncio.get_running_loop()
    all_done = loop.create_future()
    perf = time.perf_counter

    async def caller(i: int) -> None:
        nonlocal failures, remaining
        start = perf()
        try:
            await get_token()
        except Exception:
            failures += 1
        waits[i] = perf() - start
        remaining -= 1
        if remaining == 0:
            all_done.set_result(None)

    tasks = [loop.create_task(caller(i)) for i in range(n)]
    await all_done
    del tasks
    return waits, failures


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Run a trial with what the harness already holds frozen out of the garbage collector.

    The collector stays on, as in production, so each trial pays only for the objects it makes.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class TimerFloor:
    """A ``get_token`` with no library: the first call starts a ``latency`` timer, all wait on it.

    ``fired_at`` is the ``time.monotonic()`` at which the timer fired, just before it set the
    event (``None`` until then). Once the event is set, a call returns without yielding, as a
    cache's fast path does.
    """

    def __init__(self, latency: float) -> None:
        self._latency = latency
        self._event = asyncio.Event()
        self._started = False
        self.fired_at: float | None = None

    async def get_token(self) -> str:
        if not self._started:
            self._started = True
            asyncio.get_running_loop().call_later(self._latency, self._fire)
        await self._event.wait()
        return "token"

    def _fire(self) -> None:
        self.fired_at = time.monotonic()
        self._event.set()


def raw_request_get_token(url: str) -> GetToken:
    """The first call sends one raw HTTP request (inline, at once); every call waits for its answer."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    request = (
        b"POST /identity/token HTTP/1.1\r\nHost: %s\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Accept: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
    ) % (host.encode(), len(_FORM), _FORM)
    event = asyncio.Event()
    started = False

    async def get_token() -> str:
        nonlocal started
        if not started:
            started = True
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(request)
                answer = await reader.read()
                writer.close()
            finally:
                event.set()
            if not answer.startswith(b"HTTP/1.1 200"):
                raise RuntimeError("the emulator did not answer 200")
        await event.wait()
        return "token"

    return get_token


async def _trial(name: str, n: int, emulator: Emulator, latency: float) -> dict[str, Any]:
    await emulator.configure(reset=True)
    with frozen_heap():
        if name == FLOOR:
            waits, failures = await fan_in(TimerFloor(latency).get_token, n)
            requests = 0
        elif name == FLOOR_REQUEST:
            waits, failures = await fan_in(raw_request_get_token(emulator.url), n)
            requests = await emulator.requests()
        else:
            async with contender(name, emulator.url) as get_token:
                waits, failures = await fan_in(get_token, n)
            requests = await emulator.requests()
    waits.sort()
    return {
        "requests": requests,
        "failures": failures,
        "longest_ms": waits[-1] * 1e3,
        "median_ms": waits[len(waits) // 2] * 1e3,
        "shortest_ms": waits[0] * 1e3,
    }


async def run(
    names: list[str],
    sizes: list[int],
    *,
    latency: float,
    repeats: int,
    big_repeats: int,
    ibm_max_n: int,
    log: Any,
) -> dict[str, Any]:
    """Every contender at every N, interleaved; the median of the longest waits.

    ``repeats`` rounds per N, ``big_repeats`` for N of 100,000 and more.
    """
    names = [FLOOR, FLOOR_REQUEST, *names]
    results: dict[str, Any] = {"latency_ms": latency * 1e3, "repeats": repeats, "big_repeats": big_repeats, "rows": []}
    async with Emulator(lifetime=3600, latency=latency) as emulator:
        for name in names:  # warm up imports, connections and code paths; not recorded
            await _trial(name, 1, emulator, latency)
        for n in sizes:
            trials: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
            for _ in range(big_repeats if n >= 100_000 else repeats):
                for name in names:
                    if name == IBM and n > ibm_max_n:
                        continue
                    trials[name].append(await _trial(name, n, emulator, latency))
            for name in names:
                runs = trials[name]
                if not runs:
                    continue
                longest = [r["longest_ms"] for r in runs]
                row = {
                    "contender": name,
                    "n": n,
                    "requests": max(r["requests"] for r in runs),
                    "failures": sum(r["failures"] for r in runs),
                    "longest_ms": statistics.median(longest),
                    "longest_ms_min": min(longest),
                    "longest_ms_max": max(longest),
                    "median_ms": statistics.median(r["median_ms"] for r in runs),
                    "runs": runs,
                }
                results["rows"].append(row)
                log(
                    f"  cold N={n:>7,} {name:<18} requests={row['requests']:<3} "
                    f"longest={row['longest_ms']:8.1f} ms (min {row['longest_ms_min']:.1f}, "
                    f"max {row['longest_ms_max']:.1f})"
                )
    return results
