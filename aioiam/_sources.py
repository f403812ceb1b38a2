"""Where tokens come from: the :class:`TokenSource` seam and the API-key grant.

A source knows how to ask IAM for one token and how to read the answer. It does not retry, time,
cache or share anything: the manager does all of that around :meth:`TokenSource.fetch`. Other
grants (trusted profiles, VPC metadata) plug in here as further sources.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import AsyncIterator, Sequence
from typing import Protocol, runtime_checkable
from urllib.parse import quote_plus

import httpx

from ._hooks import logger
from ._redaction import Redactor, clip, redactable, scrub
from ._token import TokenResponse, parse_error_response, parse_retry_after, parse_token_response
from ._urls import token_endpoint
from ._version import __version__

__all__ = [
    "APIKEY_GRANT",
    "USER_AGENT",
    "ApiKeySource",
    "TokenSource",
    "check_credential",
    "read_iam_answer",
    "unverified_tls",
]

USER_AGENT = f"aioiam/{__version__}"
APIKEY_GRANT = "urn:ibm:params:oauth:grant-type:apikey"
#: First or last characters no IBM Cloud credential has: a pasted placeholder (``<your-apikey>``,
#: ``{apikey}``) or a value copied with its quotes (``"abc..."``) from a file or a shell.
_WRAPPERS = "{}<>\"'"


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


def unverified_tls(response: httpx.Response) -> bool:
    """Whether ``response`` came over a TLS connection whose certificate was not verified.

    Reads httpx's public ``network_stream`` response extension. ``False`` when that cannot be
    told: plain http (loopback), or a transport that is not a network (a mock, an emulator).
    """
    stream = response.extensions.get("network_stream")
    if stream is None:
        return False
    context = getattr(stream.get_extra_info("ssl_object"), "context", None)
    return isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_NONE


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


def check_credential(name: str, value: object) -> str:
    """``value`` stripped of surrounding white space, if it can be a credential called ``name``.

    Checks the type and the shape only; whether IAM accepts it is IAM's business. No message
    quotes the value.

    Raises:
        TypeError: ``value`` is not a ``str`` (``bytes`` gets a hint to decode it).
        ValueError: ``value`` is blank, or starts or ends with a brace, an angle bracket or a
            quote: a placeholder pasted from documentation, or a value copied with its quotes.
    """
    if not isinstance(value, str):
        hint = " (decode it first)" if isinstance(value, (bytes, bytearray)) else ""
        raise TypeError(f"{name} must be a str, not {type(value).__name__}{hint}")
    value = value.strip()
    if not value:
        raise ValueError(f"{name} is blank")
    if value[0] in _WRAPPERS or value[-1] in _WRAPPERS:
        raise ValueError(
            f"{name} starts or ends with a brace, angle bracket or quote: it looks like a placeholder "
            "(such as '<your-apikey>' or '{apikey}') or a quoted value; pass the credential itself, "
            "without quotes"
        )
    return value


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
        ValueError: A missing or blank key, a key that looks like a URL or like a placeholder or
            quoted value (see :func:`check_credential`), only one of the client id and secret, or a
            bad URL, including one that contains the key or the client secret in any letter case
            (see ``token_endpoint``). No message quotes a secret.
    """

    __slots__ = ("_api_key", "_authorization", "_form", "_secrets", "_warned_unverified", "endpoint")

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
        if isinstance(api_key, str) and not api_key.strip():
            raise ValueError("api_key is blank; pass the IBM Cloud API key")
        api_key = check_credential("api_key", api_key)
        if api_key.lower().startswith(("https://", "http://")):
            raise ValueError("api_key looks like a URL; pass the key first and the URL as url=")
        if scope is not None and not isinstance(scope, str):
            raise TypeError(f"scope must be a str, not {type(scope).__name__}")
        if (client_id is None) != (client_secret is None) or client_id == "" or client_secret == "":
            raise ValueError("client_id and client_secret go together: pass both or neither")
        if client_id is not None and client_secret is not None:
            client_id = check_credential("client_id", client_id)
            client_secret = check_credential("client_secret", client_secret)
        self._api_key = api_key
        self._warned_unverified = False
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
        if not self._warned_unverified and unverified_tls(response):
            self._warned_unverified = True
            logger.warning(
                "aioiam: IAM's TLS certificate was not verified (verify=False, or an http_client that does "
                "not verify); anyone on the path can read the API key. Use this only against a local emulator."
            )
        try:
            return await read_iam_answer(response, url=self.endpoint, redact=self._redact)
        finally:
            await response.aclose()

    def _redact(self, text: str) -> str:
        return scrub(text, self._secrets)
