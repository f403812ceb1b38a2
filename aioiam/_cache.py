"""Where a token is kept for a fleet: the :class:`TokenCache` seam, and the flight that uses it.

A manager with a cache runs :meth:`CacheLink.fetch` in its flight instead of asking IAM straight
away. Its first step contends for the credential's lock only if no entry is stored, and reads
the entry and the lock's holder in the same step: a token fresher than its own is adopted;
otherwise it contends again (taking the lock only if the entry is still the one it judged), and
either asks IAM and stores the token (announcing it, with the lock's release, in one step) or
waits for the holder's announcement, which carries the token itself. What to do at each step is
decided in ``_fleet``; what the store sees (sealed entries, keyed names) is ``_sealing``'s
business; the store itself (``_redis``) only moves bytes.

Availability first: any failure of the store (down, slow past ``timeout``, refusing, a garbled
answer) ends the shared part of the flight, and the flight asks IAM itself, exactly as without a
cache. The failure is logged once, the store is left alone for ``recheck`` seconds, and its
return is logged once too. A store failure is never an IAM failure: it is not recorded, backed
off or shown to callers.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import anyio

from ._exceptions import IAMError
from ._fleet import (
    HEALTHY,
    Adopt,
    AskAlone,
    AskHolding,
    Entry,
    after_contending,
    after_read,
    after_store_failure,
    entry_ttl,
    flight_budget,
    lock_ttl,
    start_on_store_clock,
    store_usable,
)
from ._hooks import logger
from ._redaction import clip, scrub
from ._timing import RefreshPolicy
from ._token import TokenResponse, token_response_problem

if TYPE_CHECKING:
    from ._sealing import SealKeys
    from ._sources import TokenSource

__all__ = ["Ask", "CacheLink", "CacheSession", "Shared", "TokenCache", "cache_identity"]

#: Asks IAM once within a time budget (seconds): ``_flight.fetch`` with its arguments bound.
Ask = Callable[[float], Awaitable[tuple[object, IAMError | None]]]


@runtime_checkable
class CacheSession(Protocol):
    """One flight's connection to the store. Opened by :meth:`TokenCache.session`.

    Every method may raise any ``Exception`` when the store fails; the flight then goes on
    without it. The flight bounds each call with the cache's ``timeout`` (:meth:`wait` with its
    ``at_most`` on top). Owner ids are the flight's own: 32 lowercase hex characters.
    """

    async def acquire(self, owner: str, ttl: float, seen: bytes | None) -> tuple[bool, bytes | None, str | None, float]:
        """Take the lock for ``owner``, for ``ttl`` seconds at most, if nobody holds it and the
        entry is still ``seen`` (the one the caller judged; ``None``: no entry); in the same
        step, read the entry, the lock's holder and the store's clock.

        Returns:
            Whether the lock was taken, the entry (``None`` if none), the lock's holder after
            the step (``owner`` if taken; ``None`` if nobody holds it), the store's clock (Unix
            seconds).
        """
        ...

    async def publish(self, entry: bytes, ttl: float, owner: str, linger: float) -> None:
        """In one step: store ``entry`` for ``ttl`` seconds, release ``owner``'s lock if it still
        holds it, and announce the entry to ``owner``'s waiters, the announcement kept for
        ``linger`` seconds for waiters still on their way to :meth:`wait`.
        """
        ...

    async def release(self, owner: str, linger: float) -> None:
        """Release the lock if ``owner`` still holds it, and announce to ``owner``'s waiters that
        it stored nothing (kept for ``linger`` seconds, as :meth:`publish`'s)."""
        ...

    async def wait(self, holder: str, at_most: float) -> bytes | None:
        """``holder``'s announcement: at once if it was made, else the first within ``at_most``
        seconds (a store may return ``None`` earlier). Every waiter gets it, and an announcement
        stays readable after it is read.

        Returns:
            The announced entry; ``b""`` when the holder stored nothing; ``None`` when nothing
            was announced in time.
        """
        ...


@runtime_checkable
class TokenCache(Protocol):
    """Where a fleet of processes keeps its tokens: the seam :class:`~aioiam.RedisTokenCache` fills.

    aioiam derives the key names and seals every entry itself (see ``docs/fleet.md``): a store
    keeps opaque bytes under opaque names, with an expiry, plus a lock and, per lock holder, an
    announcement every waiter reads. Pass one as ``TokenManager(..., cache=...)``.

    Attributes:
        namespace: The prefix of every key name.
        secret: Extra key material, required for sources without a stable secret (never shown).
        timeout: The longest one call to the store may take (seconds).
        poll_interval: How long a waiting flight waits for an announcement before it looks at
            the lock again.
        recheck: After a failure, how long flights leave the store alone.
    """

    @property
    def namespace(self) -> str: ...

    @property
    def secret(self) -> str | None: ...

    @property
    def timeout(self) -> float: ...

    @property
    def poll_interval(self) -> float: ...

    @property
    def recheck(self) -> float: ...

    def session(self, entry: str, lock: str, done: str) -> AbstractAsyncContextManager[CacheSession]:
        """A connection for one flight, working on the entry, the lock, and the announcement
        lists ``f"{done}:{owner}"`` (all in one hash slot)."""
        ...


def cache_identity(source: TokenSource) -> tuple[str, str | None]:
    """``source.cache_identity()``: what its token is for, and its stable secret (if any).

    Raises:
        TypeError: The source has no ``cache_identity()``, or it returns something else.
    """
    method = getattr(source, "cache_identity", None)
    if not callable(method):
        raise TypeError(
            f"{type(source).__name__} cannot be used with a shared cache: it has no cache_identity() "
            "method saying what its token is for (a string without secrets) and which stable secret "
            "to derive keys from (or None); add one (see docs/fleet.md)"
        )
    result = method()
    if (
        not isinstance(result, tuple)
        or len(result) != 2
        or not isinstance(result[0], str)
        or not result[0]
        or not (result[1] is None or isinstance(result[1], str))
    ):
        raise TypeError(f"{type(source).__name__}.cache_identity() must return (str, str | None)")
    return result[0], result[1]


class Shared:
    """What a flight with a cache got: an answer or an error, and when its token's life began.

    Attributes:
        answer: A source's answer (an adopted token is a :class:`~aioiam.TokenResponse` too).
        error: The failure of this process's own request to IAM, if it made one and it failed.
        started_at: When the token's life began, on our clock.
    """

    __slots__ = ("answer", "error", "started_at")

    def __init__(self, answer: object, error: IAMError | None, started_at: float) -> None:
        self.answer = answer
        self.error = error
        self.started_at = started_at


class CacheLink:
    """One manager's use of a shared cache: its credential's keys, and the store's health.

    Raises:
        TypeError: The source cannot say what its token is for (see :func:`cache_identity`).
        ValueError: Neither the source nor the cache has a stable secret to derive keys from.
    """

    __slots__ = ("_health", "_redact", "cache", "keys")

    def __init__(self, cache: TokenCache, source: TokenSource) -> None:
        try:
            from ._sealing import derive_keys  # needs cryptography
        except ImportError as exc:
            raise ImportError("a shared token cache needs the redis extra: pip install 'aioiam[redis]'") from exc

        identity, stable = cache_identity(source)
        material = tuple(s for s in (stable, cache.secret) if s)
        if not material:
            raise ValueError(
                f"{type(source).__name__} has no stable secret (its credential rotates), so a shared cache "
                "cannot derive keys from it; pass secret= to the cache, the same in every process of the fleet"
            )
        self.cache = cache
        self.keys: SealKeys = derive_keys(material, identity, cache.namespace)
        self._health = HEALTHY
        hidden = [*source.secrets, *material]
        self._redact: Callable[[str], str] = lambda text: scrub(text, hidden)

    def __repr__(self) -> str:
        return f"<CacheLink {self.cache!r}>"

    def budget(self, request_timeout: float) -> float:
        """The longest a flight through this cache lasts."""
        return flight_budget(request_timeout, self.cache.timeout)

    async def fetch(
        self,
        ask: Ask,
        *,
        clock: Callable[[], float],
        policy: RefreshPolicy,
        request_timeout: float,
        u: float,
        avoid: str | None,
    ) -> Shared:
        """A token from the fleet, or from IAM through ``ask`` (storing it for the fleet).

        Returns what ``ask`` returned when this process asked IAM, or an adopted token. Never
        raises for the store's failures; cancellation passes through (releasing a lock held).
        """
        if not store_usable(self._health, clock()):
            return await _ask(ask, clock, request_timeout)
        run = _Run(self, ask, clock, policy, request_timeout, u, avoid)
        try:
            async with self.cache.session(self.keys.entry, self.keys.lock, self.keys.done) as session:
                shared = await run.through(session)
        except Exception as exc:  # the store failed: go on without it
            self._failed(exc, clock())
            return run.asked if run.asked is not None else await _ask(ask, clock, request_timeout)
        if self._health.failing:
            logger.warning("aioiam: the shared token cache %r works again; tokens are shared again", self.cache)
        self._health = HEALTHY
        return shared

    def _failed(self, exc: Exception, now: float) -> None:
        if not self._health.failing:
            logger.warning(
                "aioiam: the shared token cache %r failed (%s); this process asks IAM itself until it "
                "works again (tried again after %gs)",
                self.cache,
                self._describe(exc),
                self.cache.recheck,
            )
        else:
            logger.debug("aioiam: the shared token cache still fails (%s)", self._describe(exc))
        self._health = after_store_failure(now, self.cache.recheck)

    def _describe(self, exc: BaseException) -> str:
        inner = getattr(exc, "exceptions", None)  # an exception group (a task group's): its first cause
        while isinstance(inner, tuple) and inner and isinstance(inner[0], BaseException):
            exc = inner[0]
            inner = getattr(exc, "exceptions", None)
        if isinstance(exc, TimeoutError) and not str(exc):
            return f"no answer within {self.cache.timeout:g}s"
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return clip(self._redact(text), 200)


async def _ask(ask: Ask, clock: Callable[[], float], budget: float) -> Shared:
    sent_at = clock()
    answer, error = await ask(budget)
    return Shared(answer, error, sent_at)


def _storable(shared: Shared) -> TokenResponse | None:
    answer = shared.answer
    if shared.error is None and isinstance(answer, TokenResponse) and token_response_problem(answer) is None:
        return answer
    return None


class _Run:
    """One flight through the store: the state the steps share."""

    def __init__(
        self,
        link: CacheLink,
        ask: Ask,
        clock: Callable[[], float],
        policy: RefreshPolicy,
        request_timeout: float,
        u: float,
        avoid: str | None,
    ) -> None:
        self.link = link
        self.ask = ask
        self.clock = clock
        self.policy = policy
        self.request_timeout = request_timeout
        self.u = u
        self.avoid = avoid
        self.timeout = link.cache.timeout
        self.lock_seconds = lock_ttl(request_timeout, self.timeout)
        self.owner = secrets.token_hex(16)
        #: What this flight's own request to IAM returned, once it made one.
        self.asked: Shared | None = None
        self.published = False
        # The store's clock at the last read (an acquire), and our clock when its answer came.
        self.store_now = 0.0
        self.read_answered_at = 0.0

    async def through(self, session: CacheSession) -> Shared:
        """The flight's steps through an open session, until a token is adopted or asked for.

        Raises whatever the store raises (the caller goes on without it), and ``TimeoutError``
        for a store call past its bound; never retries a failed store call itself.
        """
        # The first step takes the lock only if nothing is stored (``seen=None``): a cold fleet's
        # fetcher asks IAM after one round trip. A stored entry is read in the same step and
        # judged; the next step takes the lock only if the entry is still the one just judged,
        # so a token stored in between is read there instead, with no lock taken.
        seen: bytes | None = None
        waiting_since: float | None = None
        heard: str | None = None  # the holder whose announcement this flight already has
        while True:
            sent_at = self.clock()
            with anyio.fail_after(self.timeout):
                acquired, blob, holder, store_now = await session.acquire(self.owner, self.lock_seconds, seen)
            adopted = self._judge(blob, store_now, sent_at)
            if adopted is not None:
                if acquired:  # not for lack of a fresh token: only if the store broke its word
                    await self._release(session)
                return adopted
            seen = blob
            now = self.clock()
            action = after_contending(acquired, now=now, waiting_since=waiting_since, lock_seconds=self.lock_seconds)
            if isinstance(action, AskHolding):
                return await self._ask_holding(session)
            if isinstance(action, AskAlone):
                logger.debug("aioiam: the fleet's fetcher gave no token within its lock's time; asking IAM")
                return await self._ask_and_publish(session)
            if waiting_since is None:
                waiting_since = now
            if holder is None:
                continue  # nobody holds the lock: the entry changed under us; contend again for it
            pause = min(self.link.cache.poll_interval, max(0.0, action.until - now))
            if holder == heard:
                # Its announcement did not settle it, yet it still holds the lock: only a store
                # written by someone else does that. Look again after a pause, not at once.
                await anyio.sleep(pause)
                continue
            with anyio.fail_after(pause + self.timeout):
                announced = await session.wait(holder, pause)
            if announced is None:
                continue  # nothing yet: look at the lock again (its holder may have died)
            heard = holder
            if not announced:
                continue  # the holder stored nothing and let go: contend for the lock
            # The announcement carries the entry: no read after waking. It is judged with the
            # clock of the acquire that named its holder (see ``_fleet.start_on_our_clock``).
            adopted = self._judge(announced, store_now, sent_at, announced=True)
            if adopted is not None:
                return adopted
            seen = announced

    def _judge(self, blob: bytes | None, store_now: float, sent_at: float, *, announced: bool = False) -> Shared | None:
        """The token to adopt from what the store holds, if any (see ``_fleet.after_read``).

        ``store_now`` was read no earlier than ``sent_at`` (our clock), by the read that returned
        ``blob`` or, for an ``announced`` entry, by the read that named its holder. After a read,
        its clock and our clock now are kept to time a token this flight asks for.
        """
        from ._sealing import unseal

        now = self.clock()
        if not announced:
            self.read_answered_at = now
            self.store_now = store_now
        entry = unseal(self.link.keys, blob)
        if blob is not None and entry is None:
            logger.debug("aioiam: the shared cache holds an unreadable entry; ignored (it will be replaced)")
        step = after_read(
            entry, store_now, read_sent_at=sent_at, now=now, avoid=self.avoid, policy=self.policy, u=self.u
        )
        if not isinstance(step, Adopt):
            return None
        logger.debug("aioiam: adopted the fleet's token; no request to IAM")
        return Shared(step.response, None, step.started_at)

    async def _ask_holding(self, session: CacheSession) -> Shared:
        try:
            return await self._ask_and_publish(session)
        finally:
            if not self.published:
                # Nothing stored (IAM failed, the answer is unusable, or we were cancelled):
                # release the lock so the next process need not wait for it to lapse.
                await self._release(session)

    async def _release(self, session: CacheSession) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.timeout):
            try:
                await session.release(self.owner, self.lock_seconds)
            except Exception:  # the lock lapses by itself; the failure that matters goes on
                logger.debug("aioiam: could not release the shared cache's lock; it lapses by itself")

    async def _ask_and_publish(self, session: CacheSession) -> Shared:
        shared = self.asked = await _ask(self.ask, self.clock, self.request_timeout)
        response = _storable(shared)
        if response is None:
            return shared
        from ._sealing import seal

        obtained = start_on_store_clock(shared.started_at, self.store_now, self.read_answered_at)
        store_now = self.store_now + (self.clock() - self.read_answered_at)
        ttl = entry_ttl(response, obtained, store_now, self.policy)
        if ttl > 0:
            blob = seal(self.link.keys, Entry(response, obtained), os.urandom(12))
            with anyio.fail_after(self.timeout):
                await session.publish(blob, ttl, self.owner, self.lock_seconds)
            self.published = True
        return shared
