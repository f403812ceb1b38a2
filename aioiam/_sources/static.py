"""A bearer token the user already has: handed out until it expires, with nothing to refresh it."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

import httpx

from .._exceptions import ConfigurationError
from .._redaction import redactable
from .._token import MAX_EXPIRES_IN, TokenResponse, decode_jwt_claims
from .base import check_credential, identity

__all__ = ["StaticTokenSource"]

#: A token with less life than this left is not handed out any more.
_LAST_SECONDS = 10.0


class StaticTokenSource:
    """A bearer token you already have, served until its JWT ``exp`` minus the margin.

    Each fetch hands the same token back with the life it has left (by its ``exp`` claim and the
    wall clock), so the manager serves it, and "refreshes" it without a request, until it is
    within 10 seconds of expiry; from then on every fetch raises
    :class:`~aioiam.ConfigurationError`: nothing can refresh a token given as is. It sends
    nothing anywhere and never verifies the token's signature.

    Args:
        access_token: The bearer token: a JWT with a numeric ``exp`` claim.
        wall_clock: The Unix time, to read ``exp`` against.

    Raises:
        TypeError: The token is not a ``str``.
        ValueError: The token is blank, quoted, or not a JWT with an ``exp`` claim (with no
            expiry, nothing would say when to stop handing it out).
    """

    __slots__ = ("_exp", "_secrets", "_token", "_wall_clock")

    def __init__(self, access_token: str, *, wall_clock: Callable[[], float] = time.time) -> None:
        token = check_credential("access_token", access_token)
        if token.lower().startswith("bearer ") or any(c.isspace() for c in token):
            raise ValueError("access_token must be the token alone, without 'Bearer ' or spaces")
        exp = decode_jwt_claims(token).get("exp")
        if isinstance(exp, bool) or not isinstance(exp, (int, float)):
            raise ValueError("access_token is not a JWT with an 'exp' claim, so when it expires cannot be told")
        if not callable(wall_clock):
            raise TypeError("wall_clock must be a function returning the Unix time")
        self._token = token
        self._exp = float(exp)
        self._wall_clock = wall_clock
        self._secrets = redactable([token])

    def __repr__(self) -> str:
        return f"StaticTokenSource(expires={self._expiry_text()})"

    def _expiry_text(self) -> str:
        return datetime.fromtimestamp(self._exp, tz=timezone.utc).isoformat(timespec="seconds")

    def cache_identity(self) -> tuple[str, str | None]:
        """For a shared cache: a given bearer token, and the token itself as the stable secret."""
        return identity(grant="bearer-token"), self._token

    @property
    def secrets(self) -> Sequence[str]:
        """The token itself."""
        return self._secrets

    async def fetch(self, client: httpx.AsyncClient) -> TokenResponse:
        """The token with the life it has left. Sends nothing.

        Raises:
            ConfigurationError: It expires within 10 seconds, or has expired.
        """
        left = self._exp - self._wall_clock()
        if left <= _LAST_SECONDS:
            raise ConfigurationError(
                f"the bearer token given to StaticTokenSource expires at {self._expiry_text()} and nothing can "
                "refresh it; pass a new token, or use a source that can fetch one (an API key, a trusted profile)"
            )
        return TokenResponse(
            access_token=self._token,
            token_type="Bearer",
            expires_in=min(left, MAX_EXPIRES_IN),
            expiration=int(self._exp),
            claims=decode_jwt_claims(self._token),
        )
