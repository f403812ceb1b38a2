"""Fleet mode's decisions, as pure functions of values. No I/O, no clock, no randomness.

A flight with a shared cache (``_cache.CacheLink.fetch``) contends for its credential's lock,
reading the entry kept for it in the same step, and these rules say what to do next:

- :func:`after_read`: adopt the entry read (a token fresher than ours), or contend for the lock
  to refresh it; an entry announced by the lock's holder is judged by the same rule, with the
  clock of the read that named the holder;
- :func:`after_contending`: with the lock, ask IAM; without it, wait for the holder's token, or,
  once the holder has had all the time its lock gives it, ask IAM alone;
- :func:`start_on_our_clock` and :func:`start_on_store_clock`: when a token's life began, moved
  between the store's clock (Redis ``TIME``) and a process's monotonic clock, always erring on
  the side of an older token;
- :func:`entry_ttl`: how long the store keeps an entry (until the token goes stale);
- :func:`lock_ttl` and :func:`flight_budget`: how long a lock holds and a shared flight lasts;
- :class:`StoreHealth` and its rules: when to use the store again after it failed, and which
  changes are worth one log line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._timing import RefreshPolicy, expiry_margin, schedule
from ._token import TokenResponse

__all__ = [
    "HEALTHY",
    "MAX_FUTURE_SKEW",
    "Adopt",
    "AskAlone",
    "AskHolding",
    "Contend",
    "Entry",
    "StoreHealth",
    "WaitUntil",
    "after_contending",
    "after_read",
    "after_store_failure",
    "entry_ttl",
    "flight_budget",
    "lock_ttl",
    "start_on_our_clock",
    "start_on_store_clock",
    "store_usable",
]

#: An entry whose start is further than this in the store's future is not believed (it was
#: written against another clock: a failover to a server whose clock is behind).
MAX_FUTURE_SKEW = 1.0


@dataclass(frozen=True, slots=True)
class Entry:
    """A decoded cache entry: the token IAM gave and when its life began on the store's clock.

    Attributes:
        response: The token as IAM answered it.
        obtained_at: When the request that got it was sent, in seconds on the store's clock
            (Redis ``TIME``, Unix seconds).
    """

    response: TokenResponse
    obtained_at: float


@dataclass(frozen=True, slots=True)
class Adopt:
    """Take the stored token: no request to IAM.

    Attributes:
        response: The token as IAM answered it.
        started_at: When its life began, on our clock (schedule it from there with the same
            jitter draw the decision used).
    """

    response: TokenResponse
    started_at: float


@dataclass(frozen=True, slots=True)
class Contend:
    """Try to take the lock: the entry is missing, unreadable, ours already, or due."""


@dataclass(frozen=True, slots=True)
class AskHolding:
    """We hold the lock: ask IAM, then store the token (which releases the lock)."""


@dataclass(frozen=True, slots=True)
class WaitUntil:
    """Someone else holds the lock: wait for their token until ``until`` (our clock)."""

    until: float


@dataclass(frozen=True, slots=True)
class AskAlone:
    """The holder had all its lock's time and no token came: ask IAM without the lock."""


_CONTEND = Contend()
_ASK_HOLDING = AskHolding()
_ASK_ALONE = AskAlone()


def start_on_our_clock(obtained_at: float, store_now: float, read_sent_at: float) -> float | None:
    """When a stored token's life began, on our monotonic clock.

    The store read ``store_now`` at some moment between sending the read (``read_sent_at``, our
    clock) and its answer; taking the earliest possible moment makes the token look older,
    never younger, than it is.

    The pair (``store_now``, ``read_sent_at``) only ties the two clocks together: the entry need
    not come from that read. A waiter judges the entry its lock's holder announces with the pair
    of the read that named the holder: the same clocks, the same guarantee, and nothing the
    announcement says about time (whoever can write the store could forge it) is needed. A
    token obtained after that read (the usual case: the holder asks IAM just after taking the
    lock) has a negative age, counted as 0: it starts at ``read_sent_at`` at the latest.

    Returns:
        The start, or ``None`` for an entry from further than :data:`MAX_FUTURE_SKEW` in the
        store's future (not believed).
    """
    age = store_now - obtained_at
    if age < -MAX_FUTURE_SKEW:
        return None
    return read_sent_at - max(age, 0.0)


def start_on_store_clock(sent_at: float, store_now: float, read_answered_at: float) -> float:
    """When our own request (sent at ``sent_at``, our clock) began, on the store's clock.

    ``store_now`` was read at some moment before its answer arrived (``read_answered_at``, our
    clock); taking the latest possible moment makes the token look older, never younger.
    """
    return store_now + (sent_at - read_answered_at)


def after_read(
    entry: Entry | None,
    store_now: float,
    *,
    read_sent_at: float,
    now: float,
    avoid: str | None,
    policy: RefreshPolicy,
    u: float,
) -> Adopt | Contend:
    """Adopt the entry read, or contend for the lock to refresh it.

    Args:
        entry: What the store holds for the credential (``None``: nothing, or nothing readable).
        store_now: The store's clock, read with the entry.
        read_sent_at: When the read was sent (our clock).
        now: Our clock now.
        avoid: An access token not to adopt: the one we hold (it is due, so the entry holding it
            needs refreshing) or the one a service just refused (``invalidate``).
        policy: Our refresh policy (each process schedules an adopted token itself).
        u: Our jitter draw; the manager schedules the token it gets with the same draw.

    Returns:
        :class:`Adopt` for a token that is fresh on our schedule and not ``avoid``; otherwise
        :class:`Contend`.
    """
    if entry is None:
        return _CONTEND
    start = start_on_our_clock(entry.obtained_at, store_now, read_sent_at)
    if start is None or entry.response.access_token == avoid:
        return _CONTEND
    token = schedule(entry.response, start, policy, u)
    if now < token.refresh_at:
        return Adopt(entry.response, start)
    return _CONTEND


def after_contending(
    acquired: bool, *, now: float, waiting_since: float | None, lock_seconds: float
) -> AskHolding | WaitUntil | AskAlone:
    """What to do after trying to take the lock.

    Args:
        acquired: Whether the lock was taken.
        now: Our clock now.
        waiting_since: When this flight first found the lock held (``None``: just now).
        lock_seconds: How long a lock lives (:func:`lock_ttl`): a holder that dies leaves it
            for at most that long.

    Returns:
        :class:`AskHolding` with the lock; :class:`WaitUntil` the holder's lock must have
        lapsed; :class:`AskAlone` once that has passed with neither a token nor the lock.
    """
    if acquired:
        return _ASK_HOLDING
    since = now if waiting_since is None else waiting_since
    until = since + lock_seconds
    if now >= until:
        return _ASK_ALONE
    return WaitUntil(until)


def entry_ttl(response: TokenResponse, obtained_at: float, store_now: float, policy: RefreshPolicy) -> float:
    """Seconds the store keeps an entry: until the token goes stale (0 or less: do not store)."""
    lifetime = response.expires_in
    return obtained_at + lifetime - expiry_margin(lifetime, policy) - store_now


def lock_ttl(request_timeout: float, store_timeout: float) -> float:
    """How long a lock lives: one request to IAM, the store's writes around it, and a second.

    A holder that dies mid-fetch blocks the fleet for no longer than this.
    """
    return request_timeout + 2 * store_timeout + 1.0


def flight_budget(request_timeout: float, store_timeout: float) -> float:
    """The longest a flight with a shared cache lasts: a few store calls, waiting out another
    holder's lock, then a request of its own."""
    return lock_ttl(request_timeout, store_timeout) + request_timeout + 8 * store_timeout


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """Whether the shared store works, as this process last saw it.

    Attributes:
        failing: Whether the last call to the store failed.
        retry_at: While failing, no flight uses the store before this (our clock).
    """

    failing: bool = False
    retry_at: float = -math.inf


#: The health of a store that works (or has not been tried).
HEALTHY = StoreHealth()


def store_usable(health: StoreHealth, now: float) -> bool:
    """Whether a flight at ``now`` uses the store (always, unless it failed within ``recheck``)."""
    return not health.failing or now >= health.retry_at


def after_store_failure(now: float, recheck: float) -> StoreHealth:
    """The health after a failed store call: flights skip the store for ``recheck`` seconds."""
    return StoreHealth(failing=True, retry_at=now + recheck)
