"""Scenario 4, auth overhead: requests per second through ``httpx.AsyncClient`` with an auth flow.

The service is an ``httpx.MockTransport`` that answers 200 at once, so the figure is the client
side alone: httpx's own cost plus the auth flow's. The yardstick is the same token set once as a
static ``Authorization`` header on the client. The peers are what their users would write: an
``httpx.Auth`` whose flow awaits the hand-rolled cache, and one that calls ibm-cloud-sdk-core's
``get_token`` through ``asyncio.to_thread``. Requests go one after another; rounds are interleaved
and each figure is the best round.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import AsyncGenerator
from typing import Any

import httpx

import aioiam

from ._contenders import AIOIAM, AIOIAM_ON_DEMAND, API_KEY, HAND_ROLLED, IBM, GetToken, contender
from ._emulator import Emulator

__all__ = ["STATIC", "run"]

STATIC = "static header"
SERVICE_URL = "https://resource-controller.cloud.ibm.com/v2/resource_instances"


class _BearerFrom(httpx.Auth):
    """What a team writes around its own token function: set the header, send."""

    def __init__(self, get_token: GetToken) -> None:
        self._get_token = get_token

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        request.headers["Authorization"] = f"Bearer {await self._get_token()}"
        yield request


def _service(seen: list[str]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        if not seen:
            seen.append(request.headers.get("authorization", ""))
        return httpx.Response(200)

    return httpx.MockTransport(answer)


async def _rate(client: httpx.AsyncClient, n: int) -> float:
    """Requests per second over ``n`` sequential GETs."""
    start = time.perf_counter()
    for _ in range(n):
        await client.get(SERVICE_URL)
    return n / (time.perf_counter() - start)


async def run(*, requests: int, slow_requests: int, rounds: int, log: Any) -> dict[str, Any]:
    results: dict[str, Any] = {"requests": requests, "rounds": rounds, "url": SERVICE_URL, "rows": []}
    async with Emulator(lifetime=3600, latency=0.0) as emulator:
        on_demand = aioiam.TokenManager(API_KEY, url=emulator.url)
        try:
            async with (
                aioiam.TokenManager(API_KEY, url=emulator.url) as running,
                contender(HAND_ROLLED, emulator.url) as hand_rolled,
                contender(IBM, emulator.url) as ibm,
            ):
                token = await running.get_token()
                await on_demand.get_token()
                await hand_rolled()
                await ibm()
                seen: dict[str, list[str]] = {}
                clients: dict[str, tuple[httpx.AsyncClient, int]] = {}
                setups: list[tuple[str, httpx.Auth | None, dict[str, str], int]] = [
                    (STATIC, None, {"Authorization": f"Bearer {token}"}, requests),
                    (AIOIAM, aioiam.IAMAuth(running), {}, requests),
                    (AIOIAM_ON_DEMAND, aioiam.IAMAuth(on_demand), {}, requests),
                    (HAND_ROLLED, _BearerFrom(hand_rolled), {}, requests),
                    (IBM, _BearerFrom(ibm), {}, slow_requests),
                ]
                for name, auth, headers, n in setups:
                    seen[name] = []
                    clients[name] = (httpx.AsyncClient(transport=_service(seen[name]), auth=auth, headers=headers), n)
                rates: dict[str, list[float]] = {name: [] for name in clients}
                gc.collect()
                gc.freeze()
                try:
                    for client, n in clients.values():  # warm-up
                        await _rate(client, max(1, n // 10))
                    for _ in range(rounds):
                        for name, (client, n) in clients.items():
                            rates[name].append(await _rate(client, n))
                finally:
                    gc.unfreeze()
                    for client, _ in clients.values():
                        await client.aclose()
        finally:
            await on_demand.aclose()
    for name, header in seen.items():
        if not header or not header[0].startswith("Bearer "):
            raise RuntimeError(f"{name}: the service saw no bearer token")
    static = max(rates[STATIC])
    for name, values in rates.items():
        best = max(values)
        row = {
            "contender": name,
            "requests_per_s": best,
            "requests_per_s_median": statistics.median(values),
            "ratio_to_static": best / static,
            "requests": clients[name][1],
            "rounds_per_s": values,
        }
        results["rows"].append(row)
        log(f"  auth {name:<18} {best:9.0f} req/s  {best / static:5.3f} of static")
    return results
