"""``RedisTokenCache``: a fleet's tokens in Redis, through coredis (the ``aioiam[redis]`` extra).

The store only: it keeps what ``_cache`` hands it (sealed bytes under keyed names) and says what
it holds. Four Redis calls, each one round trip:

- read: a Lua script returning ``TIME`` and ``GET entry`` together (Redis's own clock, read with
  the entry, times every token the same way on every host);
- acquire: a Lua script that takes the lock (``SET lock owner NX PX ttl``) only if the entry is
  still the one the flight judged, and returns the entry and ``TIME`` with the outcome: a token
  stored in between is read, not fetched again;
- publish: a Lua script that sets the entry with its expiry, deletes the lock if it is still the
  owner's, and ``PUBLISH``es on the channel;
- release: a Lua script that deletes the lock only if it is the owner's (compare and delete),
  and announces that.

A waiting flight subscribes to the channel (coredis's ``PubSub``, in a task of the flight's
session) and also reads again every ``poll_interval`` seconds. The three key names share a Redis
Cluster hash tag, so the scripts run on one slot. coredis needs Redis 6 or later (RESP3).

coredis is built on anyio and runs on asyncio and trio, like aioiam; its clients must be used
inside ``async with``. A cache made from a URL opens a client for each flight (a connection or
two, closed when the flight ends: a flight is one refresh per token lifetime); a ``client=`` you
pass must be open (inside its ``async with``) while managers use the cache.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

import anyio
import anyio.abc

from ._redaction import redactable
from ._timing import seconds

if TYPE_CHECKING:
    import coredis

__all__ = ["RedisTokenCache"]

DEFAULT_URL = "redis://localhost:6379/0"
_INSTALL = "pip install 'aioiam[redis]'"

#: The entry and the store's clock, in one round trip. A missing key is Lua ``false``, which
#: keeps its place in the table (a ``nil`` would end it).
READ = "local t = redis.call('TIME') return {t[1], t[2], redis.call('GET', KEYS[1])}"
#: Take the lock if the entry is still ARGV[3] ('' for none) and nobody holds it; with the entry
#: and the clock, as READ.
ACQUIRE = """
local t = redis.call('TIME')
local current = redis.call('GET', KEYS[1])
local taken = 0
if ((current == false and ARGV[3] == '') or current == ARGV[3])
    and redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  taken = 1
end
return {taken, t[1], t[2], current}
"""
#: Store the entry, release the owner's lock, announce.
PUBLISH = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
redis.call('PUBLISH', ARGV[4], 'stored')
return 1
"""
#: Compare and delete: only the owner releases its lock.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], 'released')
  return 1
end
return 0
"""


def _require_extra() -> None:
    try:
        import coredis  # noqa: F401
        import cryptography  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"aioiam.RedisTokenCache needs the redis extra: {_INSTALL}") from exc


def _milliseconds(value: float) -> int:
    return max(1, math.ceil(value * 1000))


class RedisTokenCache:
    """One token per credential for a whole fleet of processes, kept in Redis, encrypted.

    Pass it to every manager of the fleet: ``TokenManager(key, cache=aioiam.RedisTokenCache(url))``.
    For one credential, across every process on the same Redis, one request to IAM is in flight
    at a time, and one process refreshes per token lifetime; the others pick the token up from
    Redis. Each process still answers ``get_token()`` from memory: Redis is read only when a
    token is missing or due. Tokens are sealed with AES-GCM under a key derived from the
    credential, under key names nobody without the credential can tell apart (see
    ``docs/fleet.md``). When Redis fails, each process asks IAM itself, as without a cache,
    and logs it once.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS) or
            ``unix:///path?db=0``. Ignored when ``client`` is given.
        client: A coredis client you made (``coredis.Redis``, ``coredis.RedisCluster``, or a
            Sentinel's primary) and keep open (inside its ``async with``) while managers use
            the cache. Otherwise each flight opens one from ``url`` and closes it.
        namespace: The prefix of every key name (no braces).
        secret: Extra key material, at least 16 characters, the same in every process of the
            fleet. Required for sources whose credential rotates (``ContainerSource``,
            ``VPCInstanceSource``); mixed in with the credential's own secret otherwise.
        timeout: The longest one call to Redis may take, seconds (connecting included).
        poll_interval: While waiting for another process's token, read again this often if no
            announcement comes.
        recheck: After Redis failed, how long each process leaves it alone before trying again.

    Raises:
        ImportError: The ``aioiam[redis]`` extra is not installed.
        TypeError: An argument of the wrong type.
        ValueError: A URL that is not ``redis://``, ``rediss://`` or ``unix://``; both ``url``
            and ``client``; a blank namespace or one with braces; a short secret; a
            non-positive timeout or poll interval.
    """

    __slots__ = ("_client", "_location", "_namespace", "_poll", "_recheck", "_secret", "_secrets", "_timeout", "_url")

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        client: coredis.Redis[Any] | coredis.RedisCluster[Any] | None = None,
        namespace: str = "aioiam",
        secret: str | None = None,
        timeout: float = 0.5,
        poll_interval: float = 0.25,
        recheck: float = 5.0,
    ) -> None:
        _require_extra()
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, not {type(url).__name__}")
        if client is not None and url != DEFAULT_URL:
            raise ValueError("pass either url or client, not both")
        if client is not None and not callable(getattr(client, "pubsub", None)):
            raise TypeError(f"client must be a coredis client, not {type(client).__name__}")
        if not isinstance(namespace, str):
            raise TypeError(f"namespace must be a str, not {type(namespace).__name__}")
        if not namespace.strip() or "{" in namespace or "}" in namespace:
            raise ValueError("namespace must be a non-blank string without braces")
        if secret is not None:
            if not isinstance(secret, str):
                raise TypeError(f"secret must be a str, not {type(secret).__name__}")
            if len(secret.strip()) < 16:
                raise ValueError("secret must be at least 16 characters (a random string shared by the fleet)")
        self._timeout = seconds(timeout, "timeout", allow_zero=False)
        self._poll = seconds(poll_interval, "poll_interval", allow_zero=False)
        self._recheck = seconds(recheck, "recheck")
        self._namespace = namespace
        self._secret = secret
        self._client = client
        self._url = url
        hidden: list[str] = [secret] if secret else []
        if client is None:
            self._location, password = _location(url)
            if password:
                hidden += [password, quote(password, safe=""), url]
        else:
            self._location = f"client={type(client).__name__}"
        self._secrets = redactable(hidden)

    def __repr__(self) -> str:
        return f"RedisTokenCache({self._location}, namespace={self._namespace!r})"

    @property
    def namespace(self) -> str:
        """The prefix of every key name."""
        return self._namespace

    @property
    def secret(self) -> str | None:
        """The extra key material given as ``secret=``, if any."""
        return self._secret

    @property
    def secrets(self) -> Sequence[str]:
        """What never appears in a log or an error: ``secret=`` and the URL's password."""
        return self._secrets

    @property
    def timeout(self) -> float:
        """The longest one call to Redis may take, in seconds."""
        return self._timeout

    @property
    def poll_interval(self) -> float:
        """How often a waiting flight reads again when no announcement comes."""
        return self._poll

    @property
    def recheck(self) -> float:
        """How long a process leaves Redis alone after it failed."""
        return self._recheck

    @asynccontextmanager
    async def session(self, entry: str, lock: str, channel: str) -> AsyncIterator[_RedisSession]:
        """A connection for one flight; closed (with any subscription) when it ends."""
        async with self._connected() as client, anyio.create_task_group() as tg:
            session = _RedisSession(client, entry, lock, channel, tg, self._timeout)
            try:
                yield session
            finally:
                session.stop()  # a subscription ends with an UNSUBSCRIBE (one round trip)

    @asynccontextmanager
    async def _connected(self) -> AsyncIterator[coredis.Redis[Any] | coredis.RedisCluster[Any]]:
        if self._client is not None:
            yield self._client  # the owner's, open while managers use it
            return
        import coredis
        from coredis.retry import NoRetryPolicy

        client = coredis.Redis.from_url(
            self._url,
            connect_timeout=self._timeout,
            stream_timeout=self._timeout,
            retry_policy=NoRetryPolicy(),
            verify_version=False,
        )
        async with client:
            yield client


def _location(url: str) -> tuple[str, str | None]:
    """What ``repr`` shows of ``url`` (scheme, host, port, db; never credentials), and its password."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ValueError("url is not a valid Redis URL") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("url must start with redis://, rediss:// or unix://")
    password = unquote(parts.password) if parts.password else None
    if parts.scheme == "unix":
        return f"unix://{parts.path}", password
    if not parts.hostname:
        raise ValueError("url must name a host, as in redis://localhost:6379/0")
    db = parts.path.strip("/") or "0"
    return f"{parts.scheme}://{parts.hostname}:{port or 6379}/{db}", password


def _entry_and_clock(seconds_part: object, micros: object, blob: object) -> tuple[bytes | None, float]:
    if isinstance(blob, str):
        blob = blob.encode("ascii", "replace")
    if not isinstance(seconds_part, (bytes, str, int)) or not isinstance(micros, (bytes, str, int)):
        raise ValueError("Redis answered with something unexpected for TIME")
    return (blob if isinstance(blob, bytes) else None), int(seconds_part) + int(micros) / 1e6


class _RedisSession:
    """One flight's calls to Redis. Bounded by the caller (``_cache``); raises coredis's errors."""

    __slots__ = ("_channel", "_client", "_entry", "_lock", "_news", "_stop", "_tg", "_timeout")

    def __init__(
        self,
        client: coredis.Redis[Any] | coredis.RedisCluster[Any],
        entry: str,
        lock: str,
        channel: str,
        tg: anyio.abc.TaskGroup,
        timeout: float,
    ) -> None:
        self._client = client
        self._entry = entry
        self._lock = lock
        self._channel = channel
        self._tg = tg
        self._timeout = timeout
        self._news = anyio.Event()
        self._stop = anyio.Event()

    def stop(self) -> None:
        """End the subscription, if any (the session's task group then waits for it)."""
        self._stop.set()

    async def read(self) -> tuple[bytes | None, float]:
        reply = await self._client.eval(READ, [self._entry], [])
        if not isinstance(reply, list) or len(reply) != 3:
            raise ValueError("Redis answered the read with something unexpected")
        return _entry_and_clock(*reply)

    async def acquire(self, owner: str, ttl: float, seen: bytes | None) -> tuple[bool, bytes | None, float]:
        reply = await self._client.eval(
            ACQUIRE, [self._entry, self._lock], [owner, _milliseconds(ttl), seen if seen is not None else b""]
        )
        if not isinstance(reply, list) or len(reply) != 4:
            raise ValueError("Redis answered the lock with something unexpected")
        blob, now = _entry_and_clock(*reply[1:])
        return reply[0] == 1, blob, now

    async def publish(self, entry: bytes, ttl: float, owner: str) -> None:
        await self._client.eval(PUBLISH, [self._entry, self._lock], [entry, _milliseconds(ttl), owner, self._channel])

    async def release(self, owner: str) -> None:
        await self._client.eval(RELEASE, [self._lock], [owner, self._channel])

    async def watch(self) -> None:
        await self._tg.start(self._listen)

    async def wait(self, at_most: float) -> None:
        with anyio.move_on_after(at_most):
            await self._news.wait()
        if self._news.is_set():
            self._news = anyio.Event()

    async def _listen(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        started = False
        try:
            async with self._client.pubsub(
                channels=[self._channel],
                ignore_subscribe_messages=True,
                retry_policy=None,
                subscription_timeout=self._timeout,
            ) as pubsub:
                task_status.started()
                started = True
                async with anyio.create_task_group() as pump:
                    pump.start_soon(self._pump, pubsub)
                    await self._stop.wait()
                    pump.cancel_scope.cancel()
                # Unsubscribed first, coredis's pubsub closes at once; otherwise it waits for
                # more messages for its whole unsubscription timeout (0.1 s) as it closes.
                with anyio.move_on_after(self._timeout):
                    await pubsub.unsubscribe(self._channel)
        except Exception:
            if not started:
                raise
            self._news.set()  # the subscription broke: the waiter reads again now, then polls

    async def _pump(self, pubsub: Any) -> None:
        # Messages are read from the subscription's stream, not through a channel handler:
        # coredis installs a handler only after the subscription is confirmed, and a message
        # arriving in between would miss it.
        while True:
            if await pubsub.get_message() is not None:
                self._news.set()
