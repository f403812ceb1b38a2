"""What every token source shares: the :class:`TokenSource` seam, credential checks, reading
IAM's answer, and :class:`FormGrant`, the form POST to IAM's token endpoint that most grants are.

A source knows how to ask for one token and how to read the answer. It does not retry, time,
cache or share anything: the manager does all of that around :meth:`TokenSource.fetch`.
"""

from __future__ import annotations

import base64
import email.utils
import ssl
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable
from urllib.parse import quote_plus

import httpx

from .._hooks import logger
from .._redaction import Redactor, clip, redactable, scrub
from .._token import TokenResponse, parse_error_response, parse_retry_after, parse_token_response
from .._urls import token_endpoint
from .._version import __version__

__all__ = [
    "IAM_URL",
    "USER_AGENT",
    "FormGrant",
    "TokenSource",
    "check_credential",
    "identity",
    "one_chunk",
    "optional_str",
    "read_iam_answer",
    "unverified_tls",
]

USER_AGENT = f"aioiam/{__version__}"
IAM_URL = "https://iam.cloud.ibm.com"
#: First or last characters no IBM Cloud credential has: a pasted placeholder (``<your-apikey>``,
#: ``{apikey}``) or a value copied with its quotes (``"abc..."``) from a file or a shell.
_WRAPPERS = "{}<>\"'"


@runtime_checkable
class TokenSource(Protocol):
    """Gets one token from IAM. Implement it to add a grant; the manager does the rest.

    A source must not retry or sleep, and must raise only :class:`~aioiam.IAMError` subclasses or
    ``httpx`` transport errors (which the manager treats as transient).

    To be used with a shared cache (``TokenManager(cache=...)``) a source also needs
    ``cache_identity() -> tuple[str, str | None]``: what its token is for, as a string holding no
    secret (grant, endpoint, profile, scope, client id: two sources with the same identity and
    secret get each other's tokens), and the stable secret to derive the cache's keys from, or
    ``None`` when its credential rotates (the cache then needs ``secret=``). Every source aioiam
    ships has one; without it, a cache is refused with ``TypeError``.
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


def _server_time(response: httpx.Response) -> float:
    """The Unix time by the answer's ``Date`` header (the clock a ``Retry-After`` date is on), or
    by the local clock when it has none or an unreadable one."""
    date = response.headers.get("date")
    if date:
        try:
            return email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError, IndexError):
            pass
    return time.time()


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
        retry_after=parse_retry_after(response.headers.get("retry-after"), now=_server_time(response)),
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


def one_chunk(request: httpx.Request) -> httpx.Request:
    """``request`` with its body sent as one chunk (see :class:`_FormBody`). Returns it."""
    request.stream = _FormBody(request.content)
    return request


def identity(**fields: str | None) -> str:
    """A token's non-secret identity for a shared cache: ``name=value`` lines, sorted, empty
    values included (so a scope added later names another token). Never put a secret in it."""
    return "\n".join(f"{name}={value or ''}" for name, value in sorted(fields.items()))


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


def optional_str(name: str, value: object) -> str | None:
    """``value`` stripped, or ``None`` for ``None`` or a blank string; for non-secret settings.

    Raises:
        TypeError: ``value`` is neither ``None`` nor a ``str``.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    return value.strip() or None


class FormGrant:
    """A grant that is one form POST to IAM's token endpoint: the API-key, compute-resource and
    assume grants. Subclasses build the form; this sends it and reads the answer.

    Holds the endpoint, optional client credentials (HTTP Basic, both or neither) and scope, and
    the secrets to scrub. Does not retry or time anything.

    Args:
        url: IAM's base URL (see ``token_endpoint``).
        client_id: With ``client_secret``, sent as HTTP Basic auth.
        client_secret: See ``client_id``.
        scope: Sent as ``scope`` when given.
        secrets: The grant's own secrets (the API key, say), checked against the URL and scrubbed
            from everything IAM sends back.

    Raises:
        TypeError: A credential or the URL is not a string.
        ValueError: Only one of the client id and secret; a credential that looks like a
            placeholder or a quoted value; a bad URL, or one holding a secret in any case.
    """

    __slots__ = ("_authorization", "_client_id", "_scope", "_static_secrets", "_warned_unverified", "endpoint")

    def __init__(
        self,
        *,
        url: str,
        client_id: str | None,
        client_secret: str | None,
        scope: str | None,
        secrets: Iterable[str] = (),
    ) -> None:
        if (client_id is None) != (client_secret is None) or client_id == "" or client_secret == "":
            raise ValueError("client_id and client_secret go together: pass both or neither")
        all_secrets = [s for secret in secrets for s in (secret, quote_plus(secret))]
        self._authorization: str | None = None
        self._client_id: str | None = None
        if client_id is not None and client_secret is not None:
            client_id = check_credential("client_id", client_id)
            client_secret = check_credential("client_secret", client_secret)
            self._client_id = client_id
            encoded = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode("ascii")
            self._authorization = "Basic " + encoded
            all_secrets += [client_secret, quote_plus(client_secret), encoded]
        self._scope = optional_str("scope", scope)
        # Only those long enough to scrub without mangling other text; longest first.
        self._static_secrets = redactable(all_secrets)
        self.endpoint = token_endpoint(url, secrets=all_secrets)
        self._warned_unverified = False

    @property
    def secrets(self) -> Sequence[str]:
        """The grant's secrets (also form-encoded), and the client secret and Basic credentials
        when configured.

        Only those of at least ``MIN_REDACTABLE_LENGTH`` characters, longest first: a shorter
        string cannot be scrubbed from text without mangling unrelated words.
        """
        return self._static_secrets

    def _identity(self, grant: str, **fields: str | None) -> str:
        """The identity of this grant's tokens: ``grant``, the endpoint, scope, client id, ``fields``."""
        return identity(grant=grant, endpoint=self.endpoint, scope=self._scope, client_id=self._client_id, **fields)

    def _form_request(self, client: httpx.AsyncClient, form: Mapping[str, str]) -> httpx.Request:
        """The token request for ``form`` (``scope`` added when configured), ready to send."""
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if self._authorization is not None:
            headers["Authorization"] = self._authorization
        data = dict(form)
        if self._scope:
            data["scope"] = self._scope
        return one_chunk(client.build_request("POST", self.endpoint, data=data, headers=headers))

    async def _post(self, client: httpx.AsyncClient, form: Mapping[str, str]) -> TokenResponse:
        """Send ``form`` to the token endpoint and read the answer. No retry, no timing."""
        response = await client.send(self._form_request(client, form), auth=None, follow_redirects=False)
        if not self._warned_unverified and unverified_tls(response):
            self._warned_unverified = True
            logger.warning(
                "aioiam: IAM's TLS certificate was not verified (verify=False, or an http_client that does "
                "not verify); anyone on the path can read the credentials. Use this only against a local "
                "emulator."
            )
        try:
            return await read_iam_answer(response, url=self.endpoint, redact=self._redact)
        finally:
            await response.aclose()

    def _redact(self, text: str) -> str:
        return scrub(text, self.secrets)
