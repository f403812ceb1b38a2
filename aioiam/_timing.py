"""Every timing decision, as pure functions of ``(token, now, policy)``.

Nothing here sleeps, reads a clock or draws random numbers: callers pass ``now`` (a monotonic
reading) and ``u`` (a uniform draw in ``[0, 1)``), so each rule can be tested exhaustively.

- :func:`token_state`: is a token fresh, due for refresh, or no longer to be handed out?
- :func:`schedule`: when a new token is refreshed, goes stale and expires.
- :func:`backoff_delay`: how long to wait after the n-th consecutive failure.
- :func:`next_attempt_at`: when the background refresher should next ask IAM.
"""

from __future__ import annotations

import enum
import math
import numbers
from dataclasses import dataclass
from datetime import timedelta

from ._token import Token, TokenResponse

__all__ = [
    "RefreshPolicy",
    "RetryPolicy",
    "TokenState",
    "backoff_delay",
    "expiry_margin",
    "next_attempt_at",
    "number",
    "schedule",
    "seconds",
    "token_state",
]


def number(value: object, name: str) -> float:
    """A finite real number as a float, for a policy field called ``name``.

    Accepts ``int``, ``float`` and other real numbers (``fractions.Fraction``, NumPy scalars);
    does not check any range beyond finiteness.

    Raises:
        TypeError: The value is not a real number; ``bool`` and numeric strings count as wrong types.
        ValueError: The value is NaN or infinite (or too large to be a float).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    try:
        result = float(value)
    except OverflowError:
        result = math.inf
    if not math.isfinite(result):
        raise ValueError(f"{name} must be finite, got {result}")
    return result


def seconds(value: float | timedelta, name: str, *, allow_zero: bool = True) -> float:
    """A duration in seconds from a number or a ``timedelta``, checked as :func:`number` does.

    Raises:
        TypeError: The value is neither a real number nor a ``timedelta`` (``bool``, ``str`` and
            ``None`` included).
        ValueError: The duration is negative, not finite, or zero where that is not allowed.
    """
    if isinstance(value, timedelta):
        result = value.total_seconds()
    else:
        try:
            result = number(value, name)
        except TypeError:
            raise TypeError(f"{name} must be a number of seconds or a timedelta, not {type(value).__name__}") from None
    if result < 0 or (result == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'non-negative' if allow_zero else 'positive'}, got {result}")
    return result


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    """When tokens are refreshed and when they stop being handed out.

    Attributes:
        refresh_fraction: Refresh once this fraction of the lifetime has passed (IBM's cores: 0.8),
            in ``[0.5, 1]``.
        jitter_fraction: Move the refresh earlier by a random amount up to this fraction of the
            lifetime, so a fleet started together does not refresh in lockstep; in ``[0, 0.25]``.
        expiry_margin: Never hand out a token this close to its expiry (seconds)...
        expiry_margin_fraction: ...or this fraction of its lifetime, whichever is smaller, so
            short-lived tokens stay usable for most of their life.
    """

    refresh_fraction: float = 0.8
    jitter_fraction: float = 0.05
    expiry_margin: float = 10.0
    expiry_margin_fraction: float = 0.1

    def __post_init__(self) -> None:
        """Check every field and store numbers as floats.

        Raises:
            TypeError: A field is not a number (``expiry_margin`` may also be a ``timedelta``).
            ValueError: A field is NaN, infinite or out of its range.
        """
        for name in ("refresh_fraction", "jitter_fraction", "expiry_margin_fraction"):
            object.__setattr__(self, name, number(getattr(self, name), name))
        object.__setattr__(self, "expiry_margin", seconds(self.expiry_margin, "expiry_margin"))
        # Bounded so that a token is always used for at least a quarter of its life before it is
        # refreshed: a refresh_fraction near zero would turn the refresher into a request loop.
        if not 0.5 <= self.refresh_fraction <= 1:
            raise ValueError(f"refresh_fraction must be in [0.5, 1], got {self.refresh_fraction}")
        if not 0 <= self.jitter_fraction <= 0.25:
            raise ValueError(f"jitter_fraction must be in [0, 0.25], got {self.jitter_fraction}")
        if not 0 <= self.expiry_margin_fraction < 1:
            raise ValueError(f"expiry_margin_fraction must be in [0, 1), got {self.expiry_margin_fraction}")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How failed token requests are retried.

    Delays use capped exponential backoff with full jitter: after the n-th consecutive failure the
    wait is uniform in ``[0, min(max_delay, initial_delay * multiplier ** (n - 1))]``, and never
    shorter than a ``Retry-After`` IAM sent (itself capped at ``max_retry_after``).

    Attributes:
        initial_delay: The cap of the first wait (seconds).
        max_delay: The cap of every wait (seconds).
        multiplier: Growth of the cap per consecutive failure.
        timeout: How long a caller with no usable token waits in all before
            :class:`~aioiam.IAMUnavailableError` (seconds, positive).
        request_timeout: How long one request to IAM may take (seconds, positive), whatever the
            HTTP client's own timeouts say.
        max_retry_after: The longest ``Retry-After`` honoured (seconds).
    """

    initial_delay: float = 0.5
    max_delay: float = 30.0
    multiplier: float = 2.0
    timeout: float = 15.0
    request_timeout: float = 10.0
    max_retry_after: float = 300.0

    def __post_init__(self) -> None:
        """Check every field and store durations as float seconds.

        ``timeout`` and ``request_timeout`` must be positive: with no time at all, a caller with no
        token would give up without a single request. The delays may be zero (no backoff).

        Raises:
            TypeError: A field is not a number (durations may also be ``timedelta``).
            ValueError: A field is NaN, infinite, negative, zero where a positive value is needed,
                ``multiplier`` is below 1, or ``max_delay`` is below ``initial_delay``.
        """
        for name in ("initial_delay", "max_delay", "timeout", "request_timeout", "max_retry_after"):
            positive = name in ("timeout", "request_timeout")
            object.__setattr__(self, name, seconds(getattr(self, name), name, allow_zero=not positive))
        object.__setattr__(self, "multiplier", number(self.multiplier, "multiplier"))
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be at least 1, got {self.multiplier}")
        if self.max_delay < self.initial_delay:
            raise ValueError("max_delay must be at least initial_delay")


class TokenState(enum.Enum):
    """Where a token stands at a given moment."""

    #: Hand it out; nothing to do.
    FRESH = "fresh"
    #: Hand it out, and make sure a refresh is under way.
    REFRESH_DUE = "refresh_due"
    #: Never hand it out: within its expiry margin, expired, or absent.
    UNUSABLE = "unusable"


def expiry_margin(lifetime: float, policy: RefreshPolicy) -> float:
    """Seconds before expiry from which a token is no longer handed out."""
    return min(policy.expiry_margin, policy.expiry_margin_fraction * lifetime)


def schedule(response: TokenResponse, obtained_at: float, policy: RefreshPolicy, u: float) -> Token:
    """Make a :class:`Token` with its refresh time, stale time and expiry.

    Args:
        response: What IAM answered.
        obtained_at: The monotonic time the request was sent (so time in flight counts against
            the token, never for it).
        policy: The refresh policy.
        u: A uniform draw in ``[0, 1)`` for the jitter.

    Returns:
        A token with ``obtained_at <= refresh_at <= stale_at < expires_at``.
    """
    lifetime = response.expires_in
    expires_at = obtained_at + lifetime
    stale_at = expires_at - expiry_margin(lifetime, policy)
    refresh_at = obtained_at + lifetime * (policy.refresh_fraction - policy.jitter_fraction * u)
    refresh_at = min(max(refresh_at, obtained_at), stale_at)
    return Token(
        access_token=response.access_token,
        token_type=response.token_type,
        expires_in=response.expires_in,
        refresh_token=response.refresh_token,
        expiration=response.expiration,
        scope=response.scope,
        claims=response.claims,
        obtained_at=obtained_at,
        refresh_at=refresh_at,
        stale_at=stale_at,
        expires_at=expires_at,
    )


def token_state(token: Token | None, now: float) -> TokenState:
    """Classify ``token`` at ``now``. ``None`` is :attr:`TokenState.UNUSABLE`."""
    if token is None or now >= token.stale_at:
        return TokenState.UNUSABLE
    if now >= token.refresh_at:
        return TokenState.REFRESH_DUE
    return TokenState.FRESH


def backoff_delay(
    failures: int,
    policy: RetryPolicy,
    u: float,
    *,
    retry_after: float | None = None,
    usable_for: float | None = None,
) -> float:
    """Seconds to wait after ``failures`` consecutive failures (``failures >= 1``).

    Full jitter: ``u * min(max_delay, initial_delay * multiplier ** (failures - 1))``, raised to
    ``retry_after`` (capped at ``max_retry_after``) when IAM sent one.

    While the current token is still usable for ``usable_for`` more seconds, the wait is also
    capped at half of that (but not below ``initial_delay``), so a refresh gets further tries
    before the token goes stale instead of sleeping past it. An explicit ``retry_after`` wins
    over this cap: IAM asked us to wait.
    """
    if failures < 1:
        return 0.0
    # Cap the exponent: beyond a few dozen doublings every cap is max_delay anyway.
    exponent = min(failures - 1, 64)
    try:
        growth = policy.multiplier**exponent
    except OverflowError:  # a huge multiplier: the cap is reached at once
        growth = math.inf
    cap = min(policy.max_delay, policy.initial_delay * growth) if policy.initial_delay > 0 else 0.0
    delay = u * cap
    if usable_for is not None and usable_for > 0:
        delay = min(delay, max(policy.initial_delay, usable_for / 2))
    if retry_after is not None:
        delay = max(delay, min(retry_after, policy.max_retry_after))
    return delay


def next_attempt_at(token: Token | None, not_before: float, now: float, *, refused: bool = False) -> float:
    """When the background refresher should next ask IAM.

    Args:
        token: The current token, if any.
        not_before: The end of the current backoff (``-inf`` when nothing failed).
        now: The current monotonic time.
        refused: The last attempt failed in a way that asking again will not fix by itself
            (refused credentials, an unusable answer).

    Returns:
        ``token.refresh_at`` for a token that is still fresh, otherwise now; never before
        ``not_before``. ``inf`` (never, until something changes) after a refusal when no usable
        token is left to protect: re-sending a refused key in the background helps nobody.
    """
    if refused and token_state(token, now) is TokenState.UNUSABLE:
        return math.inf
    due = token.refresh_at if token is not None and now < token.refresh_at else now
    return max(due, not_before)
