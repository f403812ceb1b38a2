"""An in-memory TokenCache for fleet tests on virtual time: a dict plays Redis, on the loop's clock."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

#: Marks for tests on a real Redis: coredis leaves the memory streams of a connection that never
#: connected (Redis down, a killed node) to the garbage collector, which warns; not aioiam's to
#: close. The warnings are ignored, and collected at the end of each test, where the filters apply.
COREDIS_LEFTOVERS = [
    pytest.mark.filterwarnings("ignore:Exception ignored in.*MemoryObject:pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore:Unclosed <MemoryObject:ResourceWarning"),
    pytest.mark.usefixtures("collect_coredis_garbage"),
]

#: The store's clock runs this far ahead of the loop's, as Redis's Unix time would.
STORE_EPOCH = 1_800_000_000.0


class MemoryStore:
    """What every manager of a test fleet shares. ``down`` fails every call; ``latency`` slows it.

    ``values`` plays Redis's strings, ``lists`` its lists (the announcements), each with an expiry
    on the store's clock. ``calls`` records every call by name, in order; ``flights`` the same,
    one list per session (per flight).
    """

    def __init__(self) -> None:
        self.values: dict[str, tuple[bytes | str, float]] = {}
        self.lists: dict[str, tuple[list[bytes], float]] = {}
        self.pushed: dict[str, anyio.Event] = {}
        self.down = False
        self.latency = 0.0
        self.calls: list[str] = []
        self.flights: list[list[str]] = []
        self.skew = 0.0  # added to the store's clock

    def now(self) -> float:
        return anyio.current_time() + STORE_EPOCH + self.skew

    def get(self, key: str) -> bytes | str | None:
        found = self.values.get(key)
        if found is None or found[1] <= self.now():
            self.values.pop(key, None)
            return None
        return found[0]

    def put(self, key: str, value: bytes | str, ttl: float = math.inf) -> None:
        self.values[key] = (value, self.now() + ttl)

    def announced(self, key: str) -> bytes | None:
        """The latest announcement on ``key`` (what a waiter's rotation gets first), if any."""
        found = self.lists.get(key)
        if found is None or found[1] <= self.now():
            self.lists.pop(key, None)
            return None
        return found[0][-1]

    def announce(self, key: str, entry: bytes, ttl: float = math.inf) -> None:
        """Push an announcement (an entry, ``b""`` for a release) onto ``key`` and set its expiry,
        waking every waiter on it."""
        elements = self.lists[key][0] if self.announced(key) is not None else []
        self.lists[key] = ([*elements, entry], self.now() + ttl)
        event = self.pushed.pop(key, None)
        if event is not None:
            event.set()

    async def call(self, name: str, flight: list[str]) -> None:
        self.calls.append(name)
        flight.append(name)
        if self.latency:
            await anyio.sleep(self.latency)
        if self.down:
            raise ConnectionError("memory store is down")


class MemoryCache:
    """A :class:`aioiam.TokenCache` over a :class:`MemoryStore`."""

    def __init__(
        self,
        store: MemoryStore,
        *,
        secret: str | None = None,
        namespace: str = "test",
        timeout: float = 0.5,
        poll_interval: float = 0.25,
        recheck: float = 5.0,
    ) -> None:
        self.store = store
        self.namespace = namespace
        self.secret = secret
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.recheck = recheck

    def __repr__(self) -> str:
        return "MemoryCache()"

    @asynccontextmanager
    async def session(self, entry: str, lock: str, done: str) -> AsyncIterator[MemorySession]:
        yield MemorySession(self.store, entry, lock, done)


class MemorySession:
    """A :class:`aioiam.CacheSession`: each call one step, as Redis runs a script."""

    def __init__(self, store: MemoryStore, entry: str, lock: str, done: str) -> None:
        self.store = store
        self.entry = entry
        self.lock = lock
        self.done = done
        self.calls: list[str] = []
        store.flights.append(self.calls)

    def _entry(self) -> bytes | None:
        value = self.store.get(self.entry)
        return value.encode() if isinstance(value, str) else value

    def _holder(self) -> str | None:
        value = self.store.get(self.lock)
        return value.decode() if isinstance(value, bytes) else value

    async def acquire(self, owner: str, ttl: float, seen: bytes | None) -> tuple[bool, bytes | None, str | None, float]:
        await self.store.call("acquire", self.calls)
        current = self._entry()
        taken = current == seen and self.store.get(self.lock) is None
        if taken:
            self.store.put(self.lock, owner, ttl)
        return taken, current, self._holder(), self.store.now()

    async def publish(self, entry: bytes, ttl: float, owner: str, linger: float) -> None:
        await self.store.call("publish", self.calls)
        self.store.put(self.entry, entry, ttl)
        if self._holder() == owner:
            del self.store.values[self.lock]
        self.store.announce(f"{self.done}:{owner}", entry, linger)

    async def release(self, owner: str, linger: float) -> None:
        await self.store.call("release", self.calls)
        if self._holder() == owner:
            del self.store.values[self.lock]
        self.store.announce(f"{self.done}:{owner}", b"", linger)

    async def wait(self, holder: str, at_most: float) -> bytes | None:
        await self.store.call("wait", self.calls)
        key = f"{self.done}:{holder}"
        with anyio.move_on_after(at_most):
            while (found := self.store.announced(key)) is None:
                await self.store.pushed.setdefault(key, anyio.Event()).wait()
            return found
        return None
