"""The contenders: aioiam, and what asyncio users run today.

Each one is built for a benchmark by an async context manager that yields a ``get_token``
coroutine function, so every scenario drives every contender the same way:

- ``aioiam``: ``async with aioiam.TokenManager(...) as tm``, ``await tm.get_token()`` (background
  refresh, no clock read on the fast path).
- ``aioiam on demand``: the same manager without ``async with`` (the caller who finds the token
  due refreshes it; the fast path reads ``time.monotonic()``).
- ``hand-rolled``: :class:`HandRolledCache`, an ``asyncio.Lock`` around "fetch if missing or
  expiring" with a shared ``httpx.AsyncClient``: what most teams write.
- ``ibm-cloud-sdk-core``: ``IAMTokenManager.get_token`` called through ``asyncio.to_thread`` (how
  asyncio users call it today: called directly, its request blocks the event loop).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx

import aioiam

__all__ = [
    "AIOIAM",
    "AIOIAM_ON_DEMAND",
    "API_KEY",
    "CONTENDERS",
    "FLOOR",
    "HAND_ROLLED",
    "IBM",
    "GetToken",
    "HandRolledCache",
    "contender",
    "ibm_token_manager",
]

GetToken = Callable[[], Awaitable[str]]

API_KEY = "test-api-key"
AIOIAM = "aioiam"
AIOIAM_ON_DEMAND = "aioiam on demand"
HAND_ROLLED = "hand-rolled"
IBM = "ibm-cloud-sdk-core"
FLOOR = "floor: timer"
CONTENDERS = (AIOIAM, AIOIAM_ON_DEMAND, HAND_ROLLED, IBM)


class HandRolledCache:
    """What most teams write: an ``asyncio.Lock`` around "fetch if missing or expiring".

    It refreshes once 80% of the lifetime has passed (the rule of IBM's own SDK cores), inline, in
    the caller that holds the lock; every other caller queues on the lock meanwhile. A failed
    request raises to the caller holding the lock, and the next caller in the queue tries again.
    """

    def __init__(
        self,
        api_key: str,
        url: str,
        client: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.monotonic,
        refresh_fraction: float = 0.8,
    ) -> None:
        self._endpoint = url.rstrip("/") + "/identity/token"
        self._form = {
            "grant_type": "urn:ibm:params:oauth:grant-type:apikey",
            "apikey": api_key,
            "response_type": "cloud_iam",
        }
        self._client = client
        self._clock = clock
        self._refresh_fraction = refresh_fraction
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0
        self.requests = 0

    async def get_token(self) -> str:
        async with self._lock:
            if self._token is None or self._clock() >= self._refresh_at:
                sent = self._clock()
                self.requests += 1
                response = await self._client.post(
                    self._endpoint, data=self._form, headers={"Accept": "application/json"}
                )
                response.raise_for_status()
                body = response.json()
                self._token = str(body["access_token"])
                self._refresh_at = sent + float(body["expires_in"]) * self._refresh_fraction
            return self._token


def ibm_token_manager(url: str) -> Any:
    """A fresh ``ibm_cloud_sdk_core.token_managers.iam_token_manager.IAMTokenManager``."""
    try:
        from ibm_cloud_sdk_core.token_managers.iam_token_manager import IAMTokenManager
    except ImportError as exc:  # pragma: no cover - a setup problem, said plainly
        raise SystemExit("ibm-cloud-sdk-core is missing: pip install -e '.[bench]'") from exc
    return IAMTokenManager(API_KEY, url=url)


@asynccontextmanager
async def contender(
    name: str,
    url: str,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], float] | None = None,
    retry: aioiam.RetryPolicy | None = None,
) -> AsyncIterator[GetToken]:
    """A fresh instance of contender ``name`` (no token yet), as a ``get_token`` function.

    ``transport`` (an in-process IAM) and ``clock`` (a virtual one) are for the outage scenario;
    the ibm-cloud-sdk-core contender supports neither.
    """
    if name in (AIOIAM, AIOIAM_ON_DEMAND):
        manager = aioiam.TokenManager(
            API_KEY,
            url=url,
            transport=transport,
            clock=clock if clock is not None else time.monotonic,
            retry=retry,
        )
        if name == AIOIAM:
            async with manager:
                yield manager.get_token
        else:
            try:
                yield manager.get_token
            finally:
                await manager.aclose()
    elif name == HAND_ROLLED:
        async with httpx.AsyncClient(transport=transport, timeout=10) as client:
            cache = HandRolledCache(API_KEY, url, client, clock=clock if clock is not None else time.monotonic)
            yield cache.get_token
    elif name == IBM:
        if transport is not None or clock is not None:
            raise ValueError("ibm-cloud-sdk-core runs only on the wall clock, over real HTTP")
        manager = ibm_token_manager(url)

        async def get_token() -> str:
            token: str = await asyncio.to_thread(manager.get_token)
            return token

        yield get_token
    else:
        raise ValueError(f"unknown contender {name!r}")
