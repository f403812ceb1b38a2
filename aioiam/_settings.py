"""A manager's configuration: every argument checked once, then frozen in one value. Pure.

:func:`make_settings` is the only place that validates what a user passes to ``TokenManager``;
the manager reads :class:`Settings` and never re-checks it. :func:`make_client` builds the HTTP
client a manager owns when the user passes none.
"""

from __future__ import annotations

import inspect
import random
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import httpx

from ._cache import CacheLink, TokenCache
from ._hooks import Hook, logger
from ._sources import USER_AGENT, ApiKeySource, TokenSource
from ._timing import RefreshPolicy, RetryPolicy

__all__ = ["Settings", "make_client", "make_settings"]


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a :class:`~aioiam.TokenManager` was configured with, checked.

    Attributes:
        source: Where tokens come from.
        refresh: When to refresh and when to stop handing a token out.
        retry: How to retry, and how long a caller waits.
        hooks: Called after every IAM request.
        clock: The monotonic clock.
        wall_clock: The Unix clock, for the clock-skew warning only.
        rng: The source of jitter.
        http_client: The user's client, or ``None`` when the manager makes (and owns) its own.
        transport: The transport for the client the manager makes.
        verify: TLS verification for the client the manager makes.
        cache: The shared cache with this credential's keys, or ``None``.
    """

    source: TokenSource
    refresh: RefreshPolicy
    retry: RetryPolicy
    hooks: tuple[Hook, ...]
    clock: Callable[[], float]
    wall_clock: Callable[[], float]
    rng: random.Random
    http_client: httpx.AsyncClient | None
    transport: httpx.AsyncBaseTransport | None
    verify: bool | ssl.SSLContext
    cache: CacheLink | None = None

    def __repr__(self) -> str:
        cache = f", cache={self.cache.cache!r}" if self.cache is not None else ""
        return f"Settings(source={self.source!r}, refresh={self.refresh!r}, retry={self.retry!r}{cache})"


def _check_hooks(hooks: Sequence[Hook]) -> tuple[Hook, ...]:
    if callable(hooks):
        raise TypeError("hooks must be a sequence of callables; put a single hook in a list: hooks=[hook]")
    try:
        checked = tuple(hooks)
    except TypeError:
        raise TypeError(f"hooks must be a sequence of callables, not {type(hooks).__name__}") from None
    for index, hook in enumerate(checked):
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
    return checked


def make_settings(
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
) -> Settings:
    """Check ``TokenManager``'s arguments and freeze them. Takes exactly its keyword arguments.

    Logs a warning for ``verify=False``. Makes no client and does no I/O.

    Raises:
        ValueError: A missing or blank key, a bad URL, only one of ``client_id``/``client_secret``,
            conflicting arguments, or a cache with no stable secret to derive keys from. No
            message quotes a secret.
        TypeError: An argument of the wrong type, or a cache with a source that has no
            ``cache_identity()``.
    """
    if source is None:
        if api_key is None:
            raise ValueError("api_key is missing; pass the IBM Cloud API key (or a source)")
        source = ApiKeySource(api_key, url=url, client_id=client_id, client_secret=client_secret, scope=scope)
    elif api_key is not None or client_id is not None or client_secret is not None or scope is not None:
        raise ValueError("pass either source or api_key (with client_id, client_secret, scope), not both")
    if isinstance(source, type):
        raise TypeError(f"source must be an instance, not the class {source.__name__}: pass {source.__name__}(...)")
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
    if http_client is not None and verify is not True:
        raise ValueError("verify applies to the client the manager makes; configure your http_client instead")
    checked_hooks = _check_hooks(hooks)
    if cache is not None and not isinstance(cache, TokenCache):
        raise TypeError(f"cache must implement aioiam.TokenCache (aioiam.RedisTokenCache), not {type(cache).__name__}")
    link = CacheLink(cache, source) if cache is not None else None
    if verify is False:
        logger.warning(
            "aioiam: TLS certificate verification of IAM is OFF (verify=False); anyone on the path "
            "can read the API key. Use this only against a local emulator."
        )
    return Settings(
        source=source,
        refresh=refresh if refresh is not None else RefreshPolicy(),
        retry=retry if retry is not None else RetryPolicy(),
        hooks=checked_hooks,
        clock=clock,
        wall_clock=wall_clock,
        rng=rng if rng is not None else random.Random(),
        http_client=http_client,
        transport=transport,
        verify=verify,
        cache=link,
    )


@cache
def default_ssl_context() -> ssl.SSLContext:
    """The verifying TLS context shared by every client a manager makes, built on first use.

    Building one loads the whole CA bundle: about 850 KiB and 20 ms each. Sharing it is what
    lets a worker hold ten thousand managers; an ``SSLContext`` is safe to share between
    clients, event loops and threads. Not used when the caller passes ``verify=``.
    """
    return httpx.create_ssl_context()


def make_client(settings: Settings) -> httpx.AsyncClient:
    """A new client for a manager that owns its own: no keep-alive, no redirects, aioiam's agent.

    No keep-alive: one token request every ~48 minutes gains nothing from an idle connection, and
    a pool without one is bound to no event loop, so the client survives a change of loop.
    """
    return httpx.AsyncClient(
        transport=settings.transport,
        verify=default_ssl_context() if settings.verify is True else settings.verify,
        timeout=httpx.Timeout(settings.retry.request_timeout),
        limits=httpx.Limits(max_keepalive_connections=0),
        headers={"User-Agent": USER_AGENT},
        follow_redirects=False,
    )
