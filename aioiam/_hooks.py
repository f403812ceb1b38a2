"""What each IAM attempt tells the outside world: frozen details for user hooks, and log lines.

A hook is any callable taking a :class:`FetchAttempt`. Hooks run synchronously right after each
attempt; one that raises is logged and skipped, never allowed to break token fetching. The log
lines go to the ``aioiam`` logger. Nothing here carries a secret, decides anything, or changes
the manager's state: the manager calls these after it has decided.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._exceptions import IAMError, TransientIAMError

if TYPE_CHECKING:
    from ._token import Token

__all__ = [
    "SKEW_WARNING",
    "FetchAttempt",
    "Hook",
    "call_hooks",
    "logger",
    "report_failure",
    "report_success",
    "warn_of_skew",
]

#: Local wall clock and IAM's ``expiration`` further apart than this are reported (once).
SKEW_WARNING = 60.0

#: The library's logger. Nothing logged under it carries a key, a secret or a token.
logger = logging.getLogger("aioiam")


@dataclass(frozen=True, slots=True)
class FetchAttempt:
    """One request to IAM, as seen by the manager.

    Attributes:
        ok: Whether a token came back.
        duration: Seconds from sending the request to having the outcome.
        background: Whether the current token was still usable (a refresh ahead of expiry), as
            opposed to callers waiting for a token.
        consecutive_failures: Failed attempts in a row, this one included (0 after a success).
        error_type: The class name of the error, when the attempt failed.
        status_code: IAM's HTTP status, when it answered.
        error_code: IAM's error code, when it sent one.
        next_attempt_in: After a failure, seconds until the next attempt is allowed.
        expires_in: After a success, the new token's lifetime in seconds.
    """

    ok: bool
    duration: float
    background: bool
    consecutive_failures: int
    error_type: str | None = None
    status_code: int | None = None
    error_code: str | None = None
    next_attempt_in: float | None = None
    expires_in: float | None = None


Hook = Callable[[FetchAttempt], None]


def call_hooks(hooks: Sequence[Hook], attempt: FetchAttempt) -> None:
    """Call each hook with ``attempt``; log and swallow what a hook raises."""
    for hook in hooks:
        try:
            hook(attempt)
        except Exception as exc:  # a broken hook must not break token fetching
            logger.warning("aioiam hook %r raised %s; ignored", hook, type(exc).__name__)


def report_success(hooks: Sequence[Hook], token: Token, *, duration: float, background: bool, now: float) -> None:
    """Log a new token (DEBUG) and tell the hooks."""
    logger.debug(
        "aioiam: got a token valid for %.0fs in %.3fs; refresh due in %.0fs",
        token.expires_in,
        duration,
        token.refresh_at - now,
    )
    call_hooks(hooks, FetchAttempt(True, duration, background, 0, expires_in=token.expires_in))


def report_failure(
    hooks: Sequence[Hook],
    error: IAMError,
    *,
    current: Token | None,
    now: float,
    failures: int,
    delay: float,
    duration: float,
    background: bool,
) -> None:
    """Log a failed attempt (WARNING), saying what callers get meanwhile, and tell the hooks.

    Args:
        hooks: The manager's hooks.
        error: The failure, already scrubbed.
        current: The token still held, if any.
        now: When the failure was recorded.
        failures: Failed attempts in a row, this one included.
        delay: Seconds until the next attempt is allowed.
        duration: Seconds the attempt took.
        background: Whether a usable token was held when the attempt began.
    """
    if current is not None and now < current.stale_at:
        logger.warning(
            "aioiam: token refresh failed (%s); still serving the current token, usable for %.3gs more; "
            "next attempt in %.3gs",
            error,
            current.stale_at - now,
            delay,
        )
    elif isinstance(error, TransientIAMError):
        logger.warning("aioiam: token request failed (%s); next attempt allowed in %.3gs", error, delay)
    else:
        logger.warning(
            "aioiam: token request failed (%s); not retried in the background, callers within "
            "the next %.3gs get this error without a new request",
            error,
            delay,
        )
    call_hooks(
        hooks,
        FetchAttempt(
            False,
            duration,
            background,
            failures,
            error_type=type(error).__name__,
            status_code=error.status_code,
            error_code=error.error_code,
            next_attempt_in=delay,
        ),
    )


def warn_of_skew(token: Token, wall_sent_at: float) -> bool:
    """Warn if IAM's ``expiration`` says its clock and ours differ by over :data:`SKEW_WARNING`.

    Returns:
        Whether it warned (the manager warns once). Tokens are timed on the monotonic clock, so
        this only tells the user about tools that compare ``exp`` with local time.
    """
    if token.expiration is None:
        return False
    skew = token.expiration - (wall_sent_at + token.expires_in)
    if abs(skew) <= SKEW_WARNING:
        return False
    logger.warning(
        "aioiam: the local clock differs from IAM's by about %.0fs. aioiam times tokens on the "
        "monotonic clock, so it is not affected; tools that compare a token's 'exp' with local "
        "time are.",
        -skew,
    )
    return True
