"""An in-memory TokenCache for fleet tests on virtual time: a dict plays Redis, on the loop's clock."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

#: The store's clock runs this far ahead of the loop's, as Redis's Unix time would.
STORE_EPOCH = 1_800_000_000.0


class MemoryStore:
    """What every manager of a test fleet shares. ``down`` fails every call; ``latency`` slows it."""

    def __init__(self) -> None:
        self.values: dict[str, tuple[bytes | str, float]] = {}
        self.listeners: dict[str, set[MemorySession]] = {}
        self.down = False
        self.latency = 0.0
        self.calls: list[str] = []
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

    def announce(self, channel: str) -> None:
        for session in self.listeners.get(channel, set()):
            session.news.set()

    async def call(self, name: str) -> None:
        self.calls.append(name)
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
    async def session(self, entry: str, lock: str, channel: str) -> AsyncIterator[MemorySession]:
        session = MemorySession(self.store, entry, lock, channel)
        try:
            yield session
        finally:
            self.store.listeners.get(channel, set()).discard(session)


class MemorySession:
    def __init__(self, store: MemoryStore, entry: str, lock: str, channel: str) -> None:
        self.store = store
        self.entry = entry
        self.lock = lock
        self.channel = channel
        self.news = anyio.Event()

    async def read(self) -> tuple[bytes | None, float]:
        await self.store.call("read")
        value = self.store.get(self.entry)
        if isinstance(value, str):
            value = value.encode()
        return value, self.store.now()

    async def acquire(self, owner: str, ttl: float, seen: bytes | None) -> tuple[bool, bytes | None, float]:
        await self.store.call("acquire")
        current = self.store.get(self.entry)
        if isinstance(current, str):
            current = current.encode()
        taken = current == seen and self.store.get(self.lock) is None
        if taken:
            self.store.put(self.lock, owner, ttl)
        return taken, current, self.store.now()

    async def publish(self, entry: bytes, ttl: float, owner: str) -> None:
        await self.store.call("publish")
        self.store.put(self.entry, entry, ttl)
        if self.store.get(self.lock) == owner:
            del self.store.values[self.lock]
        self.store.announce(self.channel)

    async def release(self, owner: str) -> None:
        await self.store.call("release")
        if self.store.get(self.lock) == owner:
            del self.store.values[self.lock]
            self.store.announce(self.channel)

    async def watch(self) -> None:
        await self.store.call("watch")
        self.store.listeners.setdefault(self.channel, set()).add(self)

    async def wait(self, at_most: float) -> None:
        with anyio.move_on_after(at_most):
            await self.news.wait()
        if self.news.is_set():
            self.news = anyio.Event()
