"""Instrumentation: frozen details of each IAM attempt, handed to user hooks.

A hook is any callable taking a :class:`FetchAttempt`. Hooks run synchronously right after each
attempt; one that raises is logged and skipped, never allowed to break token fetching. Nothing here
carries a secret.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["FetchAttempt", "Hook", "call_hooks", "logger"]

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
