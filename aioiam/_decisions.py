"""Every decision the manager takes, as pure functions of values. No I/O, no clock, no randomness.

- :func:`classify`: which failures are transient (worth retrying) and what callers are told.
- :func:`check_answer`: whether a source's answer is a usable token, and its schedule.
- :class:`FailureRecord` and :func:`after_failure`: the record of failures in a row and the
  backoff or cooldown it imposes.
- :func:`caller_step`: what a caller of ``get_token`` does next, given the token, the record and
  the time: take the token, take it and start a refresh, wait for the flight, sleep, or raise.

The manager (the async shell) reads the clock and the random source, calls these, and carries out
what they return: it waits, fetches and publishes, and decides nothing itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import httpx

from ._exceptions import (
    IAMError,
    IAMUnavailableError,
    InvalidResponseError,
    TransientIAMError,
    fresh_copy,
)
from ._redaction import Redactor, scrub_error
from ._timing import RefreshPolicy, RetryPolicy, TokenState, backoff_delay, schedule, token_state
from ._token import Token, TokenResponse, token_response_problem

__all__ = [
    "DROP_COOLDOWN",
    "NO_FAILURES",
    "FailureRecord",
    "Raise",
    "Sleep",
    "Step",
    "Take",
    "Wait",
    "after_failure",
    "caller_step",
    "check_answer",
    "classify",
    "describe",
    "is_transient",
    "joins_at_once",
    "may_drop",
    "unavailable",
]

#: After a token is dropped for a 401, another drop waits this long (or a tenth of the token's
#: life, if shorter): a service that answers 401 to every token costs IAM one request per
#: cooldown, not one per call.
DROP_COOLDOWN = 10.0


def is_transient(error: IAMError) -> bool:
    """Whether asking again may help by itself: 5xx, 429, a timeout, a network error.

    Refused credentials and unusable answers are not transient: the same request would get the
    same answer, so they are never retried for a caller and not re-sent in the background while
    no usable token is left.
    """
    return isinstance(error, TransientIAMError)


def describe(exc: BaseException) -> str:
    """``ReadError: ...`` with the first non-empty error under it, for network failures.

    httpx wraps httpcore, which wraps anyio or the OS, and the outer layers often have no text.
    The result is not scrubbed: pass it through the source's redactor.
    """
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    for _ in range(4):
        if cause is None:
            break
        if str(cause) and str(cause) not in text:
            text += f" ({type(cause).__name__}: {cause})"
            break
        cause = cause.__cause__ or cause.__context__
    return text


def classify(exc: Exception, redact: Redactor) -> IAMError:
    """The :class:`~aioiam.IAMError` that callers see for what a source's ``fetch`` raised.

    Every text that reaches the result passes through ``redact``; a cause whose text would need
    scrubbing is dropped rather than kept. Cancellation is not an ``Exception`` and never gets
    here.

    - ``httpx.TransportError`` (connect, read, write, pool, protocol): transient.
    - an ``IAMError`` the source raised: itself, scrubbed.
    - another ``httpx.HTTPError`` (a body that cannot be decoded): an unusable answer.
    - anything else (a custom source's bug): an unusable answer naming only the error's type.
    """
    if isinstance(exc, httpx.TransportError):
        return TransientIAMError(f"could not reach IAM: {redact(describe(exc))}")
    if isinstance(exc, IAMError):
        return scrub_error(exc, redact)
    if isinstance(exc, httpx.HTTPError):
        return InvalidResponseError(f"IAM's answer could not be read: {type(exc).__name__}")
    error = InvalidResponseError(f"the token source failed: {type(exc).__name__}")
    if redact(str(exc)) == str(exc):  # the cause is kept unless it quotes a secret
        error.__cause__ = exc
    return error


def check_answer(answer: object, sent_at: float, now: float, policy: RefreshPolicy, u: float) -> Token | IAMError:
    """The scheduled token for a source's ``answer``, or the error that makes it unusable.

    Args:
        answer: What the source returned (checked: custom sources may return anything).
        sent_at: When the request was sent: the token's life counts from there.
        now: When the answer was read.
        policy: The refresh policy.
        u: A uniform draw in ``[0, 1)`` for the refresh jitter.

    Returns:
        A :class:`~aioiam.Token`; an :class:`~aioiam.InvalidResponseError` for an answer that is not
        a valid :class:`~aioiam.TokenResponse`; a :class:`~aioiam.TransientIAMError` for a token
        that arrived already inside its expiry margin (nothing to hand out, but the next one may
        do).
    """
    if not isinstance(answer, TokenResponse):
        return InvalidResponseError(f"the token source returned {type(answer).__name__}, not an aioiam.TokenResponse")
    problem = token_response_problem(answer)
    if problem is not None:
        return InvalidResponseError(f"the token source's answer is unusable: {problem}")
    token = schedule(answer, sent_at, policy, u)
    if now >= token.stale_at:
        return TransientIAMError(
            f"the token arrived inside its expiry margin (lifetime {token.expires_in:g}s, "
            f"request took {now - sent_at:.3g}s)"
        )
    return token


@dataclass(frozen=True, slots=True)
class FailureRecord:
    """Failed attempts in a row, and what they impose. Replaced whole on each outcome.

    Attributes:
        failures: Failed attempts in a row (0 after a success).
        streak: Of those, the last ones of the same kind (transient or not): the backoff grows
            with these, so a first refusal after an outage gets a first refusal's cooldown.
        error: The last failure, reported to callers.
        not_before: No new request before this monotonic time: the backoff after a transient
            failure, the cooldown after a refusal (``-inf`` when nothing failed).
    """

    failures: int = 0
    streak: int = 0
    error: IAMError | None = None
    not_before: float = -math.inf

    @property
    def refused(self) -> bool:
        """Whether the last attempt failed in a way asking again will not fix by itself."""
        return self.error is not None and not is_transient(self.error)


#: The record after a success, or before any attempt.
NO_FAILURES = FailureRecord()


def after_failure(
    record: FailureRecord,
    error: IAMError,
    *,
    now: float,
    token: Token | None,
    policy: RetryPolicy,
    u: float,
) -> FailureRecord:
    """The record after a failed attempt at ``now`` with ``error``.

    Transient failures back off with full jitter (``u``), raised to IAM's ``Retry-After`` and,
    while ``token`` is still usable, capped at half its remaining life so a refresh gets further
    tries before it goes stale. Refusals and unusable answers wait the whole cap with no jitter:
    a refused key is never hammered.
    """
    transient = is_transient(error)
    same_kind = record.error is not None and is_transient(record.error) == transient
    streak = record.streak + 1 if same_kind else 1
    delay = backoff_delay(
        streak,
        policy,
        u if transient else 1.0,
        retry_after=error.retry_after if isinstance(error, TransientIAMError) else None,
        usable_for=token.stale_at - now if token is not None else None,
    )
    return FailureRecord(failures=record.failures + 1, streak=streak, error=error, not_before=now + delay)


def unavailable(cause: IAMError | None, *, waited: float | None = None) -> IAMUnavailableError:
    """The error for a caller left with no usable token.

    Args:
        cause: The last failure, if any (kept as ``cause`` and ``__cause__``).
        waited: The caller's whole wait, when it ran out; ``None`` when it gives up at once
            because the backoff ends after its deadline.
    """
    if waited is not None:
        message = f"no token from IAM within {waited:g}s"
    else:
        message = "IAM is unavailable and no usable token is left"
    if cause is not None:
        message += f"; last failure: {cause}"
    return IAMUnavailableError(
        message,
        cause=cause,
        status_code=cause.status_code if cause else None,
        error_code=cause.error_code if cause else None,
        request_id=cause.request_id if cause else None,
    )


@dataclass(frozen=True, slots=True)
class Take:
    """Hand ``token`` to the caller; with ``refresh``, first start a refresh in the background."""

    token: Token
    refresh: bool = False


@dataclass(frozen=True, slots=True)
class Wait:
    """No usable token: wait for the flight in progress, or start one and wait for it."""


@dataclass(frozen=True, slots=True)
class Sleep:
    """Backing off after a transient failure: sleep until ``until``, then decide again."""

    until: float


@dataclass(frozen=True, slots=True)
class Raise:
    """Give up: raise ``error`` to the caller."""

    error: IAMError


Step = Take | Wait | Sleep | Raise

_WAIT = Wait()


def caller_step(
    token: Token | None,
    record: FailureRecord,
    *,
    now: float,
    deadline: float,
    timeout: float,
    refresher: bool,
    busy: bool,
    waited: IAMError | None = None,
) -> Step:
    """What a caller of ``get_token`` does next.

    Args:
        token: The current token, if any.
        record: The failure record.
        now: The current monotonic time.
        deadline: When this caller gives up (``now`` at its call plus ``timeout``).
        timeout: The caller's whole wait (``retry.timeout``), for the message when it runs out.
        refresher: Whether a background refresher keeps the token fresh (inside ``async with``).
        busy: Whether a flight is in progress.
        waited: The error of the flight this caller just waited for, if it failed.

    Returns:
        - :class:`Take` for a fresh token; for a token due for refresh too, with ``refresh`` set
          when nobody else will refresh it (no refresher, no flight, no backoff in force): the
          caller starts the refresh and still returns at once.
        - :class:`Raise` with a copy of a refusal: the flight it waited for was refused, or a
          refusal's cooldown is in force (no new request for it).
        - :class:`Sleep` until a transient failure's backoff ends, if that is before ``deadline``;
          otherwise :class:`Raise` with ``IAMUnavailableError`` at once.
        - :class:`Raise` with ``IAMUnavailableError`` once ``deadline`` has passed.
        - :class:`Wait` otherwise.
    """
    state = token_state(token, now)
    if state is not TokenState.UNUSABLE:
        assert token is not None
        if state is TokenState.FRESH or refresher or busy:
            return Take(token)
        return Take(token, refresh=now >= record.not_before)
    if waited is not None and not is_transient(waited):
        return Raise(fresh_copy(waited))
    error = record.error
    if error is not None and now < record.not_before:
        if not is_transient(error):
            return Raise(fresh_copy(error))
        if record.not_before > deadline:
            return Raise(unavailable(error))
        return Sleep(record.not_before)
    if now >= deadline:
        return Raise(unavailable(error, waited=timeout))
    return _WAIT


def joins_at_once(token: Token | None, record: FailureRecord) -> bool:
    """Whether a caller who finds a flight in progress may wait for it without a :func:`caller_step`.

    The cold crowd's shortcut: with no token at all and nothing failed, :func:`caller_step` says
    :class:`Wait` to every caller whose deadline lies ahead (and a caller's deadline always lies
    ahead when it arrives). Saying so without building a step matters when a hundred thousand
    callers arrive before the first token. It does not say whether the flight ends before the
    caller's deadline: ``Flight.joiners`` is released in time for that (at the flight's end, or
    for a flight longer than a caller's whole wait, by a timer before any joiner's deadline).
    """
    return token is None and record is NO_FAILURES


def may_drop(token: Token | None, access_token: str, now: float, last_drop: float) -> bool:
    """Whether a 401 for ``access_token`` may drop the current ``token`` at ``now``.

    Only the token the 401 was for (so a hundred concurrent 401s drop it once), and not within
    :data:`DROP_COOLDOWN` of the last drop (``last_drop``, ``-inf`` if none), shortened to a tenth
    of the token's life for short-lived tokens: a service that refuses every token (another auth
    scheme on an allowed host, say) must not turn each call into an IAM request.
    """
    if token is None or token.access_token != access_token:
        return False
    return now - last_drop >= min(DROP_COOLDOWN, token.expires_in / 10)
