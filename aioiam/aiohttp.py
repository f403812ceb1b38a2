"""``IAMMiddleware``: a :class:`~aioiam.TokenManager` as an aiohttp client middleware.

The aiohttp twin of :class:`aioiam.IAMAuth`, with the same rules: the token goes only to allowed
hosts, only over https (plain http only to loopback), and a 401 causes at most one refresh and one
resend. Which hosts may receive the token is decided by the same code as ``IAMAuth``'s
(``aioiam/_hosts.py``).

Needs aiohttp 3.12 or later (the first with client middlewares): ``pip install 'aioiam[aiohttp]'``.
``import aioiam`` never imports aiohttp; importing this module without it raises ``ImportError``
saying what to install.

Example::

    async with aioiam.TokenManager(api_key) as tm:
        async with aiohttp.ClientSession(middlewares=[IAMMiddleware(tm)]) as session:
            async with session.get("https://resource-controller.cloud.ibm.com/v2/resource_instances") as r:
                print(r.status)
"""

from __future__ import annotations

from collections.abc import Iterable

try:
    from aiohttp import BytesPayload, ClientHandlerType, ClientRequest, ClientResponse, hdrs
    from yarl import URL
except ImportError as exc:
    raise ImportError(
        "aioiam.aiohttp needs aiohttp 3.12 or later (the first with client middlewares); "
        "install it with: pip install 'aioiam[aiohttp]'"
    ) from exc

from ._hosts import DEFAULT_ALLOWED_HOSTS, HostPolicy
from ._manager import TokenManager

__all__ = ["IAMMiddleware"]


def _replayable(request: ClientRequest) -> bool:
    """Whether the request's body can be sent a second time: no body, or bytes in memory.

    Bytes, ``str``, ``json=`` and url-encoded form bodies are :class:`aiohttp.BytesPayload`.
    Files, async iterables, streams and multipart bodies are not counted as replayable, even
    where aiohttp could rewind them: a second upload of a large or one-shot body is not this
    middleware's to start.
    """
    body = request.body
    return isinstance(body, (bytes, BytesPayload))


class IAMMiddleware:
    """Sets ``Authorization: Bearer <token>`` on requests of an ``aiohttp.ClientSession``.

    Pass it in the session's middlewares: ``aiohttp.ClientSession(middlewares=[IAMMiddleware(tm)])``
    (or per request: ``session.get(url, middlewares=[...])``).

    The token goes only to allowed hosts (by default IBM Cloud's domains, see
    :data:`aioiam.DEFAULT_ALLOWED_HOSTS`, plus loopback), and only over https (plain http only to
    loopback). A request to any other host, over plain http, or to a ``ws://`` or ``wss://`` URL
    is sent **without** the token and untouched (any ``Authorization`` header the caller set is
    kept), and a warning is logged once per host (logger ``aioiam``): the request still goes out,
    so a misdirected call fails with the service's 401 rather than leaking the token. Each
    redirect hop is judged by its own host, so a redirect to another host does not carry the
    token there.

    On a 401 from the service it releases that response, drops the token it sent, but only if
    that token is still the manager's current one (so a burst of 401s for one token causes one
    refresh), and resends the request once with a fresh token. A request whose body cannot be
    replayed (a file, an async iterable, a stream, a multipart body) is not resent: its 401 is
    returned as is, and the token is not dropped.

    Once the response is returned (or the request fails), the ``Authorization`` header it set is
    removed from the request again, so ``response.request_info`` and aiohttp's errors built from
    it (the ``repr`` of ``ClientResponseError``) do not show the token.

    It does not retry anything but that one 401 (not 403, not connection errors), it does not
    refresh ahead of time itself (the manager does), and it owns neither the manager nor the
    session: close both yourself. aiohttp runs on asyncio only, so this does too.

    Args:
        manager: The :class:`~aioiam.TokenManager` that supplies tokens.
        allowed_hosts: Host patterns that may receive the token: ``"api.example.com"`` or
            ``"*.example.com"``. Replaces the default list; pass
            ``[*aioiam.DEFAULT_ALLOWED_HOSTS, "api.example.com"]`` to extend it.
        allow_loopback: Whether ``localhost`` and loopback addresses may receive the token (over
            http or https), for local emulators and tests.

    Raises:
        TypeError: ``manager`` is not a :class:`~aioiam.TokenManager`, or ``allowed_hosts`` is one
            string.
        ValueError: A host pattern has a scheme, port, path or misplaced ``*``.
    """

    __slots__ = ("_hosts", "_manager")

    def __init__(
        self,
        manager: TokenManager,
        *,
        allowed_hosts: Iterable[str] = DEFAULT_ALLOWED_HOSTS,
        allow_loopback: bool = True,
    ) -> None:
        if not isinstance(manager, TokenManager):
            raise TypeError("IAMMiddleware needs an aioiam.TokenManager")
        self._manager = manager
        self._hosts = HostPolicy(allowed_hosts, allow_loopback=allow_loopback)

    def __repr__(self) -> str:
        return f"IAMMiddleware({self._manager!r}, allowed_hosts={list(self._hosts.allowed)!r})"

    def may_send_token(self, url: URL) -> bool:
        """Whether the token may go to ``url``: an allowed host, over https (or loopback).

        Logs a warning the first time a host is refused.
        """
        return self._hosts.may_send(url.scheme, url.host or "")

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        """Add the bearer token; on a 401, refresh once and resend if the body allows it.

        Args:
            request: The request aiohttp is about to send.
            handler: The rest of the chain (further middlewares, then the connection).

        Returns:
            The service's response: the resent request's, after a 401 that was retried.

        Raises:
            aioiam.IAMError: No token could be had (as from :meth:`TokenManager.get_token`).
        """
        if not self.may_send_token(request.url):
            return await handler(request)  # untouched: no token, and any header the caller set is theirs
        # Decided before sending: once sent, a streamed body is gone.
        replayable = _replayable(request)
        access_token = await self._manager.get_token()
        try:
            request.headers[hdrs.AUTHORIZATION] = f"Bearer {access_token}"
            response = await handler(request)
            if response.status != 401 or not replayable:
                return response
            self._manager.invalidate(access_token)
            fresh = await self._manager.get_token()
            if fresh == access_token:
                return response  # not dropped (a drop just before, see invalidate): the 401 stands
            response.release()
            request.headers[hdrs.AUTHORIZATION] = f"Bearer {fresh}"
            return await handler(request)
        finally:
            # request_info (kept by the response, and by any ClientResponseError) is a live view
            # of these headers: without this, the token would show in their repr.
            request.headers.popall(hdrs.AUTHORIZATION, None)
