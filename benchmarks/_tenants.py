"""Scenario 6, many tenants: the memory of idle managers, each holding a token.

Each measurement runs in a fresh child process (``python -m benchmarks._tenants ...``), so one
does not inherit another's heap. The child imports everything and builds, uses and drops one
manager first (lazy imports, caches), then makes ``count`` managers, gets each its token from the
emulator process, and reports:

- the growth of the process's resident memory (RSS, from ``/proc/self/statm``): what the machine
  pays, C allocations (OpenSSL contexts, certificate stores) included;
- the growth of the Python heap as ``tracemalloc`` sees it, for the small counts only (it slows
  allocation down and misses C allocations);
- the time to build them and get their tokens.

"Idle" means holding a fresh token with nothing in flight: aioiam without ``async with`` (nothing
runs in the background), and also inside ``async with`` (each manager's refresher asleep, every
manager held open by a task of its own, as a long-lived worker would).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import httpx

import aioiam

from ._contenders import AIOIAM, AIOIAM_ON_DEMAND, API_KEY, HAND_ROLLED, IBM, HandRolledCache, ibm_token_manager
from ._emulator import Emulator

__all__ = ["VARIANTS", "measure", "run"]

#: (label, contender, client) - "own": each manager makes its own HTTP client (the default);
#: "shared": one ``httpx.AsyncClient`` for all, passed in (``http_client=``).
VARIANTS: tuple[tuple[str, str, str], ...] = (
    ("aioiam, own client (default)", AIOIAM_ON_DEMAND, "own"),
    ("aioiam, shared client", AIOIAM_ON_DEMAND, "shared"),
    ("aioiam, shared client, inside async with", AIOIAM, "shared"),
    ("hand-rolled, shared client", HAND_ROLLED, "shared"),
    ("ibm-cloud-sdk-core", IBM, "own"),
)

_PAGE = os.sysconf("SC_PAGE_SIZE")
_CONCURRENCY = 32


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


class _Fleet:
    """``count`` managers of one kind, each with a token; closed together."""

    def __init__(self, name: str, client: str, url: str) -> None:
        self.name = name
        self.client = client
        self.url = url
        self.managers: list[Any] = []
        self._shared: httpx.AsyncClient | None = None
        self._held: asyncio.Event | None = None
        self._holders: list[asyncio.Task[None]] = []

    async def build(self, count: int) -> None:
        if self.client == "shared" and self._shared is None:
            self._shared = httpx.AsyncClient(timeout=10)
        semaphore = asyncio.Semaphore(_CONCURRENCY)
        self._held = asyncio.Event()
        entered: list[asyncio.Future[None]] = []
        loop = asyncio.get_running_loop()
        for _ in range(count):
            manager = self._make()
            self.managers.append(manager)
            if self.name == AIOIAM:
                ready = loop.create_future()
                entered.append(ready)
                self._holders.append(asyncio.create_task(self._hold(manager, ready, semaphore)))
        if entered:
            await asyncio.gather(*entered)
            return

        async def fetch(manager: Any) -> None:
            async with semaphore:
                if self.name == IBM:
                    await asyncio.to_thread(manager.get_token)
                else:
                    await manager.get_token()

        await asyncio.gather(*(fetch(m) for m in self.managers))

    def _make(self) -> Any:
        if self.name == IBM:
            return ibm_token_manager(self.url)
        if self.name == HAND_ROLLED:
            assert self._shared is not None
            return HandRolledCache(API_KEY, self.url, self._shared)
        return aioiam.TokenManager(API_KEY, url=self.url, http_client=self._shared)

    async def _hold(
        self, manager: aioiam.TokenManager, ready: asyncio.Future[None], semaphore: asyncio.Semaphore
    ) -> None:
        assert self._held is not None
        # Entering starts the refresher, which fetches at once: entered a few at a time, like
        # the fetches of the other variants, so IAM is not asked for every token at once.
        await semaphore.acquire()
        try:
            async with manager:
                await manager.get_token()
                semaphore.release()
                ready.set_result(None)
                await self._held.wait()
        finally:
            if not ready.done():
                semaphore.release()

    async def close(self) -> None:
        if self._held is not None:
            self._held.set()
        await asyncio.gather(*self._holders)
        for manager in self.managers:
            if isinstance(manager, aioiam.TokenManager):
                await manager.aclose()
        if self._shared is not None:
            await self._shared.aclose()
        self.managers.clear()


async def _measure(name: str, client: str, count: int, url: str, trace: bool) -> dict[str, Any]:
    warm = _Fleet(name, client, url)
    await warm.build(1)
    await warm.close()
    del warm
    fleet = _Fleet(name, client, url)
    if client == "shared":  # the one shared client is not part of any manager's cost
        fleet._shared = httpx.AsyncClient(timeout=10)
    gc.collect()
    if trace:
        tracemalloc.start()
    traced_before = tracemalloc.get_traced_memory()[0] if trace else 0
    rss_before = _rss()
    started = time.perf_counter()
    await fleet.build(count)
    seconds = time.perf_counter() - started
    gc.collect()
    rss = _rss() - rss_before
    traced = tracemalloc.get_traced_memory()[0] - traced_before if trace else None
    if trace:
        tracemalloc.stop()
    await fleet.close()
    return {
        "count": count,
        "rss_bytes": rss,
        "rss_bytes_per_manager": rss / count,
        "traced_bytes": traced,
        "traced_bytes_per_manager": traced / count if traced is not None else None,
        "build_seconds": seconds,
    }


def measure(name: str, client: str, count: int, url: str, *, trace: bool) -> dict[str, Any]:
    """Measure in a fresh child process (blocking)."""
    command = [sys.executable, "-m", "benchmarks._tenants", name, client, str(count), url]
    if trace:
        command.append("--trace")
    output = subprocess.run(command, check=True, capture_output=True, text=True, timeout=900).stdout
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


@contextlib.asynccontextmanager
async def _emulator() -> AsyncIterator[Emulator]:
    async with Emulator(lifetime=3600, latency=0.0) as emulator:
        yield emulator


async def run(*, one: int, many: int, own_client_many: int, log: Any) -> dict[str, Any]:
    """Per variant: ``one`` managers (traced), then ``many`` (``own_client_many`` with own clients)."""
    results: dict[str, Any] = {"one": one, "many": many, "own_client_many": own_client_many, "rows": []}
    async with _emulator() as emulator:
        for label, name, client in VARIANTS:
            small = await asyncio.to_thread(measure, name, client, one, emulator.url, trace=True)
            count = own_client_many if (client == "own" and name != IBM) else many
            large = await asyncio.to_thread(measure, name, client, count, emulator.url, trace=False)
            row = {"variant": label, "contender": name, "client": client, "small": small, "large": large}
            results["rows"].append(row)
            log(
                f"  tenants {label:<42} one: {small['rss_bytes_per_manager'] / 1024:7.1f} KiB RSS, "
                f"{small['traced_bytes_per_manager'] / 1024:6.1f} KiB heap; "
                f"{count:,}: {large['rss_bytes'] / 2**20:8.1f} MiB RSS in {large['build_seconds']:.1f} s"
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("client", choices=["own", "shared"])
    parser.add_argument("count", type=int)
    parser.add_argument("url")
    parser.add_argument("--trace", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(_measure(args.name, args.client, args.count, args.url, args.trace))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
