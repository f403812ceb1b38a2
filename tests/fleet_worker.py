"""One process of a test fleet: ``python -m tests.fleet_worker --iam URL --redis URL ...``.

Prints ``ready`` once its manager is running, waits for a line on stdin, then runs
``--coroutines`` tasks calling ``get_token()`` for ``--seconds`` and prints one JSON line:
the tokens it saw, its own IAM requests, failed calls, and how long its first token took.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import anyio
import anyio.to_thread

import aioiam


async def run(args: argparse.Namespace) -> dict[str, object]:
    cache = aioiam.RedisTokenCache(args.redis, namespace=args.namespace, recheck=0.2, timeout=args.redis_timeout)
    retry = aioiam.RetryPolicy(request_timeout=args.request_timeout, timeout=30.0, initial_delay=0.05)
    manager = aioiam.TokenManager("test-api-key", url=args.iam, cache=cache, retry=retry)
    seen: set[str] = set()
    failures = 0
    calls = 0
    first: list[float] = []
    print("ready", flush=True)  # before async with: its refresher would fetch the first token at once
    await anyio.to_thread.run_sync(sys.stdin.readline)
    async with manager:
        started = time.perf_counter()
        until = started + args.seconds

        async def caller() -> None:
            nonlocal failures, calls
            while True:
                try:
                    seen.add(await manager.get_token())
                    if not first:
                        first.append(time.perf_counter() - started)
                except aioiam.IAMError:
                    failures += 1
                calls += 1
                if time.perf_counter() >= until:
                    return
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as tg:
            for _ in range(args.coroutines):
                tg.start_soon(caller)
    return {
        "tokens": sorted(seen),
        "requests": manager.request_count,
        "failures": failures,
        "calls": calls,
        "first_token_s": first[0] if first else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iam", required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--backend", default="asyncio")
    parser.add_argument("--namespace", default="fleet-test")
    parser.add_argument("--coroutines", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--request-timeout", type=float, default=5.0)
    parser.add_argument("--redis-timeout", type=float, default=0.5)
    args = parser.parse_args()
    result = anyio.run(run, args, backend=args.backend)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
