"""The API-key grant: an IBM Cloud API key for a token."""

from __future__ import annotations

import httpx

from .._token import TokenResponse
from .base import IAM_URL, FormGrant, check_credential

__all__ = ["APIKEY_GRANT", "ApiKeySource", "check_api_key"]

APIKEY_GRANT = "urn:ibm:params:oauth:grant-type:apikey"


def check_api_key(api_key: object) -> str:
    """``api_key`` stripped, if it can be an IBM Cloud API key. No message quotes it.

    Raises:
        TypeError: Not a ``str``.
        ValueError: Missing, blank, shaped like a URL, a placeholder or a quoted value.
    """
    if api_key is None:
        raise ValueError("api_key is missing; pass the IBM Cloud API key")
    if isinstance(api_key, str) and not api_key.strip():
        raise ValueError("api_key is blank; pass the IBM Cloud API key")
    key = check_credential("api_key", api_key)
    if key.lower().startswith(("https://", "http://")):
        raise ValueError("api_key looks like a URL; pass the key first and the URL as url=")
    return key


class ApiKeySource(FormGrant):
    """The API-key grant: ``POST {url}/identity/token`` with ``grant_type=...:apikey``.

    Args:
        api_key: The IBM Cloud API key.
        url: IAM's base URL (``/identity/token`` is appended).
        client_id: With ``client_secret``, sent as HTTP Basic auth; then IAM also returns a
            usable refresh token.
        client_secret: See ``client_id``; both or neither.
        scope: Sent as ``scope`` when given.

    Raises:
        TypeError: ``api_key``, ``url``, ``client_id``, ``client_secret`` or ``scope`` is not a
            string (``None`` is allowed for the last three).
        ValueError: A missing or blank key, a key that looks like a URL or like a placeholder or
            quoted value, only one of the client id and secret, or a bad URL, including one that
            contains the key or the client secret in any letter case. No message quotes a secret.
    """

    __slots__ = ("_form",)

    def __init__(
        self,
        api_key: str,
        *,
        url: str = IAM_URL,
        client_id: str | None = None,
        client_secret: str | None = None,
        scope: str | None = None,
    ) -> None:
        key = check_api_key(api_key)
        super().__init__(url=url, client_id=client_id, client_secret=client_secret, scope=scope, secrets=[key])
        self._form = {"grant_type": APIKEY_GRANT, "apikey": key, "response_type": "cloud_iam"}

    def __repr__(self) -> str:
        return f"ApiKeySource(endpoint={self.endpoint!r}, client_auth={self._authorization is not None})"

    def cache_identity(self) -> tuple[str, str | None]:
        """For a shared cache: what the token is for (no secret), and the key, the stable secret."""
        return self._identity(APIKEY_GRANT), self._form["apikey"]

    def build_request(self, client: httpx.AsyncClient) -> httpx.Request:
        """The token request, ready to send. Pure apart from reading ``client``'s defaults."""
        return self._form_request(client, self._form)

    async def fetch(self, client: httpx.AsyncClient) -> TokenResponse:
        """Send one token request and read the answer. No retry, no timing."""
        return await self._post(client, self._form)
