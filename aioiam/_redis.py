"""``RedisTokenCache``: a fleet's tokens in Redis, through coredis (the ``aioiam[redis]`` extra).

The store only: it keeps what ``_cache`` hands it (sealed bytes under keyed names) and says what
it holds. Four Redis calls, each one round trip:

- acquire: a Lua script that takes the lock (``SET lock owner NX PX ttl``) only if the entry is
  still the one the flight judged (none, on a flight's first step), and returns the outcome, the
  entry, the lock's holder and ``TIME`` (Redis's own clock, read with the entry, times every
  token the same way on every host);
- publish: a Lua script that sets the entry with its expiry, deletes the lock if it is still the
  owner's, and ``RPUSH``es the sealed entry onto the owner's list, ``done:<owner>``, which
  expires after the lock's time;
- release: a Lua script that deletes the lock only if it is the owner's (compare and delete),
  and announces on the same list that nothing was stored (an empty element);
- wait: ``BLMOVE done:<holder> done:<holder> RIGHT LEFT <seconds>``, on the list of the holder
  the acquire named. Source and destination are the same list: the element is rotated, not
  taken, so every blocked waiter is served by one push, and a waiter that comes after the push
  finds it at once. No subscription, no second connection.

Every key of a credential shares one Redis Cluster hash tag, so the scripts run on one slot.
``BLMOVE`` needs Redis 6.2 or later (or Valkey); coredis needs RESP3 (Redis 6 or later).

A wait blocks no longer than half the ``timeout``, and never longer than ``poll_interval``: the
client made from the URL bounds every reply, a blocking one included, by ``timeout``. A
``client=`` of your own must allow more than ``poll_interval`` for a reply (its
``stream_timeout``, or none); with less, each wait fails as a store failure (the flight asks
IAM itself, with one warning).

coredis is built on anyio and runs on asyncio and trio, like aioiam; its clients must be used
inside ``async with``. A cache made from a URL opens a client for each flight (one connection,
made before the flight's first call and closed by a task of its own once the flight has handed
its token on: a flight is one refresh per token lifetime); a ``client=`` you pass must be open
(inside its ``async with``) while managers use the cache.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

import anyio
import anyio.lowlevel

from ._hooks import logger
from ._redaction import redactable
from ._timing import seconds

if TYPE_CHECKING:
    import coredis

__all__ = ["RedisTokenCache"]

DEFAULT_URL = "redis://localhost:6379/0"
_INSTALL = "pip install 'aioiam[redis]'"

#: Take the lock if the entry is still ARGV[3] ('' for none) and nobody holds it. Returns the
#: outcome, the store's clock, the entry and the lock's holder. A missing key is Lua ``false``,
#: which keeps its place in the table (a ``nil`` would end it).
ACQUIRE = """
local t = redis.call('TIME')
local current = redis.call('GET', KEYS[1])
local taken = 0
if ((current == false and ARGV[3] == '') or current == ARGV[3])
    and redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  taken = 1
end
return {taken, t[1], t[2], current, redis.call('GET', KEYS[2])}
"""
#: Store the entry, release the owner's lock, announce the entry on the owner's list.
PUBLISH = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
redis.call('RPUSH', KEYS[3], ARGV[1])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
return 1
"""
#: Compare and delete (only the owner releases its lock), and announce that nothing was stored
#: (an empty element). Announced even if the lock lapsed: its waiters look again at once.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('RPUSH', KEYS[2], '')
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
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
    and logs it once. Needs Redis 6.2 or later, or Valkey (waiters block on ``BLMOVE``).

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS) or
            ``unix:///path?db=0``. Ignored when ``client`` is given.
        client: A coredis client you made (``coredis.Redis``, ``coredis.RedisCluster``, or a
            Sentinel's primary) and keep open (inside its ``async with``) while managers use
            the cache. Otherwise each flight opens one from ``url`` and closes it. Its
            ``stream_timeout`` must be longer than ``poll_interval`` (or ``None``): a waiting
            flight blocks on Redis (``BLMOVE``) for up to that long.
        namespace: The prefix of every key name (no braces).
        secret: Extra key material, at least 16 characters, the same in every process of the
            fleet. Required for sources whose credential rotates (``ContainerSource``,
            ``VPCInstanceSource``); mixed in with the credential's own secret otherwise.
        timeout: The longest one call to Redis may take, seconds (connecting included).
        poll_interval: While waiting for another process's token, look at the lock again this
            often if no announcement comes (a holder that died announces nothing).
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
        if client is not None and not callable(getattr(client, "blmove", None)):
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
        """How often a waiting flight looks at the lock again when no announcement comes."""
        return self._poll

    @property
    def recheck(self) -> float:
        """How long a process leaves Redis alone after it failed."""
        return self._recheck

    @asynccontextmanager
    async def session(self, entry: str, lock: str, done: str) -> AsyncIterator[_RedisSession]:
        """A connection for one flight. A client made from the URL connects before the session
        is handed over (within ``timeout``) and is closed after the flight has left (see
        :func:`_closed_behind`); a ``client=`` is left open."""
        if self._client is not None:
            yield _RedisSession(self._client, entry, lock, done, self._timeout / 2)
            return
        async with _closed_behind(self._open) as client:
            # Connected here (the handshake), not in the flight's first call: that call's answer
            # ties Redis's clock to ours, and the tie is only as tight as the call is short.
            with anyio.fail_after(self._timeout):
                pool = client.connection_pool
                pool.release(await pool.get_connection())
            yield _RedisSession(client, entry, lock, done, self._timeout / 2)

    def _open(self) -> coredis.Redis[Any]:
        import coredis
        from coredis.retry import NoRetryPolicy

        return coredis.Redis.from_url(
            self._url,
            connect_timeout=self._timeout,
            stream_timeout=self._timeout,
            retry_policy=NoRetryPolicy(),
            verify_version=False,
        )


@asynccontextmanager
async def _closed_behind(make: Callable[[], coredis.Redis[Any]]) -> AsyncIterator[coredis.Redis[Any]]:
    """``async with make() as client``, entered and exited in a task of its own: leaving this
    returns at once, and the client is closed after the tasks the flight's end woke have run.

    A flight ends by handing its token to the manager, which releases every caller waiting for
    it; closing the client first (its connection's tasks, its socket) would cost each process
    of a waking fleet a few scheduler turns on the way to its callers. The owning task belongs
    to no caller (``_backend.spawn``), so cancelling the flight does not cancel the close; it is
    cancelled only when the event loop ends. Errors from opening the client are raised here;
    errors from closing it are logged at debug level and dropped.
    """
    from ._backend import detect

    opened = anyio.Event()
    left = anyio.Event()
    handed: list[coredis.Redis[Any] | Exception] = []

    async def own() -> None:
        try:
            async with make() as client:
                handed.append(client)
                opened.set()
                await left.wait()
                await anyio.lowlevel.checkpoint()  # after the tasks the flight's end made ready
        except Exception as exc:  # never raised from a task of no one's (on trio it ends the run)
            if not handed:
                handed.append(exc)
            else:
                logger.debug("aioiam: closing a Redis client failed (%s)", type(exc).__name__)
        finally:
            opened.set()

    detect().spawn(own, name="aioiam Redis client")
    try:
        await opened.wait()
        found = handed[0] if handed else ConnectionError("the Redis client could not be opened")
        if isinstance(found, Exception):
            raise found
        yield found
    finally:
        left.set()


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


def _clock(seconds_part: object, micros: object) -> float:
    if not isinstance(seconds_part, (bytes, str, int)) or not isinstance(micros, (bytes, str, int)):
        raise ValueError("Redis answered with something unexpected for TIME")
    return int(seconds_part) + int(micros) / 1e6


def _bytes(value: object) -> bytes | None:
    """A value as bytes (a client that decodes answers gives ``str``), or ``None``."""
    if isinstance(value, str):
        return value.encode("ascii", "replace")
    return value if isinstance(value, bytes) else None


class _RedisSession:
    """One flight's calls to Redis (see :class:`~aioiam.CacheSession`). Bounded by the caller
    (``_cache``); raises coredis's errors. A wait blocks Redis-side for at most
    ``longest_block`` seconds, below the client's own bound on a reply."""

    __slots__ = ("_client", "_done", "_entry", "_lock", "_longest_block")

    def __init__(
        self,
        client: coredis.Redis[Any] | coredis.RedisCluster[Any],
        entry: str,
        lock: str,
        done: str,
        longest_block: float,
    ) -> None:
        self._client = client
        self._entry = entry
        self._lock = lock
        self._done = done
        self._longest_block = longest_block

    async def acquire(self, owner: str, ttl: float, seen: bytes | None) -> tuple[bool, bytes | None, str | None, float]:
        reply = await self._client.eval(
            ACQUIRE, [self._entry, self._lock], [owner, _milliseconds(ttl), seen if seen is not None else b""]
        )
        if not isinstance(reply, list) or len(reply) != 5:
            raise ValueError("Redis answered the lock with something unexpected")
        taken, seconds_part, micros, blob, holder = reply
        raw_holder = _bytes(holder)
        return (
            taken == 1,
            _bytes(blob),
            raw_holder.decode("ascii", "replace") if raw_holder is not None else None,
            _clock(seconds_part, micros),
        )

    async def publish(self, entry: bytes, ttl: float, owner: str, linger: float) -> None:
        await self._client.eval(
            PUBLISH,
            [self._entry, self._lock, f"{self._done}:{owner}"],
            [entry, _milliseconds(ttl), owner, _milliseconds(linger)],
        )

    async def release(self, owner: str, linger: float) -> None:
        await self._client.eval(RELEASE, [self._lock, f"{self._done}:{owner}"], [owner, _milliseconds(linger)])

    async def wait(self, holder: str, at_most: float) -> bytes | None:
        # A rotation of the holder's list (source = destination): its element stays for every
        # other waiter. Never 0 (BLMOVE would block for good), in whole milliseconds.
        block = math.ceil(min(at_most, self._longest_block) * 1000) / 1000
        if block <= 0:
            return None
        from coredis.tokens import PureToken

        done = f"{self._done}:{holder}"
        element = await self._client.blmove(done, done, PureToken.RIGHT, PureToken.LEFT, block)
        if element is None:
            return None
        announced = _bytes(element)
        if announced is None:
            raise ValueError("Redis answered the wait with something unexpected")
        return announced
