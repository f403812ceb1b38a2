"""Scenario 7, a fleet of processes: IAM requests per token lifetime, and the cold start of the
last process, for 1 to 16 processes, each with its own manager, with and without the Redis cache.

Each process is a child (``python -m benchmarks._fleet --worker ...``) with one manager inside
``async with`` and ``callers`` coroutines calling ``get_token()`` every ``pause`` seconds. The
children start, say ``ready``, and are all released at once (a line on their stdin); each
reports how long its first token took from that moment. The IAM emulator runs in a process of
its own (``_emulator``), Redis is a real ``redis-server`` on loopback started here, and
``window`` seconds of short-lived tokens are run per configuration.

Figures: the IAM requests in the window; the same, per what one process needs alone over the
same window (1.0 = one request per token lifetime for the whole fleet; without the cache it is
one per process); the cold start of the slowest process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from aioiam.testing._redis_server import RedisServer

from ._emulator import Emulator

__all__ = ["run"]

ROOT = Path(__file__).resolve().parent.parent


async def _fleet(
    count: int, *, cache: bool, url: str, redis: str, namespace: str, window: float, callers: int, pause: float
) -> list[dict[str, Any]]:
    arguments = [
        "-m", "benchmarks._fleet", "--worker", f"--iam={url}", f"--seconds={window}",
        f"--callers={callers}", f"--pause={pause}", f"--namespace={namespace}",
    ]  # fmt: skip
    if cache:
        arguments.append(f"--redis={redis}")
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable, *arguments, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT
        )
        for _ in range(count)
    ]
    for process in processes:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        if line.strip() != b"ready":
            raise RuntimeError(f"a fleet worker did not start: {line!r}")
    for process in processes:
        assert process.stdin is not None
        process.stdin.write(b"go\n")
    await asyncio.gather(*(p.stdin.drain() for p in processes if p.stdin is not None))
    found = []
    for process in processes:
        out, _ = await asyncio.wait_for(process.communicate(), window + 60)
        found.append(json.loads(out.decode().strip().splitlines()[-1]))
    return found


async def run(
    sizes: list[int],
    *,
    lifetime: float,
    window: float,
    latency: float,
    callers: int,
    pause: float,
    repeats: int,
    log: Any,
) -> dict[str, Any]:
    """Every size without and with the cache, ``repeats`` times each; medians."""
    results: dict[str, Any] = {
        "repeats": repeats,
        "lifetime_s": lifetime,
        "window_s": window,
        "latency_ms": latency * 1e3,
        "callers": callers,
        "pause_s": pause,
        "rows": [],
    }
    with RedisServer() as redis:
        async with Emulator(lifetime=lifetime, latency=latency) as emulator:
            single: float | None = None
            single_cold: float | None = None
            uncached_cold: float | None = None
            for count in sizes:
                for cache in (False, True):
                    trials = []
                    for trial in range(repeats):
                        await emulator.configure(reset=True)
                        found = await _fleet(
                            count, cache=cache, url=emulator.url, redis=redis.url,
                            namespace=f"bench-{count}-{cache}-{trial}", window=window, callers=callers, pause=pause,
                        )  # fmt: skip
                        stats = await emulator.stats()
                        trials.append(
                            {
                                "requests": stats["requests"],
                                "max_in_flight": stats["max_in_flight"],
                                "cold_start_ms": max(r["first_token_s"] for r in found) * 1e3,
                                "failures": sum(r["failures"] for r in found),
                            }
                        )
                    requests = statistics.median(t["requests"] for t in trials)
                    cold = statistics.median(t["cold_start_ms"] for t in trials)
                    if count == 1 and not cache:
                        single, single_cold = float(requests), cold
                    if not cache:
                        uncached_cold = cold
                    row = {
                        "processes": count,
                        "cache": cache,
                        "requests": requests,
                        "requests_max": max(t["requests"] for t in trials),
                        "per_lifetime": requests / single if single else None,
                        "cold_start_ms": cold,
                        "cold_vs_single": cold / single_cold if single_cold else None,
                        # the same number of processes without the cache: what the machine costs
                        "cold_vs_uncached": cold / uncached_cold if uncached_cold else None,
                        "max_in_flight": max(t["max_in_flight"] for t in trials),
                        "failures": sum(t["failures"] for t in trials),
                        "trials": trials,
                    }
                    results["rows"].append(row)
                    log(
                        f"  fleet processes={count:>2} cache={'on ' if cache else 'off'} requests={requests:<4g} "
                        f"(max {row['requests_max']}) per lifetime={row['per_lifetime'] or 0:5.2f} cold start of the "
                        f"last={cold:7.1f} ms (x{row['cold_vs_single'] or 0:.2f} of one process) "
                        f"failures={row['failures']}"
                    )
    return results


# ------------------------------------------------------------------ the worker process


async def _work(args: argparse.Namespace) -> dict[str, Any]:
    import anyio.to_thread

    import aioiam

    cache = aioiam.RedisTokenCache(args.redis, namespace=args.namespace) if args.redis else None
    manager = aioiam.TokenManager("test-api-key", url=args.iam, cache=cache)
    first: list[float] = []
    failures = calls = 0
    print("ready", flush=True)  # before async with: its refresher would fetch the first token at once
    await anyio.to_thread.run_sync(sys.stdin.readline)
    async with manager:
        started = time.perf_counter()
        until = started + args.seconds

        async def caller() -> None:
            nonlocal failures, calls
            while True:
                try:
                    await manager.get_token()
                    if not first:
                        first.append(time.perf_counter() - started)
                except aioiam.IAMError:
                    failures += 1
                calls += 1
                if time.perf_counter() >= until:
                    return
                await asyncio.sleep(args.pause)

        await asyncio.gather(*(caller() for _ in range(args.callers)))
    return {"first_token_s": first[0] if first else None, "failures": failures, "calls": calls}


def _worker(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--iam", required=True)
    parser.add_argument("--redis")
    parser.add_argument("--namespace", default="bench")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--callers", type=int, default=100)
    parser.add_argument("--pause", type=float, default=0.1)
    args = parser.parse_args(argv)
    import logging

    logging.getLogger("aioiam").setLevel(logging.CRITICAL)
    print(json.dumps(asyncio.run(_work(args))), flush=True)


if __name__ == "__main__":
    _worker(sys.argv[1:])
