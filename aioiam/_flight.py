"""One IAM request in progress (a *flight*), and the fetch it runs.

A :class:`Flight` is what every caller waiting for the same request shares: a one-shot latch and
the outcome they all read once it is set. :func:`fetch` runs a source's request within a time
budget and turns whatever happens into an answer or an :class:`~aioiam.IAMError`; it keeps no
state and decides nothing beyond that (``_decisions`` does).
"""

from __future__ import annotations

import anyio
import httpx

from ._backend import Backend
from ._decisions import classify
from ._exceptions import IAMError, TransientIAMError
from ._redaction import Redactor
from ._sources import TokenSource
from ._token import Token

__all__ = ["Flight", "fetch"]


class Flight:
    """One request to IAM and its outcome, shared by everyone who waits for it.

    ``ends_by`` bounds when it finishes (the request is cut off then), so a waiter whose own
    deadline is later can wait without a timeout of its own: with a hundred thousand waiters, a
    cancel scope each is most of the cost of waking them.

    It ends once, with a token, an error, or neither (*abandoned*: its task was cancelled while
    the manager stayed open; its waiters decide again and one of them starts a new flight).
    """

    __slots__ = ("backend", "done", "ends_by", "error", "joinable", "token")

    def __init__(self, backend: Backend, ends_by: float, *, joinable: bool) -> None:
        #: The event loop it runs on: only its callers may wait for it.
        self.backend = backend
        self.done = backend.new_latch()
        self.ends_by = ends_by
        #: Whether it ends before the deadline of any caller who arrives while it runs (its budget
        #: is at most a caller's whole wait), so such a caller may wait for it with no timeout.
        self.joinable = joinable
        self.token: Token | None = None
        self.error: IAMError | None = None

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
