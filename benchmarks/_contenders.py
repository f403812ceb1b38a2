"""The contenders: aioiam, and what asyncio users run today.

Each one is built for a benchmark by an async context manager that yields a ``get_token``
coroutine function, so every scenario drives every contender the same way:

- ``aioiam``: ``async with aioiam.TokenManager(...) as tm``, ``await tm.get_token()`` (background
  refresh, no clock read on the fast path).
- ``aioiam on demand``: the same manager without ``async with`` (the caller who finds the token
  due refreshes it; the fast path reads ``time.monotonic()``).
- ``hand-rolled (lock)``: :class:`HandRolledCache`, an ``asyncio.Lock`` around "fetch if missing
  or expiring" with a shared ``httpx.AsyncClient``: what most teams write.
- ``hand-rolled (event)``: :class:`HandRolledEventCache`, the same cache whose callers wait on one
  ``asyncio.Event`` while one task fetches: what teams write once the lock's queue bites.
- ``ibm-cloud-sdk-core``: ``IAMTokenManager.get_token`` called through ``asyncio.to_thread`` (how
  asyncio users call it today: called directly, its request blocks the event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
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
    "HAND_ROLLED_EVENT",
    "IBM",
    "GetToken",
    "HandRolledCache",
    "HandRolledEventCache",
    "contender",
    "ibm_token_manager",
]

GetToken = Callable[[], Awaitable[str]]

API_KEY = "test-api-key"
AIOIAM = "aioiam"
AIOIAM_ON_DEMAND = "aioiam on demand"
HAND_ROLLED = "hand-rolled (lock)"
HAND_ROLLED_EVENT = "hand-rolled (event)"
IBM = "ibm-cloud-sdk-core"
FLOOR = "floor: timer"
CONTENDERS = (AIOIAM, AIOIAM_ON_DEMAND, HAND_ROLLED, IBM)


class HandRolledCache:
    """What most teams write: an ``asyncio.Lock`` around "fetch if missing or expiring".

    It refreshes once 80% of the lifetime has passed (the rule of IBM's own SDK cores), inline, in
    the caller that holds the lock; every other caller queues on the lock meanwhile, and enters it
    one at a time once the token is in. A failed request raises to the caller holding the lock,
    and the next caller in the queue tries again.
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
                return await self._fetch()
            return self._token

    async def _fetch(self) -> str:
        """One token request; keeps the token and when to refresh it."""
        sent = self._clock()
        self.requests += 1
        response = await self._client.post(self._endpoint, data=self._form, headers={"Accept": "application/json"})
        response.raise_for_status()
        body = response.json()
        token = self._token = str(body["access_token"])
        self._refresh_at = sent + float(body["expires_in"]) * self._refresh_fraction
        return token


class _Flight:
    """One request of :class:`HandRolledEventCache` and its outcome, read once ``done`` is set."""

    __slots__ = ("done", "error", "task", "token")

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.token = ""
        self.error: Exception | None = None
        self.task: asyncio.Task[None] | None = None


class HandRolledEventCache(HandRolledCache):
    """The hand-rolled cache without the lock's queue: one task fetches, everyone waits on one Event.

    The first caller to find the token missing or due starts a task that makes the request (the
    same request as :class:`HandRolledCache`'s); it and every later caller wait on that request's
    ``asyncio.Event``, which wakes them all at once, and read its outcome (the token, or the error
    to raise). A fresh ``Event`` per request. While the token is fresh, a call checks the clock
    and returns without yielding; no lock is taken.
    """

    _flight: _Flight | None = None

    async def get_token(self) -> str:
        token = self._token
        if token is not None and self._clock() < self._refresh_at:
            return token
        flight = self._flight
        if flight is None:
            flight = self._flight = _Flight()
            flight.task = asyncio.get_running_loop().create_task(self._fly(flight))
        await flight.done.wait()
        if flight.error is not None:
            raise flight.error
        return flight.token

    async def _fly(self, flight: _Flight) -> None:
        try:
            flight.token = await self._fetch()
        except Exception as exc:
            flight.error = exc
        finally:
            self._flight = None
            flight.done.set()

    async def aclose(self) -> None:
        """Cancel a request still in flight (its waiters stay waiting: this cache has no closed state)."""
        flight = self._flight
        if flight is not None and flight.task is not None:
            flight.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flight.task


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
    elif name == HAND_ROLLED_EVENT:
        async with httpx.AsyncClient(transport=transport, timeout=10) as client:
            event_cache = HandRolledEventCache(
                API_KEY, url, client, clock=clock if clock is not None else time.monotonic
            )
            try:
                yield event_cache.get_token
            finally:
                await event_cache.aclose()
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
