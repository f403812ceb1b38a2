"""Fleet mode through ``coredis.RedisCluster``, against a real three-node Redis Cluster on loopback
(started here with plain commands; never skipped): one IAM request for managers that share the
cluster, each credential's keys on one slot of one node and credentials spread over the nodes,
nothing secret on any node, and the node holding a credential's slot killed.

Only the public API and what the nodes hold are looked at (no key name is derived here, no script
is called), so the tests hold however the protocol between aioiam and Redis changes, as long as
what ``docs/fleet.md`` promises still holds: every key named ``<namespace>:...``, a credential's
keys (a lock apart from the entry) under one hash tag.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import coredis
import pytest
from coredis.typing import Node

import aioiam
from aioiam import RetryPolicy, TokenManager
from aioiam.testing import FakeIAM
from aioiam.testing._redis_server import RedisCluster
from tests.fleet_helpers import COREDIS_LEFTOVERS
from tests.redis_watch import KEY, Watcher, crowd, warnings_of

#: Each test makes credentials until their keys are on every node, at most this many. Where a
#: credential's keys land depends on FakeIAM's port (part of the token's identity), so it changes
#: from run to run: all of 60 credentials on two nodes or fewer happens with odds of about 1e-10.
MAX_CREDENTIALS = 60

pytestmark = [pytest.mark.real_time, *COREDIS_LEFTOVERS]


# ------------------------------------------------------------------ clusters


@dataclass
class Clusters:
    """The module's clusters, started together: Redis makes a primary wait about 2 s after it
    starts before it serves, and clusters launched together wait those 2 s together."""

    shared: RedisCluster | None
    spares: list[RedisCluster] = field(default_factory=list)


def _tests_using(request: pytest.FixtureRequest, fixture: str) -> int:
    """How many of this module's selected tests use ``fixture``."""
    return sum(
        1
        for item in request.session.items
        if isinstance(item, pytest.Function) and item.module is request.module and fixture in item.fixturenames
    )


@pytest.fixture(scope="module")
def clusters(request: pytest.FixtureRequest) -> Iterator[Clusters]:
    with ExitStack() as stack:
        started: list[RedisCluster] = []
        for _ in range(min(1, _tests_using(request, "cluster")) + _tests_using(request, "own_cluster")):
            # One after the other: a cluster picks its ports when made, and holds them once launched.
            each = RedisCluster()
            stack.callback(each.__exit__)
            each.launch()  # raises (fails the tests) if a node cannot start
            started.append(each)
        for each in started:
            each.wait_ready()
        shared = started.pop(0) if _tests_using(request, "cluster") else None
        yield Clusters(shared, started)


@pytest.fixture
def cluster(clusters: Clusters) -> RedisCluster:
    """The module's shared cluster, every node emptied first."""
    shared = clusters.shared
    assert shared is not None
    for node in shared.nodes:
        if not node.running:
            raise RuntimeError(f"a node of the shared cluster (port {node.port}) is down: a test killed it")
        assert node.call("FLUSHALL") == b"OK"
    return shared


@pytest.fixture
def own_cluster(clusters: Clusters) -> Iterator[RedisCluster]:
    """A cluster of this test's own, to kill a node of."""
    spare = clusters.spares.pop() if clusters.spares else None
    mine = spare or RedisCluster()
    try:
        if spare is None:  # more users than counted (should not happen): one paying its 2 s alone
            mine.launch()
        mine.wait_ready()
        yield mine
    finally:
        mine.__exit__()


# ------------------------------------------------------------------ helpers


def cluster_client(cluster: RedisCluster) -> coredis.RedisCluster[bytes]:
    """A cluster client, to be used inside ``async with``; any node would do as a startup node,
    all are given."""
    nodes = [Node(host="127.0.0.1", port=node.port) for node in cluster.nodes]
    return coredis.RedisCluster(startup_nodes=nodes, connect_timeout=5.0, stream_timeout=5.0)


def manager(client: coredis.RedisCluster[bytes], iam_url: str, namespace: str, api_key: str = KEY) -> TokenManager:
    # A generous Redis timeout, as in test_fleet_redis.py: these tests count IAM requests, and a
    # Redis call slower than the default 0.5 s on a loaded machine would send a process to IAM.
    cache = aioiam.RedisTokenCache(client=client, namespace=namespace, timeout=5.0)
    retry = RetryPolicy(request_timeout=3.0, timeout=20.0, initial_delay=0.05)
    return TokenManager(api_key, url=iam_url, cache=cache, retry=retry)


async def managers(
    stack: AsyncExitStack, client: coredis.RedisCluster[bytes], iam_url: str, namespace: str, count: int, **kw: Any
) -> list[TokenManager]:
    made = [manager(client, iam_url, namespace, **kw) for _ in range(count)]
    for each in made:
        stack.push_async_callback(each.aclose)
    return made


# ------------------------------------------------------------------ tests


@pytest.mark.anyio
async def test_managers_on_a_cluster_ask_iam_once_per_lifetime(
    cluster: RedisCluster, caplog: pytest.LogCaptureFixture, anyio_backend: Any
) -> None:
    """3 managers x 50 callers: one request for the first token; once it has expired (and with
    it Redis's copy), one more for the whole fleet."""
    caplog.set_level(logging.WARNING, logger="aioiam")
    lifetime = 3.0  # refreshed from 2.25 s on: the first crowd, served in well under 0.1 s, is long done
    fake = FakeIAM(api_keys=None, lifetime=lifetime, latency=0.05)
    with fake.serve_in_thread() as address:
        async with cluster_client(cluster) as client, AsyncExitStack() as stack:
            fleet = await managers(stack, client, address.url, "lifetime", 3)
            first = set().union(*await crowd(fleet, 50))
            assert len(first) == 1
            assert fake.requests == 1
            assert sum(m.request_count for m in fleet) == 1
            # Past the token's expiry (and so past every manager's refresh time, jitter included),
            # no manager can hand it out any more: all 150 callers wait for the fleet's next one.
            await anyio.sleep(lifetime + 0.1)
            second = set().union(*await crowd(fleet, 50))
            assert len(second) == 1
            assert second != first
            assert fake.requests == 2  # one more, fleet-wide
            assert sum(m.request_count for m in fleet) == 2
            assert fake.max_in_flight == 1
    assert warnings_of(caplog) == []  # the cluster never failed a call: nobody asked IAM alone


@pytest.mark.anyio
async def test_a_credentials_keys_share_one_slot_and_credentials_spread_over_the_nodes(
    cluster: RedisCluster, caplog: pytest.LogCaptureFixture, anyio_backend: Any
) -> None:
    """Each credential's keys (its lock while a fetch runs, then its entry) are on one slot, on
    the node serving that slot; credentials of one fleet land on every node, so the client's
    routing to each node is exercised, and a second manager is served from whichever node."""
    caplog.set_level(logging.WARNING, logger="aioiam")
    fake = FakeIAM(api_keys=None, lifetime=60, latency=0.3)  # the first fetch slow: its lock is seen
    holders: dict[str, int] = {}
    with fake.serve_in_thread() as address:
        async with cluster_client(cluster) as client, AsyncExitStack() as stack:
            for index in range(MAX_CREDENTIALS):
                namespace = f"spread{index}"
                a, b = await managers(stack, client, address.url, namespace, 2, api_key=f"{KEY}-{index}")
                watcher = Watcher(cluster.nodes, f"{namespace}:*")
                async with watcher.watching():
                    token = await a.get_token()
                assert await b.get_token() == token  # from the cluster: b sent no request
                assert (a.request_count, b.request_count) == (1, 0)
                assert len(watcher.ports) == 1, watcher.names  # every key of the credential on one node
                (port,) = watcher.ports
                slots = {cluster.keyslot(name) for name in watcher.names}
                assert len(slots) == 1, watcher.names  # ... under one hash tag: one slot
                assert cluster.node_of(slots.pop()).port == port
                if index == 0:
                    assert len(watcher.names) >= 2, watcher.names  # the lock and the entry, at least
                    fake.latency = 0.0
                holders[namespace] = port
                if len(set(holders.values())) == len(cluster.nodes):
                    break
    assert set(holders.values()) == {node.port for node in cluster.nodes}, holders
    assert fake.requests == len(holders)
    assert warnings_of(caplog) == []


@pytest.mark.anyio
async def test_no_node_sees_a_secret(cluster: RedisCluster, anyio_backend: Any) -> None:
    """Neither the API key nor the token (nor any part of it) in a key name, a value or a channel
    name on any node, looked at all along a slow fetch with waiters on three managers."""
    fake = FakeIAM(api_keys=None, lifetime=60, latency=0.3)
    watcher = Watcher(cluster.nodes)
    with fake.serve_in_thread() as address:
        async with cluster_client(cluster) as client, AsyncExitStack() as stack:
            fleet = await managers(stack, client, address.url, "secrets", 3)
            async with watcher.watching():
                tokens = set().union(*await crowd(fleet, 20))
    assert len(tokens) == 1
    assert fake.requests == 1
    (token,) = tokens
    watcher.assert_no_secret("secrets", {token})


@pytest.mark.anyio
async def test_the_node_holding_the_slot_killed(
    own_cluster: RedisCluster, caplog: pytest.LogCaptureFixture, anyio_backend: Any
) -> None:
    """Killed (SIGKILL) with the token's entry on it: every caller still gets a token, each
    manager from IAM directly, and each manager logs one warning; nobody sees an error."""
    caplog.set_level(logging.WARNING, logger="aioiam")
    fake = FakeIAM(api_keys=None, lifetime=60, latency=0.05)
    with fake.serve_in_thread() as address:
        async with cluster_client(own_cluster) as client, AsyncExitStack() as stack:
            fleet = await managers(stack, client, address.url, "kill", 3)
            (first,) = set().union(*await crowd(fleet, 20))
            assert fake.requests == 1
            watcher = Watcher(own_cluster.nodes, "kill:*")
            watcher.look()
            (port,) = watcher.ports
            (holder,) = (node for node in own_cluster.nodes if node.port == port)
            holder.stop()
            for each in fleet:
                assert each.invalidate(first)  # as after a 401: every manager needs a new token
            after = await crowd(fleet, 20)  # raises if any caller got an error
            assert all(len(got) == 1 for got in after)
            tokens = set().union(*after)
            assert len(tokens) == len(fleet)  # each manager asked IAM itself...
            assert all(fake.is_valid(token) for token in tokens)
            assert fake.requests == 1 + len(fleet)  # ... once
            down = warnings_of(caplog)
            assert len(down) == len(fleet), down  # one warning per manager
            assert all("failed" in message for message in down)
            # Served from memory from now on: no request, no warning more.
            assert set().union(*await crowd(fleet, 20)) == tokens
            assert fake.requests == 1 + len(fleet)
            assert len(warnings_of(caplog)) == len(fleet)


def test_a_cluster_that_cannot_start_fails_loudly() -> None:
    """Never a skip: a node that does not start is a RuntimeError, and nothing is left running."""
    false = shutil.which("false")
    assert false is not None
    broken = RedisCluster(binary=false)
    with pytest.raises(RuntimeError, match="exited at start"), broken:
        pytest.fail("the cluster started")
    assert not any(node.running for node in broken.nodes)
    assert not any(Path(node._dir).exists() for node in broken.nodes)
