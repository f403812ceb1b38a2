"""``IAMAuth``: a :class:`TokenManager` as an ``httpx.Auth`` flow for ``httpx.AsyncClient``."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator

import httpx

from ._manager import TokenManager

__all__ = ["IAMAuth"]


def _replayable(request: httpx.Request) -> bool:
    """Whether the request's body can be sent a second time (bytes in memory, or no body)."""
    return isinstance(request.stream, httpx.ByteStream)


class IAMAuth(httpx.Auth):
    """Sets ``Authorization: Bearer <token>`` on every request of an ``httpx.AsyncClient``.

    On a 401 from the service it drops the token it sent, but only if that token is still the
    manager's current one (so a burst of 401s for one token causes one refresh), and resends the
    request once with a fresh token. A request whose body cannot be replayed (a streaming upload)
    is not resent: its 401 is returned as is.

    It does not work with the synchronous ``httpx.Client`` (it raises ``TypeError``), and it
    does not own the manager: close the manager yourself.

    Args:
        manager: The :class:`TokenManager` that supplies tokens.
    """

    requires_request_body = False
    requires_response_body = False

    def __init__(self, manager: TokenManager) -> None:
        if not isinstance(manager, TokenManager):
            raise TypeError("IAMAuth needs an aioiam.TokenManager")
        self._manager = manager

    def __repr__(self) -> str:
        return f"IAMAuth({self._manager!r})"

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Always raises ``TypeError``: IAMAuth is asynchronous."""
        raise TypeError(
            "aioiam.IAMAuth works only with httpx.AsyncClient; with a synchronous httpx.Client, "
            "use IBM's synchronous SDK authenticators instead"
        )

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """Add the bearer token; on a 401, refresh once and resend if the body allows it."""
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
