"""``IAMAuth``: a :class:`TokenManager` as an ``httpx.Auth`` flow for ``httpx.AsyncClient``.

A leaked IAM token is an account compromise, and one client is often pointed at many hosts (a
crawler, a proxy, a webhook sender), so the flow attaches the token only to hosts it is allowed
to, and never over plain http except to loopback.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncGenerator, Generator, Iterable

import httpx

from ._hooks import logger
from ._manager import TokenManager
from ._urls import is_loopback_host

__all__ = ["DEFAULT_ALLOWED_HOSTS", "IAMAuth", "host_allowed"]

#: IBM Cloud's service domains: ``cloud.ibm.com`` (IAM, resource controller, most service APIs)
#: and ``appdomain.cloud`` (Cloud Object Storage, Code Engine and other regional endpoints),
#: with every subdomain of each.
DEFAULT_ALLOWED_HOSTS: tuple[str, ...] = ("cloud.ibm.com", "*.cloud.ibm.com", "appdomain.cloud", "*.appdomain.cloud")


def _normalise_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


def _check_pattern(pattern: str) -> str:
    if not isinstance(pattern, str):
        raise TypeError(f"allowed host patterns are strings, not {type(pattern).__name__}")
    cleaned = _normalise_host(pattern).strip("[]")
    bare = cleaned.removeprefix("*.")
    bad = not bare or any(c in bare for c in "*/@ \t?#")
    if not bad and ":" in bare:  # only an IPv6 address may have colons; a port may not
        try:
            ipaddress.IPv6Address(bare)
        except ValueError:
            bad = True
    if bad:
        raise ValueError(
            f"{pattern!r} is not a host pattern: use 'api.example.com' for one host or '*.example.com' "
            "for its subdomains (no scheme, port or path)"
        )
    return cleaned


def host_allowed(host: str, patterns: Iterable[str]) -> bool:
    """Whether ``host`` matches one of ``patterns``.

    ``"api.example.com"`` matches that host only; ``"*.example.com"`` matches every subdomain of
    ``example.com`` but not ``example.com`` itself. Matching ignores case and a trailing dot. It
    does no DNS lookup: a name is judged by its spelling, never by the address it resolves to.
    """
    host = _normalise_host(host)
    for pattern in patterns:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


def _replayable(request: httpx.Request) -> bool:
    """Whether the request's body can be sent a second time (bytes in memory, or no body)."""
    return isinstance(request.stream, httpx.ByteStream)


class IAMAuth(httpx.Auth):
    """Sets ``Authorization: Bearer <token>`` on requests of an ``httpx.AsyncClient``.

    The token goes only to allowed hosts (by default IBM Cloud's domains, see
    :data:`DEFAULT_ALLOWED_HOSTS`, plus loopback), and only over https (plain http only to
    loopback). A request to any other host, or over plain http, is sent **without** the token and
    a warning is logged once per host: the request still goes out, so a misdirected call fails
    with the service's 401 rather than leaking the token.

    On a 401 from the service it drops the token it sent, but only if that token is still the
    manager's current one (so a burst of 401s for one token causes one refresh), and resends the
    request once with a fresh token. A request whose body cannot be replayed (a streaming upload)
    is not resent: its 401 is returned as is.

    It does not work with the synchronous ``httpx.Client`` (it raises ``TypeError``), and it
    does not own the manager: close the manager yourself.

    Args:
        manager: The :class:`TokenManager` that supplies tokens.
        allowed_hosts: Host patterns that may receive the token: ``"api.example.com"`` or
            ``"*.example.com"``. Replaces the default list; pass
            ``[*aioiam.DEFAULT_ALLOWED_HOSTS, "api.example.com"]`` to extend it.
        allow_loopback: Whether ``localhost`` and loopback addresses may receive the token (over
            http or https), for local emulators and tests.

    Raises:
        TypeError: ``manager`` is not a :class:`TokenManager`.
        ValueError: A host pattern has a scheme, port, path or misplaced ``*``.
    """

    requires_request_body = False
    requires_response_body = False

    def __init__(
        self,
        manager: TokenManager,
        *,
        allowed_hosts: Iterable[str] = DEFAULT_ALLOWED_HOSTS,
        allow_loopback: bool = True,
    ) -> None:
        if not isinstance(manager, TokenManager):
            raise TypeError("IAMAuth needs an aioiam.TokenManager")
        if isinstance(allowed_hosts, str):
            raise TypeError("allowed_hosts is a list of host patterns, not one string")
        self._manager = manager
        self._allowed = tuple(_check_pattern(p) for p in allowed_hosts)
        self._allow_loopback = allow_loopback
        self._verdicts: dict[tuple[str, str], bool] = {}

    def __repr__(self) -> str:
        return f"IAMAuth({self._manager!r}, allowed_hosts={list(self._allowed)!r})"

    def may_send_token(self, url: httpx.URL) -> bool:
        """Whether the token may go to ``url``: an allowed host, over https (or loopback)."""
        key = (url.scheme, url.host)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._judge(url)
            if len(self._verdicts) < 10_000:  # a crawler meets unbounded hosts; keep memory bounded
                self._verdicts[key] = verdict
            if not verdict:
                logger.warning(
                    "aioiam: not sending the IAM token to %s://%s (%s); the request goes out without it",
                    url.scheme,
                    url.host,
                    "not an allowed host" if url.scheme == "https" else "plain http",
                )
        return verdict

    def _judge(self, url: httpx.URL) -> bool:
        loopback = is_loopback_host(url.host)
        if loopback:
            return self._allow_loopback and url.scheme in ("http", "https")
        return url.scheme == "https" and host_allowed(url.host, self._allowed)

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Always raises ``TypeError``: IAMAuth is asynchronous."""
        raise TypeError(
            "aioiam.IAMAuth works only with httpx.AsyncClient; with a synchronous httpx.Client, "
            "use IBM's synchronous SDK authenticators instead"
        )

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """Add the bearer token; on a 401, refresh once and resend if the body allows it."""
        if not self.may_send_token(request.url):
            yield request  # untouched: no token, and any header the caller set is theirs
            return
        # Decided before sending: once sent, a streamed body is gone (even if a transport that
        # buffered it made the request look replayable afterwards).
        replayable = _replayable(request)
        access_token = await self._manager.get_token()
        request.headers["Authorization"] = f"Bearer {access_token}"
        response = yield request
        if response.status_code != 401 or not replayable:
            return
        self._manager.invalidate(access_token)
        access_token = await self._manager.get_token()
        request.headers["Authorization"] = f"Bearer {access_token}"
        yield request
