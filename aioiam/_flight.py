"""One IAM request in progress (a *flight*), and what it does.

A :class:`Flight` is what every caller waiting for the same request shares: a one-shot latch and
the outcome they all read once it is set. :func:`attempt` is the flight's work: ask IAM (or,
with a shared cache, the fleet first) and check the answer, returning an :class:`Attempt`; the
manager records and publishes it. :func:`fetch` runs a source's request within a time budget and
turns whatever happens into an answer or an :class:`~aioiam.IAMError`. None of them keeps state
or decides anything beyond that (``_decisions`` does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import anyio
import httpx

from ._backend import Backend
from ._decisions import check_answer, classify
from ._exceptions import IAMError, TransientIAMError
from ._redaction import Redactor
from ._settings import Settings
from ._sources import TokenSource
from ._token import Token

__all__ = ["Attempt", "Flight", "attempt", "fetch"]


class Flight:
    """One request to IAM and its outcome, shared by everyone who waits for it.

    ``ends_by`` bounds when it finishes (the request is cut off then), so a waiter whose own
    deadline is later can wait without a timeout of its own: with a hundred thousand waiters, a
    cancel scope each is most of the cost of waking them.

    It ends once, with a token, an error, or neither (*abandoned*: its task was cancelled while
    the manager stayed open; its waiters decide again and one of them starts a new flight).
    """

    __slots__ = ("backend", "done", "ends_by", "error", "joinable", "joiners", "token")

    def __init__(self, backend: Backend, ends_by: float, *, joinable: bool) -> None:
        #: The event loop it runs on: only its callers may wait for it.
        self.backend = backend
        self.done = backend.new_latch()
        self.ends_by = ends_by
        #: Whether it ends before the deadline of any caller who arrives while it runs (its budget
        #: is at most a caller's whole wait), so such a caller may wait for it with no timeout.
        self.joinable = joinable
        #: What the cold crowd waits on, with no timeout of its own: ``done`` when the flight is
        #: joinable; otherwise a latch set when it ends or when :meth:`release_joiners` is
        #: called (by a timer at its start plus a caller's whole wait, before any joiner's own
        #: deadline), after which a joiner still without a token waits with a deadline of its own.
        self.joiners = self.done if joinable else backend.new_latch()
        self.token: Token | None = None
        self.error: IAMError | None = None

    def release_joiners(self) -> None:
        """Wake whoever waits on :attr:`joiners` (the flight goes on); a no-op once woken."""
        if not self.joiners.is_set():
            self.joiners.set()

    def finish(self, token: Token | None, error: IAMError | None) -> bool:
        """Record the outcome and release every waiter, unless it has ended already.

        Returns:
            Whether this call ended it.
        """
        if self.done.is_set():
            return False
        self.token = token
        self.error = error
        self.done.set()
        self.release_joiners()
        return True


async def fetch(
    source: TokenSource, client: httpx.AsyncClient, budget: float, *, redact: Redactor, timeout_text: str
) -> tuple[object, IAMError | None]:
    """Run ``source.fetch(client)`` for at most ``budget`` seconds.

    Returns:
        ``(answer, None)`` with what the source returned (not yet checked: see
        ``_decisions.check_answer``), or ``(None, error)`` with the :class:`~aioiam.IAMError` for
        what went wrong, scrubbed with ``redact``. Running out of ``budget`` is a
        :class:`~aioiam.TransientIAMError` saying ``timeout_text``; a ``TimeoutError`` the source
        raises itself is its own failure.

    Does not retry, record or publish anything. Cancellation passes through.
    """
    try:
        with anyio.move_on_after(budget):
            return await source.fetch(client), None
    except Exception as exc:  # cancellation is a BaseException: it passes through
        return None, classify(exc, redact)
    return None, TransientIAMError(timeout_text)  # reached only when the budget ran out


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one flight got, for the manager to record and publish.

    Attributes:
        outcome: The scheduled token, or the failure.
        asked: Whether this process sent a request to IAM (``False``: a token adopted from the
            fleet through the shared cache; then there is nothing to report to hooks or record).
        wall_sent_at: The Unix time the request was sent (for the clock-skew warning).
        duration: How long the request took, on the manager's clock.
        now: When the outcome was known, on the manager's clock.
    """

    outcome: Token | IAMError
    asked: bool
    wall_sent_at: float
    duration: float
    now: float


async def attempt(
    settings: Settings,
    client: httpx.AsyncClient,
    *,
    ends_by: float,
    avoid: str | None,
    count: Callable[[], None],
    redact: Redactor,
) -> Attempt:
    """Get a token for a flight that must end by ``ends_by`` (the manager's clock).

    Without a shared cache, one request through ``settings.source``; with one, the fleet's token
    when it holds a fresher one, else a request (see ``_cache.CacheLink.fetch``), never the
    access token ``avoid`` (the one held now, or one a service refused). ``count()`` is called as
    each request is sent. The answer is checked and scheduled (``_decisions.check_answer``).

    Does not publish, record failures, call hooks, or retry: the manager does that with what this
    returns. Cancellation passes through; a bug raises.
    """
    clock = settings.clock
    sent: list[float] = []  # when this process's own request was sent: our clock, the wall clock

    async def ask(budget: float) -> tuple[object, IAMError | None]:
        sent[:] = [clock(), settings.wall_clock()]
        count()
        return await fetch(
            settings.source,
            client,
            budget,
            redact=redact,
            timeout_text=f"IAM did not answer within {settings.retry.request_timeout:g}s",
        )

    if settings.cache is None:
        # Budgeted from when the flight was made, so ``ends_by`` holds even if this task started
        # late on a busy loop.
        answer, error = await ask(max(0.0, ends_by - clock()))
        started_at = sent[0]
        u = None
    else:
        u = settings.rng.random()  # drawn first: the cache's decision and the schedule share it
        shared = await settings.cache.fetch(
            ask,
            clock=clock,
            policy=settings.refresh,
            request_timeout=min(settings.retry.request_timeout, max(0.0, ends_by - clock())),
            u=u,
            avoid=avoid,
        )
        answer, error, started_at = shared.answer, shared.error, shared.started_at
    now = clock()
    if error is not None:
        outcome: Token | IAMError = error
    else:  # the jitter is drawn only for an answer to schedule
        outcome = check_answer(answer, started_at, now, settings.refresh, settings.rng.random() if u is None else u)
    if not sent:
        return Attempt(outcome, asked=False, wall_sent_at=settings.wall_clock(), duration=0.0, now=now)
    return Attempt(outcome, asked=True, wall_sent_at=sent[1], duration=now - sent[0], now=now)
