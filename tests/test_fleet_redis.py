"""Fleet mode against a real ``redis-server`` on loopback (started here; never skipped): what Redis
holds, several processes sharing one token, and the faults: Redis killed, restarted, slow,
holding garbage, and a fetcher killed while it holds the lock."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import aioiam
from aioiam import RetryPolicy, TokenManager
from aioiam.testing import FakeIAM, Fault
from aioiam.testing._redis_server import RedisServer
from tests.fleet_helpers import COREDIS_LEFTOVERS

ROOT = Path(__file__).resolve().parent.parent
KEY = "test-api-key"

pytestmark = [pytest.mark.real_time, *COREDIS_LEFTOVERS]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:  # raises (fails the tests) if redis-server cannot start
        yield server


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A server of this test's own, to kill and restart."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def iam() -> Iterator[tuple[FakeIAM, str]]:
    fake = FakeIAM(api_keys=None, lifetime=60, latency=0.05)
    with fake.serve_in_thread() as address:
        yield fake, address.url


def manager(iam_url: str, redis_url: str, namespace: str, **kwargs: Any) -> TokenManager:
    # A generous timeout: these tests count IAM requests, and a Redis call slower than the default
    # 0.5 s on a loaded machine would (by design) send the process to IAM on its own. Tests of a
    # slow Redis pass their own.
    options = {"timeout": 5.0, **kwargs.pop("cache_options", {})}
    cache = aioiam.RedisTokenCache(redis_url, namespace=namespace, **options)
    kwargs.setdefault("retry", RetryPolicy(request_timeout=3.0, timeout=20.0, initial_delay=0.05))
    return TokenManager(KEY, url=iam_url, cache=cache, **kwargs)


def keys(server: RedisServer, namespace: str) -> list[bytes]:
    answer = server.command("KEYS", f"{namespace}:*")
    return [line for line in answer.split(b"\r\n") if line.startswith(namespace.encode())]


def raw(server: RedisServer, key: bytes) -> bytes:
    return server.command("GET", key.decode())


# ------------------------------------------------------------------ in one process


@pytest.mark.anyio
async def test_managers_share_one_token_and_redis_sees_no_secret(
    redis_server: RedisServer, iam: tuple[FakeIAM, str], anyio_backend: Any
) -> None:
    _fake, url = iam
    namespace = f"share-{anyio_backend[0]}"
    a, b = manager(url, redis_server.url, namespace), manager(url, redis_server.url, namespace)
    try:
        token = await a.get_token()
        assert await b.get_token() == token
        assert (a.request_count, b.request_count) == (1, 0)
    finally:
        await a.aclose()
        await b.aclose()
    # The entry, and the fetcher's announcement; the lock was released.
    (name, done) = sorted(keys(redis_server, namespace), key=lambda key: b":done:" in key)
    assert name.endswith(b":token")
    assert re.fullmatch(rb"[^{]*\{[0-9a-f]{32}\}:done:[0-9a-f]{32}", done)
    assert name.split(b"}")[0] == done.split(b"}")[0]  # one hash slot
    value = raw(redis_server, name)
    (element,) = redis_server.command("LRANGE", done.decode(), 0, -1).split(b"\r\n")[2:-1:2]
    assert element == value.split(b"\r\n")[1]  # the sealed entry itself
    for secret in (token, *token.split("."), KEY):
        for seen in (name, value, done, element):
            assert secret.encode() not in seen
    ttl = int(redis_server.command("PTTL", name.decode())[1:])
    assert 40_000 < ttl <= 54_000  # the token's stale time: 60 s less a 6 s margin
    linger = int(redis_server.command("PTTL", done.decode())[1:])
    assert 0 < linger <= 14_000  # the lock's time: a 3 s request, two 5 s Redis calls, 1 s


@pytest.mark.anyio
async def test_a_client_of_ones_own_is_used_as_is(
    redis_server: RedisServer, iam: tuple[FakeIAM, str], anyio_backend: Any
) -> None:
    import coredis

    fake, url = iam
    async with coredis.Redis.from_url(redis_server.url) as client:
        cache = aioiam.RedisTokenCache(client=client, namespace=f"own-client-{anyio_backend[0]}")
        assert repr(cache) == f"RedisTokenCache(client=Redis, namespace='own-client-{anyio_backend[0]}')"
        a, b = TokenManager(KEY, url=url, cache=cache), TokenManager(KEY, url=url, cache=cache)
        try:
            assert await a.get_token() == await b.get_token()
            assert fake.requests == 1
        finally:
            await a.aclose()
            await b.aclose()


@pytest.mark.anyio
async def test_a_garbage_entry_is_ignored_and_replaced(
    redis_server: RedisServer, iam: tuple[FakeIAM, str], anyio_backend: Any
) -> None:
    fake, url = iam
    namespace = f"garbage-{anyio_backend[0]}"
    a = manager(url, redis_server.url, namespace)
    entry = a._settings.cache.keys.entry  # type: ignore[union-attr]
    redis_server.command("SET", entry, "aioiam1:not-a-sealed-entry")
    try:
        token = await a.get_token()
        assert fake.is_valid(token)
    finally:
        await a.aclose()
    assert b"not-a-sealed-entry" not in raw(redis_server, entry.encode())
    b = manager(url, redis_server.url, namespace)
    try:
        assert await b.get_token() == token
        assert b.request_count == 0
    finally:
        await b.aclose()


@pytest.mark.anyio
async def test_redis_killed_then_restarted(
    own_redis: RedisServer, iam: tuple[FakeIAM, str], caplog: pytest.LogCaptureFixture, anyio_backend: Any
) -> None:
    """Killed: callers keep getting tokens, from IAM directly; back: one fetch for the fleet again."""
    caplog.set_level(logging.WARNING, logger="aioiam")
    fake, url = iam
    skipped = [0.0]  # moved on by hand past the cooldown between two drops of one manager (see invalidate)
    # A stopped Redis refuses connections at once: the generous timeout costs nothing here.
    options = {"cache_options": {"recheck": 0.2}, "clock": lambda: time.monotonic() + skipped[0]}
    a, b = manager(url, own_redis.url, "kill", **options), manager(url, own_redis.url, "kill", **options)
    try:
        first = await a.get_token()
        assert await b.get_token() == first
        assert fake.requests == 1
        own_redis.stop()
        for m in (a, b):
            m.invalidate(first)
            assert fake.is_valid(await m.get_token())
        assert fake.requests == 3  # each asked IAM itself; nobody saw an error
        assert a._record.failures == 0
        assert b._record.failures == 0
        down = [r for r in caplog.records if "failed" in r.getMessage()]
        assert len(down) == 2
        own_redis.start()
        await anyio.sleep(0.3)  # past the recheck time
        skipped[0] = 10.0
        assert a.invalidate(await a.get_token())
        assert b.invalidate(await b.get_token())
        shared = await a.get_token()
        assert await b.get_token() == shared
        assert fake.requests == 4  # one fetch for both again
        assert len([r for r in caplog.records if "shared again" in r.getMessage()]) == 2
    finally:
        await a.aclose()
        await b.aclose()


@pytest.mark.anyio
async def test_a_paused_redis_bounds_the_callers_wait(
    own_redis: RedisServer, iam: tuple[FakeIAM, str], anyio_backend: Any
) -> None:
    fake, url = iam
    a = manager(url, own_redis.url, "slow", cache_options={"timeout": 0.3})
    own_redis.command("CLIENT", "PAUSE", 20_000, "WRITE")  # EVAL waits too, as if Redis hung
    try:
        started = time.monotonic()
        with anyio.fail_after(10):
            token = await a.get_token()
        assert time.monotonic() - started < 10  # far less than the pause: Redis was not waited for
        assert fake.is_valid(token)
        assert fake.requests == 1
    finally:
        own_redis.command("CLIENT", "UNPAUSE")
        await a.aclose()


@pytest.mark.anyio
async def test_the_redis_password_never_reaches_a_log_or_repr(
    own_redis: RedisServer, iam: tuple[FakeIAM, str], caplog: pytest.LogCaptureFixture, anyio_backend: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    own_redis.command("CONFIG", "SET", "requirepass", "right-password-123")
    fake, url = iam
    wrong = f"redis://:wrong-password-456@127.0.0.1:{own_redis.port}/0"
    a = TokenManager(KEY, url=url, cache=aioiam.RedisTokenCache(wrong))
    try:
        assert fake.is_valid(await a.get_token())  # Redis refused us: IAM directly
        assert "wrong-password-456" not in repr(a)
    finally:
        await a.aclose()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "failed" in text
    assert "wrong-password-456" not in text
    assert "right-password-123" not in text


@pytest.mark.anyio
async def test_every_waiter_gets_the_announcement_before_and_after_it_is_made(
    redis_server: RedisServer, anyio_backend: Any
) -> None:
    """The session's protocol on a real Redis: the lock names its holder; one push wakes every
    waiter blocked on the holder's list, and a waiter that comes later finds it at once."""
    tag = f"ns-{anyio_backend[0]}:{{{'0' * 32}}}"
    entry, lock, done = f"{tag}:token", f"{tag}:lock", f"{tag}:done"
    holder, other = "a" * 32, "b" * 32
    cache = aioiam.RedisTokenCache(redis_server.url, timeout=5.0, poll_interval=2.0)
    got: list[bytes | None] = []
    async with cache.session(entry, lock, done) as fetcher:
        assert (await fetcher.acquire(holder, 10.0, None))[:3] == (True, None, holder)

        async def wait_for_it() -> None:
            async with cache.session(entry, lock, done) as waiter:
                assert (await waiter.acquire(other, 10.0, None))[:3] == (False, None, holder)
                got.append(await waiter.wait(holder, 2.0))

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(wait_for_it)
            await anyio.sleep(0.2)  # they block (or a slow one blocks later: it finds it at once)
            await fetcher.publish(b"aioiam1:sealed", 60.0, holder, 10.0)
        async with cache.session(entry, lock, done) as late:
            got.append(await late.wait(holder, 2.0))
            assert (await late.acquire(other, 10.0, None))[:3] == (False, b"aioiam1:sealed", None)
        assert got == [b"aioiam1:sealed"] * 6
        assert redis_server.command("LLEN", f"{done}:{holder}") == b":1\r\n"  # rotated, not taken
        assert 0 < int(redis_server.command("PTTL", f"{done}:{holder}")[1:]) <= 10_000
        assert redis_server.command("EXISTS", lock) == b":0\r\n"
        # A holder that stores nothing announces that, and a wait with no announcement ends.
        assert (await fetcher.acquire(other, 10.0, b"aioiam1:sealed"))[:3] == (True, b"aioiam1:sealed", other)
        await fetcher.release(other, 10.0)
        assert redis_server.command("EXISTS", lock) == b":0\r\n"
        assert await fetcher.wait(other, 2.0) == b""
        assert await fetcher.wait("c" * 32, 0.05) is None


@pytest.mark.anyio
async def test_a_client_whose_replies_time_out_before_a_wait_ends_is_a_store_failure(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture, anyio_backend: Any
) -> None:
    """A client= of one's own must allow a reply longer than poll_interval: with less, the waiter
    falls back to IAM (one warning), and no caller sees an error."""
    import coredis

    caplog.set_level(logging.WARNING, logger="aioiam")
    fake = FakeIAM(api_keys=None, lifetime=60, latency=2.0)  # b's wait fails long before a's token
    namespace = f"short-replies-{anyio_backend[0]}"
    with fake.serve_in_thread() as address:
        async with coredis.Redis.from_url(redis_server.url, stream_timeout=0.5) as client:
            cache = aioiam.RedisTokenCache(client=client, namespace=namespace, timeout=5.0, poll_interval=2.5)
            a, b = TokenManager(KEY, url=address.url, cache=cache), TokenManager(KEY, url=address.url, cache=cache)
            tokens: list[str] = []
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(lambda: _append(tokens, a.get_token()))
                    await _until_locked(redis_server, namespace)
                    tokens.append(await b.get_token())  # its wait's reply times out: IAM itself
            finally:
                await a.aclose()
                await b.aclose()
    assert len(tokens) == 2
    assert all(fake.is_valid(token) for token in tokens)
    assert fake.requests == 2
    failed = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert [message for message in failed if "BLMOVE" in message], failed  # b's wait
    assert len(failed) <= 2, failed  # and a's publish, if it too took longer than 0.5 s (a loaded machine)


@pytest.mark.anyio
async def test_redis_killed_while_a_process_waits_for_the_fetcher(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture, anyio_backend: Any
) -> None:
    """Killed mid-flight: the waiter asks IAM itself, the fetcher keeps its own token; nobody
    sees an error."""
    caplog.set_level(logging.WARNING, logger="aioiam")
    fake = FakeIAM(api_keys=None, lifetime=60, latency=1.0)
    with fake.serve_in_thread() as address:
        a = manager(address.url, own_redis.url, "killed-mid-wait")
        b = manager(address.url, own_redis.url, "killed-mid-wait")
        tokens: list[str] = []
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: _append(tokens, a.get_token()))
                await _until_locked(own_redis, "killed-mid-wait")
                tg.start_soon(lambda: _append(tokens, b.get_token()))
                await anyio.sleep(0.3)  # b blocks on the fetcher's list
                own_redis.stop()
        finally:
            await a.aclose()
            await b.aclose()
    assert len(tokens) == 2
    assert all(fake.is_valid(token) for token in tokens)
    assert fake.requests == 2
    assert a._record.failures == 0
    assert b._record.failures == 0
    assert 1 <= len([r for r in caplog.records if "failed" in r.getMessage()]) <= 2  # b's, and a's store


async def _append(tokens: list[str], call: Awaitable[str]) -> None:
    tokens.append(await call)


async def _until_locked(server: RedisServer, namespace: str) -> None:
    with anyio.fail_after(20):
        while not any(name.endswith(b":lock") for name in keys(server, namespace)):  # noqa: ASYNC110 - Redis, polled
            await anyio.sleep(0.01)


# ------------------------------------------------------------------ several processes


def start_workers(count: int, iam_url: str, redis_url: str, **options: Any) -> list[subprocess.Popen[str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    arguments = [f"--{name.replace('_', '-')}={value}" for name, value in options.items()]
    workers = [
        subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "tests.fleet_worker", f"--iam={iam_url}", f"--redis={redis_url}", *arguments],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        for _ in range(count)
    ]
    for worker in workers:
        assert worker.stdout is not None
        line = worker.stdout.readline().strip()
        assert line == "ready", f"a worker did not start: {line!r}"
    return workers


def go(workers: list[subprocess.Popen[str]]) -> None:
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()


def results(workers: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    found = []
    for worker in workers:
        out, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0
        found.append(json.loads(out.strip().splitlines()[-1]))
    return found


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_fleet_of_processes_asks_iam_once_per_lifetime(redis_server: RedisServer, backend: str) -> None:
    """8 processes x 200 coroutines, one credential: one request for the first token, then one
    per refresh period, fleet-wide (no two requests within one period)."""
    lifetime = 2.0
    fake = FakeIAM(api_keys=None, lifetime=lifetime, latency=0.05)
    with fake.serve_in_thread() as address:
        # Redis calls may take seconds on a loaded two-core machine (nine processes, coverage): a
        # timeout that short would send a process to IAM on its own, by design. That fallback has
        # tests of its own; here every process must stay in the shared mode.
        workers = start_workers(
            8, address.url, redis_server.url, backend=backend, namespace=f"procs-{backend}", redis_timeout=10.0
        )
        go(workers)
        found = results(workers)
    assert all(r["failures"] == 0 for r in found)
    # A process counts a request as it starts it: a refresh due right at the window's end can be
    # counted, then cancelled by the close before IAM saw it (at most one: one flight at a time).
    assert fake.requests <= sum(r["requests"] for r in found) <= fake.requests + 1
    assert fake.max_in_flight == 1
    issued_at = sorted(fake.expires_at(token) - lifetime for token in fake.issued)  # type: ignore[operator]
    gaps = [later - earlier for earlier, later in itertools.pairwise(issued_at)]
    assert all(gap > lifetime / 2 for gap in gaps), gaps  # one request per refresh period
    assert 2 <= fake.requests <= 3  # 3 s of 2 s tokens, refreshed at 75-80%: the first and 1 or 2 more
    seen = set().union(*(r["tokens"] for r in found))
    assert seen <= set(fake.issued)


def test_a_fetcher_killed_while_holding_the_lock_blocks_the_fleet_no_longer_than_the_lock(
    own_redis: RedisServer,
) -> None:
    fake = FakeIAM(api_keys=None, lifetime=60, latency=0.05)
    fake.fail_next(1, Fault.hang())  # the first request never gets an answer
    with fake.serve_in_thread() as address:
        (holder,) = start_workers(1, address.url, own_redis.url, namespace="killed", request_timeout=2.0, coroutines=1)
        go([holder])
        deadline = time.monotonic() + 20
        while not any(name.endswith(b":lock") for name in keys(own_redis, "killed")):
            assert time.monotonic() < deadline, "the worker never took the lock"
            time.sleep(0.02)
        holder.kill()  # mid-fetch, holding the lock
        holder.communicate(timeout=10)

        async def after() -> float:
            m = manager(address.url, own_redis.url, "killed", retry=RetryPolicy(request_timeout=2.0))
            started = time.monotonic()
            try:
                assert fake.is_valid(await m.get_token())
            finally:
                await m.aclose()
            return time.monotonic() - started

        waited = anyio.run(after)
    lock_ttl = 2.0 + 2 * 0.5 + 1.0
    assert fake.requests == 2, fake.issued  # the hung one, and one after the lock lapsed
    assert waited < lock_ttl + 3.0, waited  # the lock's expiry, not the caller's 15 s
