"""``IAMAuth``: a :class:`TokenManager` as an ``httpx.Auth`` flow for ``httpx.AsyncClient``.

A leaked IAM token is an account compromise, and one client is often pointed at many hosts (a
crawler, a proxy, a webhook sender), so the flow attaches the token only to hosts it is allowed
to, and never over plain http except to loopback.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator, Iterable

import httpx

from ._hosts import DEFAULT_ALLOWED_HOSTS, HostPolicy
from ._manager import TokenManager

__all__ = ["DEFAULT_ALLOWED_HOSTS", "IAMAuth"]


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
        self._manager = manager
        self._hosts = HostPolicy(allowed_hosts, allow_loopback=allow_loopback)

    def __repr__(self) -> str:
        return f"IAMAuth({self._manager!r}, allowed_hosts={list(self._hosts.allowed)!r})"

    def may_send_token(self, url: httpx.URL) -> bool:
        """Whether the token may go to ``url``: an allowed host, over https (or loopback)."""
        return self._hosts.may_send(url.scheme, url.host)

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
        fresh = await self._manager.get_token()
        if fresh == access_token:
            return  # not dropped (a drop just before, see invalidate): resending it would get the same 401
        request.headers["Authorization"] = f"Bearer {fresh}"
        yield request
