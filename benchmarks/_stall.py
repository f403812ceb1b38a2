"""Scenario 3, refresh stall: a steady stream of calls across several refreshes.

A driver starts one caller task every ``1/rate`` seconds (so a stalled call does not hold back the
stream, as in a server), each timing its own ``get_token()`` call, until the contender has
refreshed ``refreshes`` times (seen as the token changing) plus one second, or a time limit. The
first call, which fetches the first token, is left out of the counts. IAM answers after
``latency``; tokens are short-lived.

ibm-cloud-sdk-core treats a token as expired 10 s before its ``exp`` and refreshes at 80% of its
life, on whole wall-clock seconds: with tokens under 56 s it never takes its refresh path (every
token is "expired" first), so it gets 60 s tokens here and the run lasts about 150 s.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from ._contenders import IBM, contender
from ._emulator import Emulator

__all__ = ["run", "stream"]


async def stream(get_token: Any, *, rate: float, refreshes: int, max_seconds: float, slow: float) -> dict[str, Any]:
    """Drive ``get_token`` at ``rate`` calls a second; every call's start, wait and token."""
    perf = time.perf_counter
    first_start = perf()
    first_token = await get_token()
    first_wait = perf() - first_start
    start = perf()
    calls: list[tuple[float, float, int]] = []  # (start, wait, token serial), start from `start`
    serials: dict[str, int] = {first_token: 0}
    changes: list[float] = []
    failures = 0
    pending: set[asyncio.Task[None]] = set()
    stop_at = start + max_seconds

    async def caller() -> None:
        nonlocal failures, stop_at
        called = perf()
        try:
            token = await get_token()
        except Exception:
            failures += 1
            return
        wait = perf() - called
        serial = serials.get(token)
        if serial is None:
            serial = serials[token] = len(serials)
            changes.append(called - start)
            if len(changes) == refreshes:
                stop_at = min(stop_at, perf() + 1.0)
        calls.append((called - start, wait, serial))

    interval = 1.0 / rate
    next_at = start
    while perf() < stop_at:
        next_at += interval
        delay = next_at - perf()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(caller())
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)
    calls.sort()
    duration = perf() - start
    waits = sorted(wait for _, wait, _ in calls)
    return {
        "first_wait_ms": first_wait * 1e3,
        "calls": len(calls),
        "failures": failures,
        "seconds": duration,
        "calls_per_s": len(calls) / duration if duration else 0.0,
        "refreshes": len(changes),
        "refresh_at_s": changes,
        "slow_calls": sum(1 for wait in waits if wait > slow),
        "longest_ms": waits[-1] * 1e3 if waits else 0.0,
        "p99_ms": waits[int(len(waits) * 0.99)] * 1e3 if waits else 0.0,
        "p50_ms": waits[len(waits) // 2] * 1e3 if waits else 0.0,
        # For the chart: every call's (start s, wait ms).
        "series": [(round(at, 4), round(wait * 1e3, 4)) for at, wait, _ in calls],
    }


async def run(
    names: list[str],
    *,
    latency: float,
    lifetime: float,
    ibm_lifetime: float,
    rate: float,
    refreshes: int,
    max_seconds: float,
    ibm_max_seconds: float,
    slow: float,
    log: Any,
) -> dict[str, Any]:
    results: dict[str, Any] = {
        "latency_ms": latency * 1e3,
        "lifetime_s": lifetime,
        "ibm_lifetime_s": ibm_lifetime,
        "rate_per_s": rate,
        "refreshes_wanted": refreshes,
        "slow_ms": slow * 1e3,
        "rows": [],
    }
    async with Emulator(lifetime=lifetime, latency=latency) as emulator:
        for name in names:
            life = ibm_lifetime if name == IBM else lifetime
            await emulator.configure(reset=True, lifetime=life)
            gc.collect()
            async with contender(name, emulator.url) as get_token:
                row = await stream(
                    get_token,
                    rate=rate,
                    refreshes=refreshes,
                    max_seconds=ibm_max_seconds if name == IBM else max_seconds,
                    slow=slow,
                )
            row["contender"] = name
            row["lifetime_s"] = life
            row["requests"] = await emulator.requests()
            results["rows"].append(row)
            log(
                f"  stall {name:<18} {row['calls']:>6} calls in {row['seconds']:6.1f} s, "
                f"{row['refreshes']} refreshes, {row['slow_calls']} slower than {slow * 1e3:g} ms, "
                f"longest {row['longest_ms']:.1f} ms"
            )
    return results
