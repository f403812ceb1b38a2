"""The assume grant: an API key's token exchanged for a trusted profile's token."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import httpx

from .._exceptions import InvalidCredentialsError
from .._redaction import redactable
from .._timing import RefreshPolicy, schedule
from .._token import Token, TokenResponse
from .apikey import ApiKeySource, check_api_key
from .base import IAM_URL, FormGrant, optional_str

__all__ = ["ASSUME_GRANT", "AssumeProfileSource"]

ASSUME_GRANT = "urn:ibm:params:oauth:grant-type:assume"


class AssumeProfileSource(FormGrant):
    """A trusted profile's token, assumed with an API key: ``grant_type=...:assume``.

    First an API-key token (``grant_type=...:apikey``), then that token exchanged for the
    profile's. The API-key token is kept and reused while it is fresh (80% of its life, as the
    manager would), so each refresh of the profile's token costs one request, not two; if IAM
    refuses the exchange, it is dropped and the next fetch gets a new one.

    Args:
        api_key: The IBM Cloud API key of the identity allowed to assume the profile.
        profile_id: The trusted profile's id.
        profile_crn: The trusted profile's CRN.
        profile_name: The trusted profile's name; needs ``account_id``. Exactly one of the three.
        account_id: The account that holds the profile named by ``profile_name``.
        url: IAM's base URL, for both requests.
        clock: The monotonic clock that times the reused API-key token.

    Raises:
        ValueError: Not exactly one selector; ``profile_name`` without ``account_id`` (or
            ``account_id`` without ``profile_name``); a bad key or URL.
        TypeError: An argument of the wrong type.
    """

    __slots__ = ("_clock", "_inner", "_inner_token", "_profile", "_secrets")

    def __init__(
        self,
        api_key: str,
        *,
        profile_id: str | None = None,
        profile_crn: str | None = None,
        profile_name: str | None = None,
        account_id: str | None = None,
        url: str = IAM_URL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        key = check_api_key(api_key)
        selectors = {
            "profile_id": optional_str("profile_id", profile_id),
            "profile_crn": optional_str("profile_crn", profile_crn),
            "profile_name": optional_str("profile_name", profile_name),
        }
        account = optional_str("account_id", account_id)
        chosen = {name: value for name, value in selectors.items() if value}
        if len(chosen) != 1:
            raise ValueError("pass exactly one of profile_id, profile_crn and profile_name (with account_id)")
        if ("profile_name" in chosen) != (account is not None):
            raise ValueError("profile_name and account_id go together: a profile name is unique only in its account")
        if not callable(clock):
            raise TypeError("clock must be a function returning seconds")
        super().__init__(url=url, client_id=None, client_secret=None, scope=None, secrets=[key])
        self._inner = ApiKeySource(key, url=url)
        self._profile = {**chosen, **({"account": account} if account else {})}
        self._clock = clock
        self._inner_token: Token | None = None
        self._secrets = self._static_secrets

    def __repr__(self) -> str:
        selector = ", ".join(f"{name}={value!r}" for name, value in self._profile.items())
        return f"AssumeProfileSource({selector}, endpoint={self.endpoint!r})"

    def cache_identity(self) -> tuple[str, str | None]:
        """For a shared cache: the profile's token (no secret), and the API key, the stable secret."""
        return self._identity(ASSUME_GRANT, **self._profile), self._inner.cache_identity()[1]

    @property
    def secrets(self) -> Sequence[str]:
        """The API key (also form-encoded) and the API-key token held for the exchange."""
        return self._secrets

    async def _api_key_token(self, client: httpx.AsyncClient) -> str:
        held = self._inner_token
        now = self._clock()
        if held is not None and now < held.refresh_at:
            return held.access_token
        answer = await self._inner.fetch(client)
        self._inner_token = schedule(answer, now, RefreshPolicy(jitter_fraction=0), 0.0)
        self._secrets = redactable((*self._static_secrets, answer.access_token))
        return answer.access_token

    async def fetch(self, client: httpx.AsyncClient) -> TokenResponse:
        """Get (or reuse) the API-key token, then exchange it for the profile's. No retry."""
        access_token = await self._api_key_token(client)
        try:
            return await self._post(client, {"grant_type": ASSUME_GRANT, "access_token": access_token, **self._profile})
        except InvalidCredentialsError:
            self._inner_token = None  # perhaps revoked: the next fetch asks for a new one
            raise
