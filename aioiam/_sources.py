"""Where tokens come from: the :class:`TokenSource` seam and the API-key grant.

A source knows how to ask IAM for one token and how to read the answer. It does not retry, time,
cache or share anything: the manager does all of that around :meth:`TokenSource.fetch`. Other
grants (trusted profiles, VPC metadata) plug in here as further sources.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Protocol, runtime_checkable
from urllib.parse import quote_plus

import httpx

from ._token import (
    Redactor,
    TokenResponse,
    clip,
    parse_error_response,
    parse_retry_after,
    parse_token_response,
    redactable,
    scrub,
)
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
    """Whether ``host`` is ``localhost`` or a loopback address (127.0.0.0/8, ``::1``).

    ``localhost`` may end with a dot (``localhost.``); brackets around an IPv6 address and case are
    ignored. Subdomains such as ``app.localhost`` are not loopback here: many resolvers send them
    to DNS, where they can point anywhere. No name is resolved.
    """
    host = host.strip("[]").lower()
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_URL_EXAMPLE = "such as 'https://iam.cloud.ibm.com'"


def token_endpoint(url: str, *, secrets: Iterable[str] = ()) -> str:
    """The token endpoint for an IAM base URL.

    ``/identity/token`` is appended; a URL that already ends with it (and a trailing slash) is
    accepted. Does not resolve or contact the host.

    Args:
        url: IAM's base URL.
        secrets: The API key and client secret (in every spelling sent). A URL that contains one
            is refused, and no message quotes one.

    Raises:
        TypeError: The URL is not a string.
        ValueError: The URL is blank, not absolute, contains one of ``secrets``, carries
            credentials, a query or a fragment, or uses plain http for a host that is not loopback.
            The message quotes the URL only when it has a scheme and a host, and never with a
            query, a fragment, credentials or a secret in it: a string that is not even URL-shaped
            may be a key passed in the wrong place.
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str {_URL_EXAMPLE}, not {type(url).__name__}")
    url = url.strip()
    if not url:
        raise ValueError(f"url must be a non-empty string {_URL_EXAMPLE}")
    if scrub(url, secrets) != url:
        raise ValueError(
            f"url contains the API key or the client secret; pass IAM's base URL {_URL_EXAMPLE} "
            "(are two arguments swapped?)"
        )
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        detail = f": {scrub(str(exc), secrets)}" if "://" in url else ""
        raise ValueError(f"url is not a valid URL{detail}") from None
    if parsed.userinfo:
        raise ValueError("url must not carry a user name or password")
    if parsed.query or parsed.fragment:
        raise ValueError(f"url must not have a query or fragment; pass IAM's base URL {_URL_EXAMPLE}")
    if parsed.scheme and parsed.host:
        shown = f", got {url!r}"
    else:
        shown = " (the value is not shown: it has no scheme or host, so it may be a key passed as url)"
    if parsed.scheme not in ("https", "http") or not parsed.host:
        raise ValueError(f"url must be an absolute https URL {_URL_EXAMPLE}{shown}")
    if parsed.scheme == "http" and not is_loopback_host(parsed.host):
        raise ValueError(f"url must use https (plain http is allowed only for localhost and loopback addresses){shown}")
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
    if request_id is not None:
        # A header is text from the other side like the body: a proxy echoing the request could
        # put the key in it. Scrubbed and clipped like the body's requestId.
        request_id = clip(redact(request_id), 100)
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


class _FormBody(httpx.AsyncByteStream):
    """A request body sent as one chunk, iterated without an async generator.

    httpx's own body stream is an async generator; a request cancelled while sending it (a
    timeout, a manager closing) leaves the generator unfinished, and trio then warns
    (``ResourceWarning``) when it is garbage collected. This iterator has nothing to finish.
    """

    def __init__(self, body: bytes) -> None:
        self._body = body

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _OneChunk(self._body)


class _OneChunk:
    __slots__ = ("_body",)

    def __init__(self, body: bytes) -> None:
        self._body: bytes | None = body

    def __aiter__(self) -> _OneChunk:
        return self

    async def __anext__(self) -> bytes:
        body, self._body = self._body, None
        if body is None:
            raise StopAsyncIteration
        return body


def _check_str(name: str, value: object) -> None:
    """Raise ``TypeError`` naming ``name`` (never quoting the value) unless ``value`` is a ``str``."""
    if not isinstance(value, str):
        hint = " (decode it first)" if isinstance(value, (bytes, bytearray)) else ""
        raise TypeError(f"{name} must be a str, not {type(value).__name__}{hint}")


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
        TypeError: ``api_key``, ``url``, ``client_id``, ``client_secret`` or ``scope`` is not a
            string (``None`` is allowed for the last three).
        ValueError: A missing or blank key, a key that looks like a URL, only one of the client id
            and secret, or a bad URL (see :func:`token_endpoint`). No message quotes a secret.
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
        if api_key is None:
            raise ValueError("api_key is missing; pass the IBM Cloud API key")
        _check_str("api_key", api_key)
        for name, value in (("client_id", client_id), ("client_secret", client_secret), ("scope", scope)):
            if value is not None:
                _check_str(name, value)
        if not api_key.strip():
            raise ValueError("api_key is blank; pass the IBM Cloud API key")
        if api_key.strip().lower().startswith(("https://", "http://")):
            raise ValueError("api_key looks like a URL; pass the key first and the URL as url=")
        if (client_id is None) != (client_secret is None) or client_id == "" or client_secret == "":
            raise ValueError("client_id and client_secret go together: pass both or neither")
        self._api_key = api_key.strip()
        secrets = [self._api_key, quote_plus(self._api_key)]
        self._authorization: str | None = None
        if client_id is not None and client_secret is not None:
            encoded = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode("ascii")
            self._authorization = "Basic " + encoded
            secrets += [client_secret, quote_plus(client_secret), encoded]
        # Only those long enough to scrub without mangling other text; longest first.
        self._secrets = redactable(secrets)
        self.endpoint = token_endpoint(url, secrets=secrets)
        self._form = {
            "grant_type": APIKEY_GRANT,
            "apikey": self._api_key,
            "response_type": "cloud_iam",
        }
        if scope:
            self._form["scope"] = scope

    def __repr__(self) -> str:
        return f"ApiKeySource(endpoint={self.endpoint!r}, client_auth={self._authorization is not None})"

    @property
    def secrets(self) -> Sequence[str]:
        """The API key (also form-encoded), and the client secret and Basic credentials when configured.

        Only those of at least :data:`~aioiam._token.MIN_REDACTABLE_LENGTH` characters, longest
        first: a shorter string cannot be scrubbed from text without mangling unrelated words (and
        no real IBM Cloud API key is that short).
        """
        return self._secrets

    def build_request(self, client: httpx.AsyncClient) -> httpx.Request:
        """The token request, ready to send. Pure apart from reading ``client``'s defaults."""
        headers = {
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        if self._authorization is not None:
            headers["Authorization"] = self._authorization
        request = client.build_request("POST", self.endpoint, data=self._form, headers=headers)
        request.stream = _FormBody(request.content)
        return request

    async def fetch(self, client: httpx.AsyncClient) -> TokenResponse:
        """Send one token request and read the answer. No retry, no timing."""
        response = await client.send(self.build_request(client), auth=None, follow_redirects=False)
        try:
            return await read_iam_answer(response, url=self.endpoint, redact=self._redact)
        finally:
            await response.aclose()

    def _redact(self, text: str) -> str:
        return scrub(text, self._secrets)
