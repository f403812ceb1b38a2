"""Scenario 2, cold fan-in under load: N busy workers start at once on a contender with no token.

Crawler and worker fleets do not sit idle after their first token: each worker goes on working.
Here each of N workers, started at once on a fresh contender, loops until the trial ends::

    await get_token()        # the first call waits for IAM; later ones find the token cached
    spin()                   # about 50 µs of CPU work (a busy loop calibrated on this machine)
    await asyncio.sleep(0)   # one pass of the event loop

A fast path that does not yield is no checkpoint, so a worker yields to the others once per loop,
in its ``sleep(0)``. Once every worker has its first token, the workers run a short tail and stop.

**The figure** is the time from IAM's answer to the *last* worker's first token: everything a
contender spends after the token is in, waking N waiters while the ones already woken keep
working. Also recorded: the median worker's first token, also from the answer; the IAM requests (1
is right); the calls made in all.

**IAM's answer** is measured, not assumed to come ``latency`` after the request. The emulator
process stamps ``time.monotonic()`` right after each ``send()`` on a connection it accepted, and
reports the last stamp through its control API (``last_write_at``, see ``_emulator.py``). Read
after the trial, whose one IAM request is the only thing the emulator wrote since its reset, that
is the moment the answer's last byte was on the wire. ``time.monotonic()`` is ``CLOCK_MONOTONIC``
on Linux, one clock for every process, so the workers' own ``time.monotonic()`` readings are
comparable with it. Why the emulator's side rather than the moment the client receives the
answer: it is the same instant for every contender, taken where no contender's code runs, so
whatever a contender does once the bytes are sent (reading them, parsing them with httpx, waking
its waiters) counts against it, and nothing has to be hooked into a contender's HTTP stack.

**The floors**, no library at all, as in scenario 1 (``_cold.py``): ``floor: timer`` (the first
call starts a timer of the IAM latency; every worker waits on one plain ``asyncio.Event`` the timer
sets; its answer is the moment the timer fires, in process) and ``floor: raw request`` (the first
call sends one HTTP request with bare asyncio streams, every worker waits on one ``asyncio.Event``
set when the answer is read; its answer is the emulator's stamp, as for the contenders). Waking all
waiters at once, each woken worker then costs its spin once before the last one runs: about N
times the spin plus a task switch. Nothing that serves N busy workers can do much better.

Every trial is bounded: the workers stop at ``max_seconds`` after they started whether or not all
were served (the figure is then "over ``max_seconds``"), and a contender that needed more than
``max_seconds`` at some N is not run again at that N or above.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

from ._cold import FLOOR_REQUEST, TimerFloor, frozen_heap, raw_request_get_token
from ._contenders import FLOOR, GetToken, contender
from ._emulator import Emulator

__all__ = ["calibrate", "load", "run"]


def _spin(turns: int) -> None:
    for _ in range(turns):
        pass


def calibrate(seconds: float) -> int:
    """How many turns of the busy loop take ``seconds`` of CPU time here.

    Timed in CPU time of this thread (``time.thread_time()``), so that time the machine gives to
    other processes does not count; after a fifth of a second of spinning (a virtual CPU's clock
    speeds up under load), the median of 15 timings.
    """
    sample = 100_000
    deadline = time.thread_time() + 0.2
    while time.thread_time() < deadline:
        _spin(sample)
    timings = []
    for _ in range(15):
        started = time.thread_time()
        _spin(sample)
        timings.append(time.thread_time() - started)
    return max(1, round(sample * seconds / statistics.median(timings)))


async def load(get_token: GetToken, n: int, *, turns: int, tail: float, max_seconds: float) -> dict[str, Any]:
    """Start ``n`` busy workers on ``get_token`` at once; when each had its first token, and more.

    Returns ``first`` (each worker's ``time.monotonic()`` at its first token, NaN if it has none),
    ``last_call`` (the latest first call), ``calls``, ``failures``, and ``cut_off`` (whether the
    workers were stopped at ``max_seconds`` before all were served).
    """
    loop = asyncio.get_running_loop()
    monotonic = time.monotonic
    sleep = asyncio.sleep
    first = [math.nan] * n
    called = [math.nan] * n
    calls = failures = 0
    remaining = n
    stopping = False
    all_served = loop.create_future()

    def stop() -> None:
        nonlocal stopping
        stopping = True

    async def worker(i: int) -> None:
        nonlocal calls, failures, remaining
        called[i] = monotonic()
        try:
            await get_token()
            first[i] = monotonic()
        except Exception:
            failures += 1
            return
        finally:
            remaining -= 1
            if remaining == 0:  # the tail: a timer, not the trial's task, which would wait a pass more
                loop.call_later(tail, stop)
                all_served.set_result(None)
        made = 1
        try:
            while True:
                for _ in range(turns):  # the work, inline: _spin(turns) would add a call
                    pass
                await sleep(0)
                if stopping:
                    break
                await get_token()
                made += 1
        except Exception:
            failures += 1
        finally:
            calls += made

    started = monotonic()
    tasks = [loop.create_task(worker(i)) for i in range(n)]
    done, _ = await asyncio.wait([all_served], timeout=max_seconds)
    cut_off = not done
    if cut_off:
        stop()
        for task in tasks:
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "first": first,
        "started": started,
        "last_call": max((c for c in called if not math.isnan(c)), default=math.nan),
        "calls": calls,
        "failures": failures,
        "cut_off": cut_off,
        "seconds": monotonic() - started,
    }


async def _trial(
    name: str, n: int, emulator: Emulator, *, latency: float, turns: int, tail: float, max_seconds: float
) -> dict[str, Any]:
    await emulator.configure(reset=True)
    work_us = _time_work(turns)
    timer: TimerFloor | None = None
    with frozen_heap():
        if name == FLOOR:
            timer = TimerFloor(latency)
            result = await load(timer.get_token, n, turns=turns, tail=tail, max_seconds=max_seconds)
        elif name == FLOOR_REQUEST:
            result = await load(raw_request_get_token(emulator.url), n, turns=turns, tail=tail, max_seconds=max_seconds)
        else:
            async with contender(name, emulator.url) as get_token:
                result = await load(get_token, n, turns=turns, tail=tail, max_seconds=max_seconds)
    requests, last_write_at = await emulator.answered()
    if timer is not None:
        answered_at = timer.fired_at
    elif requests:
        answered_at = last_write_at
    else:
        answered_at = None  # nothing answered: no figure
    served = sorted(t for t in result["first"] if not math.isnan(t))
    cut_off = result["cut_off"]

    def since_answer(at: float | None) -> float | None:
        return None if at is None or answered_at is None else (at - answered_at) * 1e3

    return {
        "requests": requests,
        "failures": result["failures"],
        "served": len(served),
        "cut_off": cut_off,
        # Over the cut-off, the last worker had no token yet: the figure is only a lower bound.
        "last_ms": since_answer(result["started"] + max_seconds if cut_off else (served[-1] if served else None)),
        # The median of all n workers (one never served counts as later than any served).
        "median_ms": since_answer(served[n // 2] if len(served) > n // 2 else None),
        "first_ms": since_answer(served[0] if served else None),
        # Sanity checks: the answer came about one IAM latency after the workers started, and
        # after the last of them had made its first call (positive), as at every N measured here.
        "answer_after_start_ms": _minus(since_answer(result["started"])),
        "last_call_before_answer_ms": _minus(since_answer(result["last_call"])),
        "calls": result["calls"],
        "seconds": result["seconds"],
        "work_us": work_us,
    }


def _time_work(turns: int, times: int = 21) -> float:
    """The CPU time one worker's work takes right now, in µs: the median of ``times`` timings.

    The speed of a shared virtual machine drifts, so each trial records it.
    """
    clock = time.thread_time
    timings = []
    for _ in range(times):
        started = clock()
        _spin(turns)
        timings.append(clock() - started)
    return statistics.median(timings) * 1e6


async def run(
    names: list[str],
    sizes: list[int],
    *,
    latency: float,
    work: float,
    tail: float,
    repeats: int,
    max_seconds: float,
    log: Any,
) -> dict[str, Any]:
    """Every contender at every N, interleaved; the median over ``repeats`` rounds of each figure."""
    names = [FLOOR, FLOOR_REQUEST, *names]
    turns = calibrate(work)
    work_us = _time_work(turns, 201)
    log(f"  cold-load: the work is {turns:,} turns of a busy loop, {work_us:.1f} µs (median of 201)")
    results: dict[str, Any] = {
        "latency_ms": latency * 1e3,
        "work_target_us": work * 1e6,
        "work_us": work_us,
        "work_turns": turns,
        "tail_ms": tail * 1e3,
        "repeats": repeats,
        "max_seconds": max_seconds,
        "rows": [],
    }
    too_slow: dict[str, int] = {}  # contender -> the N at which it went over max_seconds
    async with Emulator(lifetime=3600, latency=latency) as emulator:
        for name in names:  # warm up imports, connections and code paths; not recorded
            await _trial(name, 2, emulator, latency=latency, turns=turns, tail=tail, max_seconds=max_seconds)
        for n in sizes:
            trials: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
            for _ in range(repeats):
                for name in names:
                    if name in too_slow:
                        continue
                    trial = await _trial(
                        name, n, emulator, latency=latency, turns=turns, tail=tail, max_seconds=max_seconds
                    )
                    trials[name].append(trial)
                    if trial["cut_off"]:
                        too_slow[name] = n
            for name in names:
                runs = trials[name]
                if not runs:
                    results["rows"].append({"contender": name, "n": n, "skipped_after_cut_off_at": too_slow.get(name)})
                    continue
                row = _row(name, n, runs)
                results["rows"].append(row)
                if row["cut_off"]:
                    last = f"over {max_seconds:g} s ({row['served']:,} of {n:,} served)"
                else:
                    last = (
                        f"{_fmt(row['last_ms'])} (min {_fmt(row['last_ms_min'])}, max {_fmt(row['last_ms_max'])}, "
                        f"{len(runs)} runs)"
                    )
                log(
                    f"  cold-load N={n:>7,} {name:<20} requests={row['requests']:<3} "
                    f"median={_fmt(row['median_ms'])} last={last}"
                )
    return results


def _fmt(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.1f} ms"


def _minus(ms: float | None) -> float | None:
    return None if ms is None else -ms


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _row(name: str, n: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    last = [r["last_ms"] for r in runs if r["last_ms"] is not None]
    return {
        "contender": name,
        "n": n,
        "requests": max(r["requests"] for r in runs),
        "failures": sum(r["failures"] for r in runs),
        "cut_off": any(r["cut_off"] for r in runs),
        "served": min(r["served"] for r in runs),
        "last_ms": _median(last),
        "last_ms_min": min(last) if last else None,
        "last_ms_max": max(last) if last else None,
        "median_ms": _median([r["median_ms"] for r in runs]),
        "runs": runs,
    }
