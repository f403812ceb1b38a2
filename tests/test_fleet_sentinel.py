"""Fleet mode through a Sentinel's primary (``coredis.Sentinel(...).primary_for(name)`` as
``client=``), against a real primary, replica and sentinel on loopback (started here; never
skipped): one IAM request for managers that share it, nothing secret on the primary or the
replica, and a failover: the primary killed, callers served by IAM directly while it is down,
and the fleet sharing again through the promoted replica.

The failover is held (the sentinel does not judge the primary down) for as long as the test
needs the primary down, so what happens while it is down does not depend on how fast the
machine is; every other wait is for an outcome (a failover done, a token expired), bounded.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import coredis
import pytest
from coredis.connection import TCPLocation

import aioiam
from aioiam import RetryPolicy, TokenManager
from aioiam.testing import FakeIAM
from aioiam.testing._redis_server import RedisSentinel
from tests.fleet_helpers import COREDIS_LEFTOVERS
from tests.redis_watch import KEY, Watcher, crowd, warnings_of

NAME = "aioiam"
#: After the store failed, a manager leaves it alone this long (the failover test waits longer).
RECHECK = 1.0

pytestmark = [pytest.mark.real_time, *COREDIS_LEFTOVERS]


@pytest.fixture(scope="module")
def shared_sentinel() -> Iterator[RedisSentinel]:
    with RedisSentinel(name=NAME) as sentinel:  # raises (fails the tests) if anything cannot start
        yield sentinel


@pytest.fixture
def sentinel(shared_sentinel: RedisSentinel) -> RedisSentinel:
    """The module's primary, replica and sentinel, emptied first."""
    assert shared_sentinel.primary.call("FLUSHALL") == b"OK"
    return shared_sentinel


@pytest.fixture
def own_sentinel() -> Iterator[RedisSentinel]:
    """A primary, replica and sentinel of this test's own, to fail over."""
    with RedisSentinel(name=NAME) as sentinel:
        yield sentinel


# ------------------------------------------------------------------ helpers


@asynccontextmanager
async def primary_client(sentinel: RedisSentinel) -> AsyncIterator[coredis.Redis[bytes]]:
    """The Sentinel's primary for :data:`NAME`, open (the Sentinel's clients and the primary's
    both entered). Its ``stream_timeout`` is above the cache's ``poll_interval``, as aioiam
    requires of a ``client=``."""
    locations = [TCPLocation("127.0.0.1", each.port) for each in sentinel.sentinels]
    async with (
        coredis.Sentinel(locations, connect_timeout=5.0, stream_timeout=5.0) as manager,
        manager.primary_for(NAME) as client,
    ):
        yield client


def make_manager(client: coredis.Redis[bytes], iam_url: str, namespace: str) -> TokenManager:
    # A generous Redis timeout, as in test_fleet_redis.py: these tests count IAM requests, and a
    # Redis call slower than the default 0.5 s on a loaded machine would send a process to IAM.
    cache = aioiam.RedisTokenCache(client=client, namespace=namespace, timeout=5.0, recheck=RECHECK)
    retry = RetryPolicy(request_timeout=3.0, timeout=20.0, initial_delay=0.05)
    return TokenManager(KEY, url=iam_url, cache=cache, retry=retry)


def managers(
    stack: AsyncExitStack, client: coredis.Redis[bytes], iam_url: str, namespace: str, count: int
) -> list[TokenManager]:
    made = [make_manager(client, iam_url, namespace) for _ in range(count)]
    for each in made:
        stack.push_async_callback(each.aclose)
    return made


async def until_expired(fake: FakeIAM, tokens: set[str]) -> None:
    """Sleep until IAM counts none of ``tokens`` as valid any more (so no manager holds one as
    fresh, and no entry holding one is left in Redis: an entry expires before its token)."""
    ends = [fake.expires_at(token) for token in tokens]
    assert all(end is not None for end in ends)
    latest = max(end for end in ends if end is not None)
    await anyio.sleep(max(0.0, latest - fake.wall_clock()) + 0.1)  # + the managers' clocks against IAM's
    assert not any(fake.is_valid(token) for token in tokens)


# ------------------------------------------------------------------ tests


@pytest.mark.anyio
async def test_managers_share_one_token_through_the_sentinels_primary(
    sentinel: RedisSentinel, caplog: pytest.LogCaptureFixture, anyio_backend: Any
) -> None:
    """3 managers x 20 callers: one IAM request for all; the keys are on the primary (and copied
    to the replica), and neither the API key nor the token (nor any part of it) is in a key
    name, a value or a channel name on either, looked at all along a slow fetch."""
    caplog.set_level(logging.WARNING, logger="aioiam")
    fake = FakeIAM(api_keys=None, lifetime=60, latency=0.3)  # a slow fetch: the lock is seen
    watcher = Watcher(sentinel.servers)
    with fake.serve_in_thread() as address:
        async with primary_client(sentinel) as client, AsyncExitStack() as stack:
            fleet = managers(stack, client, address.url, "shared", 3)
            async with watcher.watching():
                got = await crowd(fleet, 20)
            tokens = set().union(*got)
            assert len(tokens) == 1
            assert fake.requests == 1
            assert sum(m.request_count for m in fleet) == 1
            # A manager made now adopts the stored token: no request of its own.
            (late,) = managers(stack, client, address.url, "shared", 1)
            assert await late.get_token() in tokens
            assert late.request_count == 0
            assert fake.requests == 1
    assert sentinel.primary.call("DBSIZE") != 0
    watcher.assert_no_secret("shared", tokens)
    assert warnings_of(caplog) == []


@pytest.mark.anyio
async def test_a_failover_serves_every_caller_and_the_fleet_shares_again(
    own_sentinel: RedisSentinel, caplog: pytest.LogCaptureFixture, anyio_backend: Any
) -> None:
    """The primary killed while the fleet holds a token that every manager then drops (as after
    a 401): while the primary is down, every caller gets a valid token, each manager's from IAM
    directly, with one warning each and no error; after the sentinel has promoted the replica
    and the fallback's recheck time has passed, the next expiry costs the fleet one request,
    through the new primary, and a manager made then adopts the token stored there."""
    caplog.set_level(logging.WARNING, logger="aioiam")
    # Short lives: the first token and the fallback's are expired (and their entries gone from
    # Redis, the replicated one included) by the time the fleet shares again.
    fake = FakeIAM(api_keys=None, lifetime=4, latency=0.05)
    old = own_sentinel.primary
    with fake.serve_in_thread() as address:
        async with primary_client(own_sentinel) as client, AsyncExitStack() as stack:
            fleet = managers(stack, client, address.url, "failover", 3)
            (first,) = set().union(*await crowd(fleet, 20))
            assert fake.requests == 1
            assert warnings_of(caplog) == []

            # Down: each manager asks IAM itself, once, and says so once.
            fake.lifetime = 3
            with own_sentinel.failover_held():
                killed = own_sentinel.kill_primary()
                for each in fleet:
                    assert each.invalidate(first)
                during = await crowd(fleet, 20)  # raises if any caller got an error
                assert all(len(got) == 1 for got in during)
                alone = set().union(*during)
                assert len(alone) == len(fleet)
                assert all(fake.is_valid(token) for token in alone)
                assert fake.requests == 1 + len(fleet)
                down = warnings_of(caplog)
                assert len(down) == len(fleet), down
                assert all("failed" in message for message in down)
                # Served from memory meanwhile: no request, no warning more.
                assert set().union(*await crowd(fleet, 20)) == alone
                assert fake.requests == 1 + len(fleet)

            # The sentinel promotes the replica; the fleet's tokens run out meanwhile (their
            # lives, 3 s and more after the store failed, are well past RECHECK).
            promoted = await anyio.to_thread.run_sync(own_sentinel.wait_failover, killed)
            assert promoted is not old  # (it says ROLE master: wait_failover checked)
            await until_expired(fake, {first, *alone})

            # Up again, through the new primary: one request for the whole fleet.
            fake.lifetime = 60
            watcher = Watcher([promoted])
            async with watcher.watching():
                after = set().union(*await crowd(fleet, 20))
            assert len(after) == 1
            (shared,) = after
            assert shared not in alone
            assert fake.is_valid(shared)
            assert fake.requests == 2 + len(fleet)
            assert sum(m.request_count for m in fleet) == 2 + len(fleet)
            messages = warnings_of(caplog)
            assert len(messages) == 2 * len(fleet), messages
            assert all("failed" in message for message in messages[: len(fleet)])  # in that order
            assert all("works again" in message for message in messages[len(fleet) :])

            # A manager made now adopts the token stored on the new primary.
            (late,) = managers(stack, client, address.url, "failover", 1)
            assert await late.get_token() == shared
            assert late.request_count == 0
            assert fake.requests == 2 + len(fleet)
    watcher.assert_no_secret("failover", {shared})
    assert len(warnings_of(caplog)) == 2 * len(fleet)


def test_a_sentinel_setup_that_cannot_start_fails_loudly() -> None:
    """Never a skip: a server that does not start is a RuntimeError, and nothing is left running."""
    false = shutil.which("false")
    assert false is not None
    broken = RedisSentinel(binary=false)
    with pytest.raises(RuntimeError, match="exited at start"), broken:
        pytest.fail("the sentinel setup started")
    every = [*broken.servers, *broken.sentinels]
    assert not any(server.running for server in every)
    assert not any(Path(server._dir).exists() for server in every)
