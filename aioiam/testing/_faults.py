"""Scripted misbehaviour for :class:`~aioiam.testing.FakeIAM`: :class:`Fault` and :data:`OMIT`.

A :class:`Fault` replaces one answer of the emulator, on any of its endpoints (IAM's token
endpoint and the VPC metadata service alike): an error, a broken body, a cut or hung connection,
a late answer, or a token answer with fields replaced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = ["OMIT", "TRUNCATED_ANSWER", "Fault"]

#: The start of an answer that a reset cuts off: headers promising a body that never comes.
TRUNCATED_ANSWER: Final = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2048\r\n\r\n"
    b'{"token_type": "Bearer", "expires_in": 3600, "access_'
)

_HTML_PAGE: Final = (
    b"<!DOCTYPE html>\n<html><head><title>Service Unavailable</title></head>\n"
    b"<body><h1>Our apologies</h1><p>The page you requested is unavailable. Please try again later.</p>"
    b"</body></html>\n"
)

_DEFAULT_ERRORS: Final[Mapping[int, tuple[str, str]]] = {
    400: ("BXNIM0415E", "Provided API key could not be found."),
    401: ("BXNIM0310E", "Client credentials are invalid."),
    403: ("BXNIM0513E", "You are not authorized to use this API key."),
    429: ("BXNIM0436E", "Too many requests; please retry later."),
}


class _Omit:
    """The type of :data:`OMIT`."""

    _instance: _Omit | None = None

    def __new__(cls) -> _Omit:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "OMIT"


#: Use as a value in :meth:`Fault.token` to leave a field out of the answer.
OMIT: Final = _Omit()


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour that replaces the emulator's next answer.

    Build one with the class methods (:meth:`latency`, :meth:`error`, :meth:`reset`,
    :meth:`hang`, :meth:`html`, :meth:`invalid_json`, :meth:`token`, :meth:`clock_skew`) and queue
    it with :meth:`FakeIAM.fail_next`. The fields below are what those methods fill in; building a
    ``Fault`` by hand still works (``Fault(status=503)`` is an IAM-style 503).

    A fault does not check credentials unless it answers with a token (:meth:`latency`,
    :meth:`token`, :meth:`clock_skew`): an error or broken answer is sent whatever the request
    was. Faults do not stack: each one replaces one answer.

    Faults apply to every endpoint alike: the next answer is replaced whether the request was an
    IAM grant or a call to the VPC metadata service. On the metadata service's paths a generated
    error body takes that service's shape (``{"errors": [{"code", "message"}], "trace"}``, with
    ``error_code`` as the code), and :meth:`token` and :meth:`clock_skew` act on its JSON answers
    (``created_at`` and ``expires_at`` move with the skew).

    Attributes:
        status: The HTTP status to answer with (unused when ``fields`` is set or with
            ``connection``).
        body: The raw body; when ``None`` an IAM-style JSON error body is made for the status.
        headers: Extra response headers (``Retry-After``, say).
        error_code: The IAM error code for the generated error body (the ``code`` of a
            metadata service error).
        delay: Extra seconds to wait before the fault happens (slept on the event loop clock).
        error_message: The IAM error message for the generated body (default: "simulated <status>").
        fields: When not ``None``, answer as a normal request would (a credential error, or 200
            with a real token) with these fields of the JSON token answer replaced or added
            (:data:`OMIT` removes one). The token is issued and recorded as usual.
        skew: With ``fields``: seconds added to ``iat``, ``exp`` and ``expiration`` (IAM's clock
            running ahead of the local one); the token's real validity is unchanged.
        connection: ``"reset"`` cuts the connection after sending ``partial``; ``"hang"`` never
            answers (until the client gives up).
        partial: For ``"reset"``: raw bytes of an answer to send before the cut.
    """

    status: int = 503
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    error_code: str = "BXNIM0001E"
    delay: float = 0.0
    error_message: str | None = None
    fields: Mapping[str, Any] | None = None
    skew: float = 0.0
    connection: Literal["reset", "hang"] | None = None
    partial: bytes = b""

    @classmethod
    def latency(cls, seconds: float) -> Fault:
        """A normal answer (token or credential error), ``seconds`` late."""
        return cls(status=200, fields={}, delay=seconds)

    @classmethod
    def error(
        cls,
        status: int,
        *,
        error_code: str | None = None,
        message: str | None = None,
        retry_after: float | str | None = None,
        delay: float = 0.0,
    ) -> Fault:
        """An IAM-style JSON error answer.

        Args:
            status: The HTTP status: 400/401/403 (refused credentials), 429 (rate limited),
                5xx (IAM failing), or anything else.
            error_code: IAM's ``errorCode``; by default the usual one for the status
                (``BXNIM0415E`` for 400, ``BXNIM0310E`` for 401, ``BXNIM0513E`` for 403,
                ``BXNIM0436E`` for 429, ``BXNIM0001E`` otherwise).
            message: IAM's ``errorMessage``; by default a plausible one for the status.
            retry_after: Sent as the ``Retry-After`` header (seconds, or an HTTP date string).
            delay: Seconds to wait before answering.
        """
        default_code, default_message = _DEFAULT_ERRORS.get(status, ("BXNIM0001E", f"simulated {status}"))
        headers: dict[str, str] = {}
        if retry_after is not None:
            headers["Retry-After"] = retry_after if isinstance(retry_after, str) else f"{retry_after:g}"
        return cls(
            status=status,
            headers=headers,
            error_code=error_code or default_code,
            error_message=message or default_message,
            delay=delay,
        )

    @classmethod
    def reset(cls, partial: bytes = TRUNCATED_ANSWER, *, delay: float = 0.0) -> Fault:
        """The connection is reset mid-answer, after the raw bytes ``partial``.

        Over a socket the server sends ``partial`` and closes with a TCP reset: the client sees
        ``httpx.ReadError`` or ``httpx.RemoteProtocolError`` depending on timing. In process
        (:attr:`FakeIAM.transport`) it raises ``httpx.ReadError`` ("connection reset by peer").
        """
        return cls(status=0, connection="reset", partial=partial, delay=delay)

    @classmethod
    def hang(cls) -> Fault:
        """No answer ever comes: the request hangs until the client gives up.

        Over a socket the handler is cancelled when the client times out and disconnects. In
        process (:attr:`FakeIAM.transport`) httpx's own timeouts do not apply: the request waits
        until the caller cancels it (as :class:`~aioiam.TokenManager` does after
        ``request_timeout``). Takes no ``delay``: it never answers anyway.
        """
        return cls(status=0, connection="hang")

    @classmethod
    def html(cls, status: int = 200, *, delay: float = 0.0) -> Fault:
        """An HTML page instead of JSON, as from a proxy, a load balancer or a captive portal."""
        return cls(status=status, body=_HTML_PAGE, headers={"Content-Type": "text/html; charset=utf-8"}, delay=delay)

    @classmethod
    def invalid_json(cls, status: int = 200, *, delay: float = 0.0) -> Fault:
        """A JSON content type with a body that does not parse (a truncated object)."""
        return cls(
            status=status,
            body=b'{"token_type": "Bearer", "expires_in": 3600, "access_token": "eyJhbGciOiJSUzI1NiIs',
            headers={"Content-Type": "application/json"},
            delay=delay,
        )

    @classmethod
    def token(cls, *, delay: float = 0.0, **fields: Any) -> Fault:
        """A 200 token answer with some JSON fields replaced, removed (:data:`OMIT`) or added.

        The token itself is issued as usual and stays valid for the emulator's ``lifetime``
        whatever the answer claims: ``Fault.token(expires_in=86400)`` is IAM overstating the
        lifetime, and the JWT's ``exp - iat`` still tells the truth.

        Examples: ``Fault.token(expires_in=0)``, ``Fault.token(expires_in=-5)``,
        ``Fault.token(expires_in=10**9)``, ``Fault.token(expires_in="3600")``,
        ``Fault.token(token_type="mac")``, ``Fault.token(access_token=OMIT)``,
        ``Fault.token(access_token=42)``.
        """
        return cls(status=200, fields=dict(fields), delay=delay)

    @classmethod
    def clock_skew(cls, seconds: float) -> Fault:
        """A normal token whose ``iat``, ``exp`` and ``expiration`` are ``seconds`` ahead (or behind, if negative).

        Models IAM's clock and the local clock disagreeing. The token's real lifetime is
        unchanged (and the emulator's :meth:`FakeIAM.is_valid` judges by its own clock).
        """
        return cls(status=200, fields={}, skew=seconds)
