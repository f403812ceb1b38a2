"""``TokenManager``: one shared, refreshed-ahead IAM token for any number of tasks.

The async shell around ``_decisions``: it reads the clock, asks the pure rules what to do, and
does it. It only waits, fetches and publishes. What it holds:

- the current token (one slot, written only by :meth:`TokenManager._publish`) and the failure
  record (one frozen value, replaced whole);
- at most one *flight* (``_flight.Flight``): the single IAM request in progress, which every
  waiter shares;
- one lifecycle state, read by every check: open (on demand), entering, running (inside
  ``async with``, where a task group holds the refresher and every flight), closed.

Without ``async with`` nothing runs until a caller needs a token; the request then runs in a task
of its own (``_backend.Backend.spawn``), on asyncio and trio alike, which ends with the request
and which :meth:`TokenManager.aclose` cancels. No caller's cancellation or deadline reaches it.
"""

from __future__ import annotations

import enum
import math
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import anyio.abc
import httpx
from anyio import AsyncContextManagerMixin

from ._backend import Backend, detect
from ._cache import TokenCache
from ._config import api_key_from_environment, find_service, manager_arguments, service_prefix
from ._decisions import (
    NO_FAILURES,
    Raise,
    Sleep,
    Take,
    after_failure,
    caller_step,
    joins_at_once,
    may_drop,
)
from ._exceptions import ConfigurationError, IAMError, InvalidResponseError, ManagerClosedError
from ._flight import Flight, attempt
from ._hooks import Hook, logger, report_failure, report_success, warn_of_skew
from ._redaction import scrub
from ._settings import make_client, make_settings
from ._sources import TokenSource
from ._timing import RefreshPolicy, RetryPolicy, TokenState, next_attempt_at, token_state
from ._token import Token

__all__ = ["TokenManager"]


class State(enum.Enum):
    """Where a manager is in its life. Every lifecycle check reads this one value."""

    #: Usable on demand: callers fetch when they need to; nothing runs in the background.
    OPEN = "open"
    #: ``async with`` has begun and the refresher is not running yet.
    ENTERING = "entering"
    #: Inside ``async with``: the refresher runs, and flights run in the manager's task group.
    RUNNING = "running"
    #: Closed for good.
    CLOSED = "closed"


class TokenManager(AsyncContextManagerMixin):
    """Fetches, caches, shares and refreshes one IAM token.

    Use it as ``async with TokenManager(key) as tm:`` to get a background refresher (after the first
    token no caller waits for IAM while IAM is healthy), or call :meth:`get_token` without
    ``async with`` to refresh on demand; either way close it (leaving the block, or
    :meth:`aclose`). Not thread-safe: use it from one event loop at a time.

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
        cache: A shared cache (:class:`~aioiam.RedisTokenCache`) through which a fleet of
            processes shares one token per credential: a flight reads it first and adopts a
            fresher token, and one process at a time asks IAM. Without it, nothing is shared.

    Raises:
        ValueError: A missing or blank key, a key that looks like a placeholder or a quoted value,
            a non-https URL for a non-loopback host, a URL containing a secret, only one of
            ``client_id``/``client_secret``, conflicting arguments, or a cache with a source whose
            credential rotates and no ``secret=`` on the cache.
        TypeError: An argument of the wrong type (a key that is not a ``str``, a policy of the
            wrong class, a clock that is not callable, an ``async def`` hook, ...), or a cache
            with a custom source that has no ``cache_identity()``.
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
        cache: TokenCache | None = None,
    ) -> None:
        settings = make_settings(
            api_key,
            url=url,
            client_id=client_id,
            client_secret=client_secret,
            scope=scope,
            http_client=http_client,
            transport=transport,
            source=source,
            refresh=refresh,
            retry=retry,
            hooks=hooks,
            clock=clock,
            wall_clock=wall_clock,
            rng=rng,
            verify=verify,
            cache=cache,
        )
        self._settings = settings
        self._source = settings.source
        self._clock = settings.clock  # read on the hot path: one attribute, not two
        self._client = settings.http_client if settings.http_client is not None else make_client(settings)
        self._state = State.OPEN
        self._token: Token | None = None
        # True only while the token is fresh inside ``async with``: the refresher clears it when
        # the refresh falls due, so get_token() reads no clock. Written only by _publish().
        self._fast = False
        self._record = NO_FAILURES
        self._flight: Flight | None = None
        self._backend: Backend | None = None
        self._tg: anyio.abc.TaskGroup | None = None  # the flights' task group, while RUNNING
        self._wakeup: anyio.Event | None = None
        self._warned_skew = False
        self._last_drop = -math.inf  # when invalidate() last dropped a token
        self._requests = 0
        # The token a service refused (invalidate()): a flight must not adopt it from the cache.
        self._dropped: str | None = None

    @classmethod
    def from_env(cls, service_name: str | None = None, **overrides: Any) -> TokenManager:
        """A manager configured as IBM's SDK cores would configure ``service_name``.

        The service's properties (``<SERVICE>_AUTH_TYPE``, ``_APIKEY``, ``_AUTH_URL``, ...) come
        from the first of these that has any: the credentials file (``$IBM_CREDENTIALS_FILE``,
        else ``./ibm-credentials.env``, else ``~/ibm-credentials.env``), the environment, and
        ``VCAP_SERVICES``. ``AUTH_TYPE`` picks the grant (``iam``, ``container``, ``vpc``,
        ``iamAssume``, ``bearerToken``; ``iam`` when an API key is set, else ``container``).
        Without a service name, the API key is ``IBMCLOUD_API_KEY`` (the ``ibmcloud`` CLI's).

        Args:
            service_name: The service, as IBM's cores name it (``my-service`` reads ``MY_SERVICE_*``).
            **overrides: ``TokenManager`` keyword arguments, winning over what was read
                (``url=``, ``retry=``, ``http_client=`` and so on).

        Raises:
            ConfigurationError: Nothing found (the message lists every place searched), an
                unsupported auth type, or a property the auth type needs is missing (named).
        """
        if service_name is None:
            if "api_key" in overrides or "source" in overrides:
                raise ConfigurationError(
                    "from_env reads the credentials itself; use TokenManager(...) to pass them in code"
                )
            return cls(api_key_from_environment(), **overrides)
        found = find_service(service_name)
        return cls(**manager_arguments(found, service_prefix(service_name) + "_", overrides))

    def __repr__(self) -> str:
        token = self._token
        try:
            remaining = f"{token.stale_at - self._clock():.0f}s" if token is not None else "none"
        except Exception:  # an injected clock that works only inside its event loop: repr must not raise
            remaining = "unknown"
        return f"<TokenManager {self._state.value} source={self._source!r} token_valid_for={remaining}>"

    # ------------------------------------------------------------------ public surface

    @property
    def token(self) -> Token | None:
        """The token held right now, if any, whatever its state. Does no I/O."""
        return self._token

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has run."""
        return self._state is State.CLOSED

    @property
    def request_count(self) -> int:
        """How many requests this manager has sent to IAM."""
        return self._requests

    async def get_token(self) -> str:
        """Return a usable access token, fetching or refreshing it only when needed.

        Returns at once while the cached token is fresh, and also while it is due for refresh
        but still usable (starting the refresh in the background if nothing else has). No
        caller ever receives a token inside its expiry margin. Concurrent callers share one IAM
        request, and a caller's cancellation or deadline never cuts it short for the others.

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
            RuntimeError: Called from another event loop than the one running the manager
                inside ``async with``.
        """
        if self._fast:
            return self._token.access_token  # type: ignore[union-attr]  # _fast implies a token
        token = self._token
        if token is not None:
            if self._clock() < token.refresh_at:
                return token.access_token
        elif (flight := self._flight) is not None and joins_at_once(token, self._record) and flight.backend.same_loop():
            # The cold crowd, before the first token: wait for the flight without a decision step
            # and without a timeout of its own (see Flight.joiners). Woken before the flight
            # ended, the caller goes on below with the deadline of its own call.
            start = self._clock()
            await flight.joiners.wait()
            token = flight.token
            if token is not None and token is self._token and self._clock() < token.refresh_at:
                return token.access_token
            return (await self._get_slow(start, flight.error)).access_token
        return (await self._get_slow()).access_token

    async def get_token_info(self) -> Token:
        """Like :meth:`get_token`, but return the whole :class:`~aioiam.Token`."""
        token = self._token
        if self._fast or (token is not None and self._clock() < token.refresh_at):
            assert token is not None
            return token
        return await self._get_slow()

    def invalidate(self, access_token: str) -> bool:
        """Drop the current token if it is ``access_token``; the next caller gets a new one.

        Meant for a service that answered 401 to a token: comparing with the token actually
        used means a hundred concurrent 401s for one token cause one refresh, not a hundred. A
        drop within 10 seconds of the last one (a tenth of the token's life, if shorter) is
        refused: a service that refuses every token costs IAM one request per 10 seconds, not
        one per call.

        Returns:
            Whether the token was dropped (``False`` when it had already been replaced, or within
            the cooldown of the last drop).
        """
        now = self._clock()
        if not may_drop(self._token, access_token, now, self._last_drop):
            return False
        self._last_drop = now
        self._publish(None)
        self._dropped = access_token
        logger.info("aioiam: token dropped after a 401 from a service; fetching a new one")
        self._poke()
        return True

    async def aclose(self) -> None:
        """Close the manager: stop the refresher and any request, wake waiters with
        ``ManagerClosedError``, close the HTTP client the manager made (never one you passed
        in). Idempotent.

        Raises:
            RuntimeError: The manager runs inside ``async with`` on another event loop.
        """
        if self._state is State.CLOSED:
            return
        backend = self._backend
        on_this_loop = backend is not None and backend.same_loop()
        if self._state in (State.ENTERING, State.RUNNING) and not on_this_loop:
            raise RuntimeError(
                "this TokenManager is running inside 'async with' on another event loop; close it "
                "from that loop (leaving the block closes it)"
            )
        in_block = self._state is not State.OPEN
        self._close_now()
        if on_this_loop:
            assert backend is not None
            await backend.detached_ended()  # cancelled just now: each ends at its next checkpoint
        if not in_block and self._settings.http_client is None:
            await self._client.aclose()

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncIterator[TokenManager]:
        if self._state is State.CLOSED:
            raise ManagerClosedError("this TokenManager is closed; make a new one")
        if self._state is not State.OPEN:
            raise RuntimeError("this TokenManager has already been entered; enter it once and share it")
        self._bind()
        # Set before the first await, so a second task entering at the same moment is refused.
        self._state = State.ENTERING
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
            if self._settings.http_client is None:
                with anyio.CancelScope(shield=True):
                    await self._client.aclose()
        if body_error is not None:
            raise body_error

    # ------------------------------------------------------------------ callers

    async def _get_slow(self, start: float | None = None, waited: IAMError | None = None) -> Token:
        """Carry out :func:`~aioiam._decisions.caller_step` until it says take or raise.

        ``start`` is when the caller called, if it has waited already (for ``waited``'s flight);
        its deadline counts from then.
        """
        self._bind()
        timeout = self._settings.retry.timeout
        now = self._clock()
        deadline = (now if start is None else start) + timeout
        while True:
            if self._state is State.CLOSED:
                raise ManagerClosedError("this TokenManager is closed")
            step = caller_step(
                self._token,
                self._record,
                now=now,
                deadline=deadline,
                timeout=timeout,
                refresher=self._state is State.RUNNING,
                busy=self._flight is not None,
                waited=waited,
            )
            if isinstance(step, Take):
                if step.refresh:
                    self._start_flight()
                return step.token
            if isinstance(step, Raise):
                raise step.error
            if isinstance(step, Sleep):
                await self._sleep_until(step.until)
                waited = None
            else:
                flight = self._flight or self._start_flight()
                if flight.ends_by <= deadline:
                    await flight.done.wait()  # it ends in time: no cancel scope needed
                else:
                    with anyio.move_on_after(max(0.0, deadline - self._clock())):
                        await flight.done.wait()
                token = flight.token
                if token is not None and token is self._token and self._clock() < token.refresh_at:
                    return token  # fresh: what caller_step would say, without building a step
                waited = flight.error
            now = self._clock()

    def _bind(self) -> Backend:
        """The backend of the running loop; forget what belongs to a loop no longer in use.

        A manager may outlive its event loop (a CLI calling ``asyncio.run`` twice, pytest-asyncio's
        loop per test). Tokens and the failure record are plain values and carry over; events, an
        unfinished flight, its task and the HTTP client the manager made (whose pool may hold
        that loop's locks) are replaced. A client passed in is kept: making it usable on the new
        loop is its owner's business. Inside ``async with`` the manager belongs to its loop.

        Raises:
            RuntimeError: Inside ``async with``, called from another loop; or no loop runs.
        """
        backend = self._backend
        if backend is not None and backend.same_loop():
            return backend
        if self._state in (State.ENTERING, State.RUNNING):
            raise RuntimeError(
                "this TokenManager is running inside 'async with' on another event loop; a manager "
                "belongs to one event loop at a time. Use it from that loop, or make one per loop."
            )
        new = detect()
        if backend is not None:
            logger.debug("aioiam: token manager now used from another event loop; loop-bound state reset")
            self._wakeup = None
            self._flight = None
            if self._settings.http_client is None:
                # The old client holds no connection (no keep-alive) and cannot be closed from
                # this loop; dropping it leaks nothing.
                self._client = make_client(self._settings)
        self._backend = new
        return new

    # ------------------------------------------------------------------ flights

    def _start_flight(self) -> Flight:
        """Make the one flight and start its task. Synchronous: nothing runs between the check
        of ``self._flight`` (by the caller) and setting it here, so two flights never overlap.

        Inside ``async with`` the task runs in the manager's task group; otherwise it is a task
        of its own, with a cancel scope that :meth:`aclose` cancels.
        """
        assert self._flight is None
        assert self._backend is not None
        settings = self._settings
        budget = settings.retry.request_timeout
        if settings.cache is not None:
            budget = settings.cache.budget(budget)
        now = self._clock()
        flight = Flight(self._backend, now + budget, joinable=budget <= settings.retry.timeout)
        self._flight = flight
        self._start_task(partial(self._run_flight, flight), "aioiam token request")
        if not flight.joinable:
            # A flight longer than a caller's whole wait (one through a shared cache may wait out
            # another process's lock): one timer wakes its joiners before any of their deadlines.
            # Every joiner arrives after ``now``, so its deadline is after ``now + timeout``.
            release = partial(self._release_joiners, flight, now + settings.retry.timeout)
            self._start_task(release, "aioiam joiners' deadline")
        return flight

    def _start_task(self, function: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        """Start a flight's task: in the manager's task group inside ``async with``; otherwise
        detached, under a cancel scope that :meth:`aclose` cancels."""
        assert self._backend is not None
        if self._tg is not None:
            self._tg.start_soon(function, name=name)
        else:
            self._backend.start_detached(function, name=name)

    async def _release_joiners(self, flight: Flight, at: float) -> None:
        """Wake ``flight``'s joiners at ``at`` (our clock) if it has not ended by then."""
        with anyio.move_on_after(max(0.0, at - self._clock())):
            await flight.done.wait()
        flight.release_joiners()

    async def _run_flight(self, flight: Flight) -> None:
        """Run one flight to its end: fetch, record the outcome, and release every waiter.

        Whatever happens (a bug in a custom source or in the bookkeeping included), the flight
        has ended before this returns, so no waiter is ever left waiting on it.
        """
        try:
            await self._attempt(flight)
        except anyio.get_cancelled_exc_class():
            if self._state is State.CLOSED:
                flight.finish(None, ManagerClosedError("the TokenManager was closed while fetching"))
            else:
                # Cancelled while the manager is open: asyncio cancelling every task as its loop
                # shuts down, or trio ending the run. Abandoned, not failed: no backoff, and any
                # waiters decide again (one of them starts a new flight).
                logger.debug("aioiam: a token request was cancelled while the manager is open; request abandoned")
            raise
        except Exception as exc:  # every waiter must get an IAMError, whatever broke
            error = InvalidResponseError(f"aioiam could not complete the token request: {type(exc).__name__}")
            error.__cause__ = exc
            try:  # recorded like any failure, so the backoff holds even for a bug
                now = self._clock()
                self._fail(flight, error, now, 0.0, token_state(self._token, now) is not TokenState.UNUSABLE)
            finally:
                flight.finish(None, error)
        finally:
            if self._flight is flight:
                self._flight = None
            flight.finish(None, None)  # a no-op unless nothing above ended it

    async def _attempt(self, flight: Flight) -> None:
        background = token_state(self._token, self._clock()) is not TokenState.UNUSABLE
        current = self._token
        got = await attempt(
            self._settings,
            self._client,
            ends_by=flight.ends_by,
            avoid=current.access_token if current is not None else self._dropped,
            count=self._count_request,
            redact=self._redact,
        )
        if self._state is State.CLOSED:
            flight.finish(None, ManagerClosedError("the TokenManager was closed while fetching"))
        elif not got.asked:  # adopted from the fleet: no request, no hooks, no failure to record
            self._adopt(flight, got.outcome)
        elif isinstance(got.outcome, Token):
            self._succeed(flight, got.outcome, got.wall_sent_at, got.duration, background)
        else:
            self._fail(flight, got.outcome, got.now, got.duration, background)

    def _count_request(self) -> None:
        self._requests += 1

    def _adopt(self, flight: Flight, outcome: Token | IAMError) -> None:
        if not isinstance(outcome, Token):
            # It went stale between the decision and now (a blocked loop): nothing failed at
            # IAM. Abandoned: the waiters decide again, and one of them starts a new flight.
            logger.debug("aioiam: the fleet's token went stale before it could be taken (%s)", outcome)
            flight.finish(None, None)
            return
        self._publish(outcome)
        self._record = NO_FAILURES
        self._dropped = None
        logger.debug("aioiam: took the fleet's token; refresh due in %.0fs", outcome.refresh_at - self._clock())
        flight.finish(outcome, None)
        self._poke()

    def _succeed(self, flight: Flight, token: Token, wall_sent_at: float, duration: float, background: bool) -> None:
        self._check_skew(token, wall_sent_at)
        self._publish(token)
        self._record = NO_FAILURES
        self._dropped = None
        report_success(self._settings.hooks, token, duration=duration, background=background, now=self._clock())
        flight.finish(token, None)
        self._poke()  # the refresher may be asleep with nothing to do: it has a token to time now

    def _fail(self, flight: Flight, error: IAMError, now: float, duration: float, background: bool) -> None:
        current = self._token
        record = after_failure(
            self._record, error, now=now, token=current, policy=self._settings.retry, u=self._settings.rng.random()
        )
        self._record = record
        report_failure(
            self._settings.hooks,
            error,
            current=current,
            now=now,
            failures=record.failures,
            delay=record.not_before - now,
            duration=duration,
            background=background,
        )
        flight.finish(None, error)

    def _publish(self, token: Token | None) -> None:
        """Make ``token`` the current one. The only writer of the token slot and the fast flag."""
        self._token = token
        self._fast = token is not None and self._state is State.RUNNING and self._clock() < token.refresh_at

    def _check_skew(self, token: Token, wall_sent_at: float) -> None:
        if not self._warned_skew:
            self._warned_skew = warn_of_skew(token, wall_sent_at)

    def _redact(self, text: str) -> str:
        return scrub(text, self._source.secrets)

    # ------------------------------------------------------------------ background refresher

    async def _host(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            if self._state is State.ENTERING:  # not closed meanwhile
                self._state = State.RUNNING
                self._publish(self._token)
                tg.start_soon(self._refresher, name="aioiam refresher")
            task_status.started()

    async def _refresher(self) -> None:
        """Refresh ahead of expiry and retry after failures, until the manager closes."""
        while self._state is State.RUNNING:
            now = self._clock()
            token = self._token
            self._publish(token)  # off the fast path from its refresh time on
            record = self._record
            # After a refusal with no usable token left this is never: the next caller asks again
            # (after the cooldown), and a new token or invalidate() wakes the refresher.
            at = next_attempt_at(token, record.not_before, now, refused=record.refused)
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

    def _close_now(self) -> None:
        """Mark closed, cancel background work, and end the flight its waiters wait on."""
        if self._state is not State.CLOSED:
            logger.debug("aioiam: token manager closed")
        self._state = State.CLOSED
        self._publish(None)
        flight, self._flight = self._flight, None
        if flight is not None:
            flight.finish(None, ManagerClosedError("the TokenManager was closed while waiting for a token"))
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
        if self._backend is not None:
            self._backend.cancel_detached()
        self._poke()
