"""What tests of fleet mode on real Redis servers share: crowds of callers, aioiam's warnings,
and a :class:`Watcher` of what the servers hold (to show that nothing secret reaches them)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import pytest

from aioiam import TokenManager
from aioiam.testing._redis_server import RedisServer, Reply

KEY = "test-api-key"


async def crowd(fleet: Sequence[TokenManager], callers: int) -> list[set[str]]:
    """``callers`` concurrent ``get_token()`` calls on every manager at once: the tokens each
    manager's callers got. Any caller's error fails the test."""
    got: list[set[str]] = [set() for _ in fleet]

    async def call(index: int) -> None:
        got[index].add(await fleet[index].get_token())

    async with anyio.create_task_group() as tg:
        for index in range(len(fleet)):
            for _ in range(callers):
                tg.start_soon(call, index)
    return got


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    """aioiam's log messages at WARNING or above, in order."""
    return [r.getMessage() for r in caplog.records if r.name.startswith("aioiam") and r.levelno >= logging.WARNING]


def flat(reply: Reply) -> list[bytes]:
    """Every string in a parsed answer, nested arrays flattened (numbers as text)."""
    if isinstance(reply, list):
        return [part for each in reply for part in flat(each)]
    if isinstance(reply, bytes):
        return [reply]
    return [] if reply is None else [str(reply).encode()]


def contents(server: RedisServer, name: bytes) -> list[bytes]:
    """Everything a key holds, whatever its type (``[]`` if it is gone since it was listed)."""
    kind = server.call("TYPE", name)
    reads: dict[bytes, tuple[str | int, ...]] = {
        b"none": (),
        b"string": ("GET", name.decode()),
        b"hash": ("HGETALL", name.decode()),
        b"list": ("LRANGE", name.decode(), 0, -1),
        b"set": ("SMEMBERS", name.decode()),
        b"zset": ("ZRANGE", name.decode(), 0, -1, "WITHSCORES"),
        b"stream": ("XRANGE", name.decode(), "-", "+"),
    }
    assert isinstance(kind, bytes)
    assert kind in reads, f"a key of type {kind!r}: read it here too"
    return flat(server.call(*reads[kind])) if reads[kind] else []


@dataclass
class Watcher:
    """What the running ``servers`` hold under ``pattern``, looked at again and again while the
    fleet works (so a lock held for a moment is seen too): key names and the servers (ports) they
    were on, values, and the Pub/Sub channels subscribed to on any of them."""

    servers: Sequence[RedisServer]
    pattern: str = "*"
    names: dict[bytes, set[int]] = field(default_factory=dict)
    values: set[bytes] = field(default_factory=set)
    channels: set[bytes] = field(default_factory=set)

    def look(self) -> None:
        for server in self.servers:
            if not server.running:
                continue
            for name in flat(server.call("KEYS", self.pattern)):
                self.names.setdefault(name, set()).add(server.port)
                self.values.update(contents(server, name))
            self.channels.update(flat(server.call("PUBSUB", "CHANNELS")))

    @property
    def ports(self) -> set[int]:
        """Every server any of the names was on."""
        return set().union(*self.names.values())

    @asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        """Look every few milliseconds (in a thread: the sockets block) while the body runs, and
        once more at the end."""

        async def keep_looking() -> None:
            while True:
                await anyio.to_thread.run_sync(self.look)
                await anyio.sleep(0.005)

        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_looking)
            yield
            tg.cancel_scope.cancel()
        self.look()

    def assert_no_secret(self, namespace: str, tokens: set[str]) -> None:
        """Something was seen, every key is under ``namespace:``, and neither the API key nor any
        of ``tokens`` (nor any part of one) is in a key name, a value or a channel name."""
        assert self.names
        assert self.values
        assert all(name.startswith(f"{namespace}:".encode()) for name in self.names), self.names
        seen = [*self.names, *self.values, *self.channels]
        for token in tokens:
            for secret in (KEY, token, *token.split(".")):
                for each in seen:
                    assert secret.encode() not in each
