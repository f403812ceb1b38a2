"""Where tokens come from: the :class:`TokenSource` seam and the API-key grant.

A source knows how to ask IAM for one token and how to read the answer. It does not retry, time,
cache or share anything: the manager does all of that around :meth:`TokenSource.fetch`. Other
grants (trusted profiles, VPC metadata) plug in here as further sources.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Sequence
from typing import Protocol, runtime_checkable
from urllib.parse import quote_plus

import httpx

from ._token import Redactor, TokenResponse, parse_error_response, parse_retry_after, parse_token_response
from ._version import __version__

__all__ = [
    "USER_AGENT",
    "ApiKeySource",
    "TokenSource",
    "is_loopback_host",
    "token_endpoint",
]

USER_AGENT = f"aioiam/{__version__}"
APIKEY_GRANT = "urn:ibm:params:oauth:grant-type:apikey"
_TOKEN_PATH = "/identity/token"


@runtime_checkable
class TokenSource(Protocol):
    """Gets one token from IAM. Implement it to add a grant; the manager does the rest.

    A source must not retry or sleep, and must raise only :class:`~aioiam.IAMError` subclasses or
    ``httpx`` transport errors (which the manager treats as transient).
    """

    @property
    def secrets(self) -> Sequence[str]:
        """The secret strings this source sends, scrubbed from every message and log."""
        ...

    async def fetch(self, client: httpx.AsyncClient) -> TokenResponse:
        """Ask IAM for one token with ``client``.

        Raises:
            IAMError: IAM refused or answered badly (see :func:`parse_error_response`).
            httpx.TransportError: The request did not complete.
        """
        ...


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback address (127.0.0.0/8, ``::1``)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_endpoint(url: str) -> str:
    """The token endpoint for an IAM base URL.

    ``/identity/token`` is appended; a URL that already ends with it (and a trailing slash) is
    accepted.

    Raises:
        ValueError: The URL is not absolute, carries credentials, a query or a fragment, or uses
            plain http for a host that is not loopback. The message quotes the URL only when it
            carries no credentials.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError("url must be a non-empty string such as 'https://iam.cloud.ibm.com'")
    try:
        parsed = httpx.URL(url.strip())
    except httpx.InvalidURL as exc:
        raise ValueError(f"url is not a valid URL: {exc}") from None
    if parsed.userinfo:
        raise ValueError("url must not carry a user name or password")
    shown = str(parsed)
    if parsed.scheme not in ("https", "http") or not parsed.host:
        raise ValueError(f"url must be an absolute https URL such as 'https://iam.cloud.ibm.com', got {shown!r}")
    if parsed.scheme == "http" and not is_loopback_host(parsed.host):
        raise ValueError(
            f"url must use https (plain http is allowed only for localhost and loopback addresses), got {shown!r}"
        )
    if parsed.query or parsed.fragment:
        raise ValueError(f"url must not have a query or fragment, got {shown!r}")
    path = parsed.path.rstrip("/")
    if path.endswith(_TOKEN_PATH):
        path = path[: -len(_TOKEN_PATH)]
    return str(parsed.copy_with(path=path + _TOKEN_PATH))


def _request_id(headers: httpx.Headers) -> str | None:
    for name in ("x-global-transaction-id", "transaction-id", "x-request-id"):
        value: str | None = headers.get(name)
        if value:
            return value
    return None


async def read_iam_answer(response: httpx.Response, *, url: str, redact: Redactor) -> TokenResponse:
    """Read an IAM token answer (status, headers, body) into a token or raise the matching error.

    Raises:
        IAMError: The subclass that matches the status (see :func:`parse_error_response`).
    """
    body = await response.aread()
    request_id = _request_id(response.headers)
    if response.status_code == 200:
        return parse_token_response(body, status_code=200, request_id=request_id)
    raise parse_error_response(
        response.status_code,
        body,
        request_id=request_id,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
        url=url,
        redact=redact,
    )


class ApiKeySource:
    """The API-key grant: ``POST {url}/identity/token`` with ``grant_type=...:apikey``.

    Args:
        api_key: The IBM Cloud API key.
        url: IAM's base URL (see :func:`token_endpoint`).
        client_id: With ``client_secret``, sent as HTTP Basic auth; then IAM also returns a
            usable refresh token.
        client_secret: See ``client_id``; both or neither.
        scope: Sent as ``scope`` when given.

    Raises:
        ValueError: A missing or blank key, only one of the client id and secret, or a bad URL.
    """

    __slots__ = ("_api_key", "_authorization", "_form", "_secrets", "endpoint")

    def __init__(
        self,
        api_key: str,
        *,
        url: str = "https://iam.cloud.ibm.com",
        client_id: str | None = None,
        client_secret: str | None = None,
        scope: str | None = None,
    ) -> None:
        if not isinstance(api_key, str) or not api_key.strip():
            raise ValueError("api_key is missing or blank; pass the IBM Cloud API key")
        if (client_id is None) != (client_secret is None) or client_id == "" or client_secret == "":
            raise ValueError("client_id and client_secret go together: pass both or neither")
        self.endpoint = token_endpoint(url)
        self._api_key = api_key.strip()
        self._form = {
            "grant_type": APIKEY_GRANT,
            "apikey": self._api_key,
            "response_type": "cloud_iam",
        }
        if scope:
            self._form["scope"] = scope
        self._authorization: str | None = None
        secrets = [self._api_key, quote_plus(self._api_key)]
        if client_id is not None and client_secret is not None:
            encoded = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode("ascii")
            self._authorization = "Basic " + encoded
            secrets += [client_secret, encoded]
        # Longest first, so a secret that contains another is scrubbed whole.
        self._secrets: tuple[str, ...] = tuple(sorted(set(secrets), key=len, reverse=True))

    def __repr__(self) -> str:
        return f"ApiKeySource(endpoint={self.endpoint!r}, client_auth={self._authorization is not None})"

    @property
    def secrets(self) -> Sequence[str]:
        """The API key (also form-encoded), and the client secret and Basic credentials when configured."""
        return self._secrets

    def build_request(self, client: httpx.AsyncClient) -> httpx.Request:
        """The token request, ready to send. Pure apart from reading ``client``'s defaults."""
        headers = {
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        if self._authorization is not None:
            headers["Authorization"] = self._authorization
        return client.build_request("POST", self.endpoint, data=self._form, headers=headers)

    async def fetch(self, client: httpx.AsyncClient) -> TokenResponse:
        """Send one token request and read the answer. No retry, no timing."""
        response = await client.send(self.build_request(client), auth=None, follow_redirects=False)
        try:
            return await read_iam_answer(response, url=self.endpoint, redact=self._redact)
        finally:
            await response.aclose()

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text
