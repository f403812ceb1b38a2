"""``TokenManager``: one shared, refreshed-ahead IAM token for any number of tasks.

The async shell around the pure rules of ``_timing``. It owns three things:

- the current token and the record of consecutive failures (the only mutable state);
- at most one *flight*: the single IAM request in progress, with a one-shot event that every
  waiter of that request waits on and a result they all read;
- in ``async with`` mode, a task group holding the background refresher and every flight, so no
  caller's cancellation can cancel a request other callers wait for.

Without ``async with`` nothing runs in the background: the caller who finds a token missing or due
starts the flight and runs it in its own task, shielded from its own cancellation so the others
still get the answer.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import math
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import cache

import anyio
import anyio.lowlevel
import httpx
from anyio import AsyncContextManagerMixin
from anyio.abc import TaskGroup

from ._exceptions import (
    IAMError,
    IAMUnavailableError,
    InvalidResponseError,
    ManagerClosedError,
    TransientIAMError,
)
from ._hooks import FetchAttempt, Hook, call_hooks, logger
from ._latch import Latch, new_latch
from ._sources import USER_AGENT, ApiKeySource, TokenSource
from ._timing import (
    RefreshPolicy,
    RetryPolicy,
    TokenState,
    backoff_delay,
    next_attempt_at,
    schedule,
    token_state,
)
from ._token import Token, TokenResponse, scrub, token_response_problem

__all__ = ["TokenManager"]

_NEVER = -math.inf
#: Local wall clock and IAM's ``expiration`` further apart than this are reported (once).
_SKEW_WARNING = 60.0


def _current_loop() -> object:
    """The running event loop, as an object whose identity names it.

    asyncio's is looked up first because it is one C call: with a hundred thousand callers
    waiting for the first token, this check runs once per caller.
    """
    loop = asyncio._get_running_loop()
    if loop is not None:
        return loop
    return anyio.lowlevel.current_token().native_token


def _describe(exc: BaseException) -> str:
    """``ReadError: ...`` with the OS error under it, for network failures whose text is empty."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    for _ in range(4):  # httpx wraps httpcore, which wraps anyio or the OS
        if cause is None:
            break
        if str(cause) and str(cause) not in text:
            text += f" ({type(cause).__name__}: {cause})"
            break
        cause = cause.__cause__ or cause.__context__
    return text


@cache
def _default_ssl_context() -> ssl.SSLContext:
    """The verifying TLS context shared by every client a manager makes, built on first use.

    Building one loads the whole CA bundle: about 850 KiB and 20 ms each. Sharing it is what
    lets a worker hold ten thousand managers; an ``SSLContext`` is safe to share between
    clients, event loops and threads. Not used when the caller passes ``verify=``.
    """
    return httpx.create_ssl_context()


def _warn_if_unverified(client: httpx.AsyncClient) -> None:
    """Log a warning if a caller's client does not verify TLS certificates (best effort)."""
    try:
        context = client._transport._pool._ssl_context  # type: ignore[attr-defined]
    except AttributeError:
        return  # not httpx's default transport: nothing to inspect
    if isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_NONE:
        logger.warning(
            "aioiam: the http_client passed in does not verify TLS certificates; anyone on the path "
            "can read the API key. Use this only against a local emulator."
        )


class _Lifecycle(enum.Enum):
    OPEN = "open"
    RUNNING = "running"  # inside ``async with``: the refresher runs
    CLOSED = "closed"


class _Flight:
    """One IAM request in progress and its outcome, shared by everyone who waits for it.

    ``ends_by`` bounds when it finishes (the request is cut off then), so a waiter
    whose own deadline is later can wait without a timeout of its own: with a hundred thousand
    waiters, a cancel scope each is most of the cost of waking them.
    """

    __slots__ = ("by_caller", "done", "ends_by", "error", "inline", "token")

    def __init__(self, ends_by: float, *, by_caller: bool = False, inline: bool = False) -> None:
        self.done: Latch = new_latch()
        self.ends_by = ends_by
        #: ``ends_by`` is an on-demand caller's deadline, sooner than ``retry.request_timeout``.
        self.by_caller = by_caller
        #: Run by the caller who started it (on demand, not on asyncio): see ``_run_inline``.
        self.inline = inline
        self.token: Token | None = None
        self.error: IAMError | None = None


class TokenManager(AsyncContextManagerMixin):
    """Fetches, caches, shares and refreshes one IAM token.

    Use it as ``async with TokenManager(key) as tm:`` to get a background refresher (after the first
    token no caller waits for IAM while IAM is healthy), or call :meth:`get_token` without
    ``async with`` to refresh on demand; either way close it (leaving the block, or
    :meth:`aclose`).

    Args:
        api_key: The IBM Cloud API key. Required unless ``source`` is given.
        url: IAM's base URL; ``/identity/token`` is appended (a URL that already ends with it is
            accepted). https only, except for loopback hosts.
        client_id: With ``client_secret``, sent as HTTP Basic auth (both or neither).
        client_secret: See ``client_id``.
        scope: Sent as ``scope`` when given.
        http_client: An ``httpx.AsyncClient`` you own and close; its ``auth`` is not applied to
            token requests. When omitted the manager makes one and closes it.
        transport: An ``httpx`` async transport for the client the manager makes (for instance
            ``aioiam.testing.FakeIAM().transport``). Not allowed with ``http_client``.
        source: A :class:`~aioiam.TokenSource` to use instead of the API-key grant.
        refresh: When to refresh and when to stop handing a token out.
        retry: How to retry, and how long a caller with no usable token waits.
        hooks: Callables receiving a :class:`~aioiam.FetchAttempt` after every IAM request.
        clock: The monotonic clock, in seconds. Sleeps and timeouts use the event loop's clock,
            so inject one that moves with it (tests pass ``anyio.current_time`` under a virtual
            event loop clock).
        wall_clock: The Unix time, used only to warn about skew against IAM's ``expiration``.
        rng: The random source for jitter.
        verify: TLS verification for the client the manager makes: ``True`` (the default) or an
            ``ssl.SSLContext`` (for a private CA). ``False`` turns verification off and logs a
            warning; never do that against real IAM. Not allowed with ``http_client``.

    Raises:
        ValueError: A missing or blank key, a non-https URL for a non-loopback host, only one of
            ``client_id``/``client_secret``, or conflicting arguments.
        TypeError: An argument of the wrong type (a key that is not a ``str``, a policy of the
            wrong class, a clock that is not callable, an ``async def`` hook, ...).
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        url: str = "https://iam.cloud.ibm.com",
        client_id: str | None = None,
        client_secret: str | None = None,
        scope: str | None = None,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        source: TokenSource | None = None,
        refresh: RefreshPolicy | None = None,
        retry: RetryPolicy | None = None,
        hooks: Sequence[Hook] = (),
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        verify: bool | ssl.SSLContext = True,
    ) -> None:
        if source is None:
            if api_key is None:
                raise ValueError("api_key is missing; pass the IBM Cloud API key (or a source)")
            source = ApiKeySource(api_key, url=url, client_id=client_id, client_secret=client_secret, scope=scope)
        elif api_key is not None or client_id is not None or client_secret is not None or scope is not None:
            raise ValueError("pass either source or api_key (with client_id, client_secret, scope), not both")
        if not isinstance(source, TokenSource):
            raise TypeError("source must implement aioiam.TokenSource (a 'secrets' property and 'fetch')")
        if http_client is not None and transport is not None:
            raise ValueError("pass either http_client or transport, not both")
        if http_client is not None and not isinstance(http_client, httpx.AsyncClient):
            raise TypeError("http_client must be an httpx.AsyncClient")
        if refresh is not None and not isinstance(refresh, RefreshPolicy):
            raise TypeError(f"refresh must be an aioiam.RefreshPolicy, not {type(refresh).__name__}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be an aioiam.RetryPolicy, not {type(retry).__name__}")
        for name, function in (("clock", clock), ("wall_clock", wall_clock)):
            if not callable(function):
                raise TypeError(f"{name} must be a function returning seconds, not {type(function).__name__}")
        if rng is not None and not callable(getattr(rng, "random", None)):
            raise TypeError(f"rng must have a random() method, like random.Random; got {type(rng).__name__}")
        if not isinstance(verify, (bool, ssl.SSLContext)):
            raise TypeError(
                f"verify must be True, False or an ssl.SSLContext, not {type(verify).__name__}; for a private "
                "CA pass an ssl.SSLContext: verify=ssl.create_default_context(cafile=...)"
            )
        if callable(hooks):
            raise TypeError("hooks must be a sequence of callables; put a single hook in a list: hooks=[hook]")
        try:
            checked_hooks = tuple(hooks)
        except TypeError:
            raise TypeError(f"hooks must be a sequence of callables, not {type(hooks).__name__}") from None
        for index, hook in enumerate(checked_hooks):
            if not callable(hook):
                raise TypeError(f"hooks[{index}] must be callable, not {type(hook).__name__}")
            if (
                inspect.iscoroutinefunction(hook)
                or inspect.isasyncgenfunction(hook)
                or inspect.iscoroutinefunction(getattr(hook, "__call__", None))  # noqa: B004
            ):
                name = getattr(hook, "__qualname__", type(hook).__name__)
                raise TypeError(
                    f"hooks[{index}] ({name}) is an async function, but hooks are called synchronously "
                    "and its coroutine would never run; pass a plain function"
                )

        self._source = source
        self._refresh = refresh if refresh is not None else RefreshPolicy()
        self._retry = retry if retry is not None else RetryPolicy()
        self._hooks = checked_hooks
        self._clock = clock
        self._wall_clock = wall_clock
        self._rng = rng if rng is not None else random.Random()
        self._owns_client = http_client is None
        self._transport = transport
        self._verify = verify
        if verify is False:
            logger.warning(
                "aioiam: TLS certificate verification of IAM is OFF (verify=False); anyone on the path "
                "can read the API key. Use this only against a local emulator."
            )
        if http_client is not None:
            if verify is not True:
                raise ValueError("verify applies to the client the manager makes; configure your http_client instead")
            _warn_if_unverified(http_client)
        self._client = http_client if http_client is not None else self._make_client(transport)
        self._loop: object = None

        self._state = _Lifecycle.OPEN
        self._token: Token | None = None
        # The token on the fast path: set only inside ``async with`` while the token is fresh, and
        # withdrawn by the refresher when its refresh is due, so get_token() reads no clock.
        self._hot: Token | None = None
        self._flight: _Flight | None = None
        self._failures = 0  # failed attempts in a row
        self._streak = 0  # of those, the last ones of the same kind (transient or not)
        self._last_error: IAMError | None = None
        self._not_before = _NEVER
        self._tg: TaskGroup | None = None
        self._entered = False
        # On demand: the asyncio task running the request, or the cancel scope of the caller
        # running it elsewhere (see _start_flight); aclose() cancels either.
        self._detached: set[asyncio.Task[None]] = set()
        self._inline_scope: anyio.CancelScope | None = None
        self._wakeup: anyio.Event | None = None
        self._warned_skew = False
        self._requests = 0

    def _make_client(self, transport: httpx.AsyncBaseTransport | None) -> httpx.AsyncClient:
        # No keep-alive: one token request every ~48 minutes gains nothing from an idle
        # connection, and a pool without one is bound to no event loop.
        return httpx.AsyncClient(
            transport=transport,
            verify=_default_ssl_context() if self._verify is True else self._verify,
            timeout=httpx.Timeout(self._retry.request_timeout),
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        token = self._token
        remaining = f"{token.stale_at - self._clock():.0f}s" if token is not None else "none"
        return f"<TokenManager {self._state.value} source={self._source!r} token_valid_for={remaining}>"

    # ------------------------------------------------------------------ public surface

    @property
    def token(self) -> Token | None:
        """The token held right now, if any, whatever its state. Does no I/O."""
        return self._token

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has run."""
        return self._state is _Lifecycle.CLOSED

    @property
    def request_count(self) -> int:
        """How many requests this manager has sent to IAM."""
        return self._requests

    async def get_token(self) -> str:
        """Return a usable access token, fetching or refreshing it only when needed.

        Returns at once while the cached token is fresh. No caller ever receives a token inside
        its expiry margin. Concurrent callers share one IAM request.

        Inside ``async with`` the fast path reads no clock: the refresher takes the token off it
        when its refresh falls due, and from then on every call checks the clock. The margin
        guarantee therefore assumes the event loop is never blocked for longer than the refresh
        window (``stale_at - refresh_at``: at least 10% of the lifetime, about 12 minutes for
        IAM's one-hour tokens with the default policy).

        Raises:
            InvalidCredentialsError: IAM refused the key (also to later callers within the
                cooldown, without a new request).
            IAMUnavailableError: No usable token, and IAM did not give one within
                ``retry.timeout``.
            InvalidResponseError: IAM's answer was not a usable token response.
            ManagerClosedError: The manager is closed, or was closed while waiting.
        """
        hot = self._hot
        if hot is not None:
            return hot.access_token
        token = self._token
        if token is not None and self._clock() < token.refresh_at:
            return token.access_token
        return (await self._get_slow()).access_token

    async def get_token_info(self) -> Token:
        """Like :meth:`get_token`, but return the whole :class:`~aioiam.Token`."""
        hot = self._hot
        if hot is not None:
            return hot
        token = self._token
        if token is not None and self._clock() < token.refresh_at:
            return token
        return await self._get_slow()

    def invalidate(self, access_token: str) -> bool:
        """Drop the current token if it is ``access_token``; the next caller gets a new one.

        Meant for a service that answered 401 to a token: comparing with the token actually
        used means a hundred concurrent 401s for one token cause one refresh, not a hundred.

        Returns:
            Whether the token was dropped (``False`` when it had already been replaced).
        """
        token = self._token
        if token is None or token.access_token != access_token:
            return False
        self._token = self._hot = None
        logger.info("aioiam: token dropped after a 401 from a service; fetching a new one")
        self._poke()
        return True

    async def aclose(self) -> None:
        """Close the manager: stop the refresher, wake waiters with ``ManagerClosedError``, close
        the HTTP client the manager made (never one you passed in). Idempotent."""
        if self._state is _Lifecycle.CLOSED:
            return
        if self._tg is not None and _current_loop() is not self._loop:
            raise RuntimeError(
                "this TokenManager is running inside 'async with' on another event loop; close it "
                "from that loop (leaving the block closes it)"
            )
        self._close_now()
        running = asyncio._get_running_loop()
        pending = [task for task in self._detached if task.get_loop() is running]
        if pending:
            await asyncio.wait(pending)  # cancelled just now: they end at their next step
        if self._tg is None and self._owns_client:
            await self._client.aclose()

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncIterator[TokenManager]:
        if self._state is _Lifecycle.CLOSED:
            raise ManagerClosedError("this TokenManager is closed; make a new one")
        if self._entered:
            raise RuntimeError("this TokenManager has already been entered; enter it once and share it")
        # Set before the first await: AsyncContextManagerMixin records an entry only once it has
        # completed, so without this a second task entering at the same moment would get in too.
        self._entered = True
        self._bind_event_loop()
        body_error: BaseException | None = None
        try:
            async with anyio.create_task_group() as outer:
                await outer.start(self._host)
                try:
                    yield self
                except BaseException as exc:
                    # Re-raised below, outside the task group, so the caller sees their own
                    # exception and not an ExceptionGroup around it.
                    body_error = exc
                finally:
                    self._close_now()
        finally:
            self._tg = None
            if self._owns_client:
                with anyio.CancelScope(shield=True):
                    await self._client.aclose()
        if body_error is not None:
            raise body_error

    # ------------------------------------------------------------------ background refresher

    async def _host(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            self._state = _Lifecycle.RUNNING
            tg.start_soon(self._refresher, name="aioiam refresher")
            task_status.started()

    async def _refresher(self) -> None:
        """Refresh ahead of expiry and retry after failures, until the manager closes."""
        while self._state is not _Lifecycle.CLOSED:
            now = self._clock()
            token = self._token
            # Keep the fast path in step: the token is on it only while fresh. From its refresh
            # time on, callers take the clock-checked path.
            self._hot = token if token is not None and now < token.refresh_at else None
            # After a refusal with no usable token left this is never: the next caller asks again
            # (after the cooldown), and a new token or invalidate() wakes the refresher.
            refused = self._last_error is not None and not isinstance(self._last_error, TransientIAMError)
            at = next_attempt_at(token, self._not_before, now, refused=refused)
            if at > now:
                await self._sleep_until(at)
                continue
            flight = self._flight or self._start_flight()
            await flight.done.wait()

    def _poke(self) -> None:
        """Wake everything sleeping in :meth:`_sleep_until` so it looks at the state again."""
        event = self._wakeup
        if event is not None:
            self._wakeup = None
            event.set()

    async def _sleep_until(self, deadline: float) -> None:
        if self._wakeup is None:
            self._wakeup = anyio.Event()
        event = self._wakeup
        if deadline == math.inf:
            await event.wait()
            return
        with anyio.move_on_after(max(0.0, deadline - self._clock())):
            await event.wait()

    # ------------------------------------------------------------------ callers

    def _bind_event_loop(self) -> None:
        """Forget what belongs to an event loop that is no longer the current one.

        A manager may outlive its event loop: a CLI calling ``asyncio.run`` twice, or
        pytest-asyncio's loop per test. Tokens are plain values and carry over; events, a flight
        that loop never finished, and the HTTP client the manager made (whose pool may hold that
        loop's locks) are replaced. A client passed in by the caller is kept as is: making it
        usable on the new loop is the caller's business.
        """
        loop = _current_loop()
        if loop is self._loop:
            return
        if self._tg is not None:
            raise RuntimeError(
                "this TokenManager is running inside 'async with' on another event loop; a manager "
                "belongs to one event loop at a time. Use it from that loop, or make one per loop."
            )
        if self._loop is not None:
            logger.debug("aioiam: token manager now used from another event loop; loop-bound state reset")
            self._wakeup = None
            self._flight = None
            self._detached = set()
            self._inline_scope = None
            if self._owns_client:
                # The old client holds no connection (no keep-alive) and cannot be closed from
                # this loop; dropping it leaks nothing.
                self._client = self._make_client(self._transport)
        self._loop = loop

    async def _get_slow(self) -> Token:
        self._bind_event_loop()
        now = self._clock()
        deadline = now + self._retry.timeout  # one reading: the first pass is always before it
        first = True
        while True:
            if self._state is _Lifecycle.CLOSED:
                raise ManagerClosedError("this TokenManager is closed")
            if not first:
                now = self._clock()
            first = False
            token = self._token
            state = token_state(token, now)
            if state is TokenState.FRESH:
                assert token is not None
                return token
            if state is TokenState.REFRESH_DUE:
                assert token is not None
                if self._tg is None and self._flight is None and now >= self._not_before:
                    # On demand: this caller refreshes; concurrent callers keep the valid token.
                    await self._wait_for(await self._launch(deadline), deadline)
                    continue
                return token

            # No usable token: wait for one.
            error = self._last_error
            if error is not None and now < self._not_before:
                if not isinstance(error, TransientIAMError):
                    raise error._fresh_copy()
                if self._not_before > deadline:
                    raise self._unavailable(error)
                await self._sleep_until(self._not_before)
                continue
            if now >= deadline:
                raise self._unavailable(error)
            flight = self._flight or await self._launch(deadline)
            await self._wait_for(flight, deadline)
            if not flight.done.is_set():
                raise self._unavailable(self._last_error, waited=True)
            fetched = flight.token
            if fetched is not None and fetched is self._token and self._clock() < fetched.stale_at:
                # The common case, without another pass through the loop. ``is self._token``:
                # a token invalidated since the flight ended is never handed out.
                return fetched
            if flight.error is not None and not isinstance(flight.error, TransientIAMError):
                raise flight.error._fresh_copy()

    async def _launch(self, deadline: float) -> _Flight:
        """Start a flight for a caller with this ``deadline``; run it here if it is inline."""
        flight = self._start_flight(deadline)
        if flight.inline:
            await self._run_inline(flight)
        return flight

    async def _wait_for(self, flight: _Flight, deadline: float) -> None:
        """Wait until ``flight`` ends or ``deadline`` passes, whichever comes first.

        A flight that ends before the deadline needs no timeout of its own: with a hundred
        thousand waiters, a cancel scope each is most of the cost of waking them.
        """
        if flight.ends_by <= deadline:
            await flight.done.wait()
        else:
            with anyio.move_on_after(max(0.0, deadline - self._clock())):
                await flight.done.wait()

    def _unavailable(self, cause: IAMError | None, *, waited: bool = False) -> IAMUnavailableError:
        if waited:
            message = f"no token from IAM within {self._retry.timeout:g}s"
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

    # ------------------------------------------------------------------ flights

    def _start_flight(self, deadline: float = math.inf) -> _Flight:
        """Make the one flight and start it, or leave it to the caller to run.

        Synchronous on purpose: between checking ``self._flight`` and setting it nothing can run.

        - In ``async with`` mode the request runs in the manager's task group.
        - On demand on asyncio, it runs in a task of its own, which ends with the request (by
          ``retry.request_timeout``) and which :meth:`aclose` cancels: no caller's cancellation,
          asyncio's ``Task.cancel()`` included, reaches it.
        - On demand elsewhere (trio: no task can be started outside a nursery) the flight is
          ``inline``: the caller must run it with :meth:`_run_inline`, and the request is cut off
          at that caller's ``deadline`` if it comes before ``retry.request_timeout``, so the
          caller never waits past ``retry.timeout``.

        In the first two cases ``deadline`` is ignored: waiters give up on their own.
        """
        assert self._flight is None
        if self._state is _Lifecycle.CLOSED:
            raise ManagerClosedError("this TokenManager is closed")
        ends_by = self._clock() + self._retry.request_timeout
        loop = asyncio._get_running_loop() if self._tg is None else None
        if self._tg is not None or loop is not None:
            flight = _Flight(ends_by)
        else:
            by_caller = deadline < ends_by
            flight = _Flight(deadline if by_caller else ends_by, by_caller=by_caller, inline=True)
        self._flight = flight
        if self._tg is not None:
            self._tg.start_soon(self._run_flight, flight, name="aioiam token request")
        elif loop is not None:
            task = loop.create_task(self._run_flight(flight), name="aioiam token request")
            self._detached.add(task)  # a strong reference until it ends; asyncio keeps a weak one
            task.add_done_callback(self._detached.discard)
        return flight

    async def _run_inline(self, flight: _Flight) -> None:
        # Shielded: cancelling this caller must not cancel the request others wait for. The
        # request is bounded by ``flight.ends_by``, so the delay to this caller's cancellation
        # is bounded too. aclose() cancels the scope itself, which a shield does not stop.
        with anyio.CancelScope(shield=True) as scope:
            self._inline_scope = scope
            try:
                await self._run_flight(flight)
            finally:
                self._inline_scope = None

    async def _run_flight(self, flight: _Flight) -> None:
        """Run one flight to its end: fetch, record the outcome, and release every waiter.

        Whatever happens (including a bug in a custom source or in the bookkeeping), the flight
        is finished before this returns, so no waiter is ever left waiting on it.
        """
        try:
            await self._attempt(flight)
        except anyio.get_cancelled_exc_class():
            if self._state is _Lifecycle.CLOSED or self._tg is not None:
                # In ``async with`` mode only the manager's own task group cancels a flight: it
                # is closing.
                self._finish(flight, None, ManagerClosedError("the TokenManager was closed while fetching"))
            else:
                # Cancelled while the manager is open: asyncio cancelling every task as its loop
                # shuts down, or a native Task.cancel() (which goes through anyio's shields) of
                # the caller running it. The request is abandoned, not failed: no backoff, and
                # any waiters go round again and one of them asks anew.
                logger.debug("aioiam: a token request was cancelled while the manager is open; request abandoned")
                self._finish(flight, None, None)
            raise
        except Exception as exc:  # every waiter must get an IAMError, whatever broke
            error = InvalidResponseError(f"aioiam could not complete the token request: {type(exc).__name__}")
            error.__cause__ = exc
            self._finish(flight, None, error)
        finally:
            self._finish(flight, None, None)  # a no-op unless something above did not finish it

    async def _attempt(self, flight: _Flight) -> None:
        background = token_state(self._token, self._clock()) is not TokenState.UNUSABLE
        started = self._clock()
        wall_started = self._wall_clock()
        budget = max(0.0, flight.ends_by - started)
        self._requests += 1
        response: object = None
        error: IAMError | None = None
        cut_short = False
        try:
            # Measured from when the flight was made, so ``ends_by`` holds even if this task
            # started late on a busy loop.
            with anyio.move_on_after(budget) as deadline:
                response = await self._source.fetch(self._client)
            if deadline.cancelled_caught:
                # Our own cut-off. (A TimeoutError the source raises itself is its own failure.)
                if flight.by_caller:
                    # Cut off at the deadline of the on-demand caller who ran it, not by IAM.
                    error = TransientIAMError(f"IAM did not answer within the {budget:.3g}s left to the caller")
                    cut_short = True
                else:
                    error = TransientIAMError(f"IAM did not answer within {self._retry.request_timeout:g}s")
        except httpx.TransportError as exc:
            error = TransientIAMError(f"could not reach IAM: {self._redact(_describe(exc))}")
        except IAMError as exc:
            error = exc._scrubbed(self._redact)  # a custom source's errors may quote its secrets
        except httpx.HTTPError as exc:
            error = InvalidResponseError(f"IAM's answer could not be read: {type(exc).__name__}")
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:  # a custom source's bug must still reach callers as an IAMError
            error = InvalidResponseError(f"the token source failed: {type(exc).__name__}")
            if self._redact(str(exc)) == str(exc):  # the cause is kept unless it quotes a secret
                error.__cause__ = exc
        duration = self._clock() - started
        if self._state is _Lifecycle.CLOSED:
            self._finish(flight, None, ManagerClosedError("the TokenManager was closed while fetching"))
            return

        if error is None and not isinstance(response, TokenResponse):
            error = InvalidResponseError(
                f"the token source returned {type(response).__name__}, not an aioiam.TokenResponse"
            )
        elif error is None and isinstance(response, TokenResponse):
            problem = token_response_problem(response)  # a custom source's answer is checked too
            if problem is not None:
                error = InvalidResponseError(f"the token source's answer is unusable: {problem}")
        if error is None:
            assert isinstance(response, TokenResponse)
            token = schedule(response, started, self._refresh, self._rng.random())
            if self._clock() >= token.stale_at:
                # Lifetime shorter than the request took, plus the margin: nothing to hand out.
                error = TransientIAMError(
                    f"the token arrived inside its expiry margin (lifetime {token.expires_in:g}s, "
                    f"request took {duration:.3g}s)"
                )
            else:
                self._succeed(flight, token, response, wall_started, duration, background)
                return
        self._fail(flight, error, duration, background, cut_short=cut_short)

    def _succeed(
        self,
        flight: _Flight,
        token: Token,
        response: TokenResponse,
        wall_started: float,
        duration: float,
        background: bool,
    ) -> None:
        self._check_skew(response, wall_started)
        self._token = token
        self._hot = token if self._tg is not None and self._clock() < token.refresh_at else None
        self._failures = 0
        self._last_error = None
        self._not_before = _NEVER
        logger.debug(
            "aioiam: got a token valid for %.0fs in %.3fs; refresh due in %.0fs",
            token.expires_in,
            duration,
            token.refresh_at - self._clock(),
        )
        call_hooks(self._hooks, FetchAttempt(True, duration, background, 0, expires_in=token.expires_in))
        self._finish(flight, token, None)
        self._poke()  # the refresher may be asleep with nothing to do: it has a token to time now

    def _fail(
        self, flight: _Flight, error: IAMError, duration: float, background: bool, *, cut_short: bool = False
    ) -> None:
        """Record a failed attempt: count it, set the backoff, log it, release the waiters.

        A request cut short by its caller's deadline counts as a failure (so callers with
        staggered deadlines cannot make IAM a request each), but the failure before it stays the
        one reported: it says more than "the time ran out".
        """
        self._failures += 1
        transient = isinstance(error, TransientIAMError)
        # The backoff grows with failures of the same kind in a row: a first refusal after an
        # outage gets a first refusal's cooldown, not the outage's.
        if self._last_error is not None and isinstance(self._last_error, TransientIAMError) == transient:
            self._streak += 1
        else:
            self._streak = 1
        retry_after = error.retry_after if isinstance(error, TransientIAMError) else None
        # Refused keys and unusable answers wait the whole backoff cap (no jitter), so they are
        # never hammered; transient failures get full jitter.
        now = self._clock()
        current = self._token
        usable_for = current.stale_at - now if current is not None else None
        delay = backoff_delay(
            self._streak,
            self._retry,
            self._rng.random() if transient else 1.0,
            retry_after=retry_after,
            usable_for=usable_for,
        )
        self._not_before = now + delay
        if not (cut_short and self._last_error is not None):
            self._last_error = error
        if current is not None and token_state(current, now) is not TokenState.UNUSABLE:
            logger.warning(
                "aioiam: token refresh failed (%s); still serving the current token, usable for %.0fs more; "
                "next attempt in %.1fs",
                error,
                current.stale_at - now,
                delay,
            )
        elif transient:
            logger.warning("aioiam: token request failed (%s); next attempt allowed in %.1fs", error, delay)
        else:
            logger.warning(
                "aioiam: token request failed (%s); not retried in the background, callers within "
                "the next %.1fs get this error without a new request",
                error,
                delay,
            )
        call_hooks(
            self._hooks,
            FetchAttempt(
                False,
                duration,
                background,
                self._failures,
                error_type=type(error).__name__,
                status_code=error.status_code,
                error_code=error.error_code,
                next_attempt_in=delay,
            ),
        )
        self._finish(flight, None, error)

    def _finish(self, flight: _Flight, token: Token | None, error: IAMError | None) -> None:
        if self._flight is flight:
            self._flight = None
        if flight.done.is_set():  # already failed by aclose()
            return
        flight.token = token
        flight.error = error
        flight.done.set()

    def _check_skew(self, response: TokenResponse, wall_started: float) -> None:
        if self._warned_skew or response.expiration is None:
            return
        skew = response.expiration - (wall_started + response.expires_in)
        if abs(skew) > _SKEW_WARNING:
            self._warned_skew = True
            logger.warning(
                "aioiam: the local clock differs from IAM's by about %.0fs. aioiam times tokens on the "
                "monotonic clock, so it is not affected; tools that compare a token's 'exp' with local "
                "time are.",
                -skew,
            )

    def _redact(self, text: str) -> str:
        return scrub(text, self._source.secrets)

    def _close_now(self) -> None:
        """Mark closed, cancel background work, and fail the flight its waiters wait on."""
        if self._state is not _Lifecycle.CLOSED:
            logger.debug("aioiam: token manager closed")
        self._state = _Lifecycle.CLOSED
        self._token = self._hot = None
        flight = self._flight
        if flight is not None and not flight.done.is_set():
            flight.error = ManagerClosedError("the TokenManager was closed while waiting for a token")
            flight.done.set()
        self._flight = None
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
        for task in self._detached:
            task.cancel()
        if self._inline_scope is not None:
            self._inline_scope.cancel()
        self._poke()
