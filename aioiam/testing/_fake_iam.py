"""``FakeIAM``: an IAM emulator with scriptable faults, for demos and tests.

It answers ``POST /identity/token`` the way IAM does (form body, JSON answer, IAM-style error
bodies) and issues JWT-shaped tokens that are not signed by anything. It runs in process as an
``httpx`` transport (:attr:`FakeIAM.transport`) or over real HTTP on loopback
(:meth:`FakeIAM.serve`, :meth:`FakeIAM.serve_in_thread`).

Misbehaviour is scripted per request with :meth:`FakeIAM.fail_next` and a :class:`Fault`, or
switched on for a while with :attr:`FakeIAM.down` (every answer an error) and
:attr:`FakeIAM.refusing` (the port is closed).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import parse_qs

import anyio
import httpx

from ._server import DropConnection, ListenSwitch, ServerAddress, serve, serve_in_thread

__all__ = ["OMIT", "FakeIAM", "Fault"]

APIKEY_GRANT = "urn:ibm:params:oauth:grant-type:apikey"

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


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


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

    Attributes:
        status: The HTTP status to answer with (unused when ``fields`` is set or with
            ``connection``).
        body: The raw body; when ``None`` an IAM-style JSON error body is made for the status.
        headers: Extra response headers (``Retry-After``, say).
        error_code: The IAM error code for the generated error body.
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


class FakeIAM:
    """An IAM token endpoint emulator, in process or on loopback, with scriptable faults.

    ``FakeIAM`` is a test double, not a model of IAM's every rule: it checks the grant type, the
    API key (against ``api_keys``) and the client credentials, and issues unsigned JWT-shaped
    tokens. It does not rate-limit by itself, accept refresh tokens (or any grant but the API-key
    grant), speak TLS or verify anything about tokens except through :meth:`is_valid`.

    Example::

        fake = FakeIAM(lifetime=60)
        fake.fail_next(2, Fault.error(503))  # the next two answers fail
        fake.fail_next(1, Fault.error(429, retry_after=3))
        fake.fail_next(1, Fault.reset())  # then the connection is cut mid-answer
        async with fake.serve() as address:  # real TCP on 127.0.0.1
            tm = aioiam.TokenManager("test-api-key", url=address.url)

    Args:
        api_keys: The keys it accepts; ``None`` accepts any non-blank key.
        lifetime: ``expires_in`` of issued tokens, in seconds (settable at any time).
        latency: Seconds every answer takes (slept on the event loop clock).
        client_id: With ``client_secret``, the Basic credentials it expects; then it also issues
            refresh tokens.
        client_secret: See ``client_id``.
        wall_clock: The Unix time used for ``iat``, ``exp``, ``expiration`` and :meth:`is_valid`.

    Attributes:
        requests: Requests that reached the emulator so far, faults included. Connections
            refused while :attr:`refusing` never reach it and are not counted.
        issued: Access tokens issued so far, oldest first (including those issued in a broken
            answer by :meth:`Fault.token`).
        refresh_tokens: Refresh tokens issued so far, oldest first.
        latency: Settable at any time.
        lifetime: Settable at any time.
        down: While true, every request gets ``down_status`` (an outage); queued faults still
            come first.
        down_status: The status served while ``down``.
        in_flight: Requests being answered right now.
        max_in_flight: The most requests ever answered at once.
    """

    def __init__(
        self,
        *,
        api_keys: Iterable[str] | None = ("test-api-key",),
        lifetime: float = 3600,
        latency: float = 0.0,
        client_id: str | None = None,
        client_secret: str | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.api_keys = None if api_keys is None else frozenset(api_keys)
        self.lifetime = lifetime
        self.latency = latency
        self.client_id = client_id
        self.client_secret = client_secret
        self.wall_clock = wall_clock
        self.requests = 0
        self.issued: list[str] = []
        self.refresh_tokens: list[str] = []
        self._expiry: dict[str, float] = {}
        self.down = False
        self.down_status = 503
        self.in_flight = 0
        self.max_in_flight = 0
        self._faults: deque[Fault] = deque()
        self._request_ids = itertools.count(1)  # Transaction-Id / requestId of every answer
        self._serial = itertools.count(1)  # issued tokens only, so errors leave no gaps
        self._switch = ListenSwitch()
        self.transport = httpx.MockTransport(self._handle_in_process)

    def __repr__(self) -> str:
        return (
            f"<FakeIAM requests={self.requests} issued={len(self.issued)} down={self.down} "
            f"refusing={self.refusing} pending_faults={len(self._faults)}>"
        )

    # ------------------------------------------------------------------ serving

    def serve(self, *, host: str = "127.0.0.1", port: int = 0) -> AbstractAsyncContextManager[ServerAddress]:
        """Serve this emulator over real HTTP on loopback, in the current event loop.

        Use as ``async with fake.serve() as address:`` and point a manager at ``address.url``.
        """
        return serve(self.handle, host=host, port=port, switch=self._switch)

    def serve_in_thread(self, *, host: str = "127.0.0.1", port: int = 0) -> AbstractContextManager[ServerAddress]:
        """Serve over real HTTP on loopback from a thread of its own (for synchronous clients)."""
        return serve_in_thread(self.handle, host=host, port=port, switch=self._switch)

    @property
    def refusing(self) -> bool:
        """While true, connections are refused, as when IAM's port is closed.

        Setting it closes the listening port of every server started by :meth:`serve` or
        :meth:`serve_in_thread` (the operating system then answers new connections with
        ``ECONNREFUSED``) and setting it back reopens the same port. In process
        (:attr:`transport`) requests raise ``httpx.ConnectError`` instead. Connections already
        open stay open, but a request that arrives on one is cut off with a reset (and counted in
        :attr:`requests`); refused connections never reach the emulator and are not counted.
        """
        return not self._switch.listening

    @refusing.setter
    def refusing(self, value: bool) -> None:
        self._switch.set(not value)

    # ------------------------------------------------------------------ scripting

    def fail_next(self, count: int = 1, fault: Fault | None = None, **kwargs: Any) -> None:
        """Answer the next ``count`` requests with ``fault`` (or ``Fault(**kwargs)``).

        Faults queue up in order: ``fail_next(2, Fault.error(503)); fail_next(1, Fault.hang())``
        fails two requests, hangs the third, and answers normally from the fourth on. A queued
        fault wins over :attr:`down`.
        """
        fault = fault if fault is not None else Fault(**kwargs)
        self._faults.extend([fault] * count)

    @property
    def pending_faults(self) -> int:
        """Faults queued by :meth:`fail_next` and not yet used."""
        return len(self._faults)

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        self._faults.clear()

    # ------------------------------------------------------------------ checking

    def is_valid(self, access_token: str, now: float | None = None) -> bool:
        """Whether ``access_token`` was issued here and has not expired (a service's check).

        Args:
            access_token: The bearer token a service received.
            now: The Unix time to judge at; by default ``wall_clock()``.
        """
        expires_at = self._expiry.get(access_token)
        if expires_at is None:
            return False
        return expires_at > (self.wall_clock() if now is None else now)

    def expires_at(self, access_token: str) -> float | None:
        """When a token issued here expires (on ``wall_clock``), or ``None`` if unknown."""
        return self._expiry.get(access_token)

    def secrets(self) -> list[str]:
        """Every secret this emulator knows or gave out, for leak audits.

        The accepted API keys, the client secret and its Basic credentials, and every access and
        refresh token issued (with the payload and signature parts of each JWT on their own).
        """
        found: list[str] = list(self.api_keys or ())
        if self.client_id is not None and self.client_secret is not None:
            found.append(self.client_secret)
            found.append(base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode("ascii"))
        for token in self.issued:
            found.append(token)
            found.extend(token.split(".")[1:])
        found.extend(self.refresh_tokens)
        return found

    # ------------------------------------------------------------------ answering

    async def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer one request as IAM would, or as the next queued fault says.

        Raises:
            DropConnection: For a :meth:`Fault.reset`, and for a request that arrives on an open
                connection while :attr:`refusing`. The server turns it into a cut connection;
                :attr:`transport` into ``httpx.ReadError``.
        """
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.refusing:  # a connection opened before the port closed
                raise DropConnection(reset=True)
            fault = self._faults.popleft() if self._faults else None
            delay = self.latency + (fault.delay if fault else 0.0)
            if delay:
                await anyio.sleep(delay)
            if fault is not None:
                if fault.connection == "hang":
                    await anyio.sleep_forever()
                if fault.connection == "reset":
                    raise DropConnection(fault.partial, reset=True)
                if fault.fields is not None:
                    return self._answer(request, fault)
                return self._fault_response(fault)
            if self.down:
                return self._error(self.down_status, "BXNIM0001E", "IAM is down (simulated outage)")
            return self._answer(request, None)
        finally:
            self.in_flight -= 1

    async def _handle_in_process(self, request: httpx.Request) -> httpx.Response:
        if self.refusing:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        try:
            return await self.handle(request)
        except DropConnection:
            raise httpx.ReadError("[Errno 104] Connection reset by peer", request=request) from None

    def _transaction_headers(self) -> dict[str, str]:
        return {"Transaction-Id": f"fake-{next(self._request_ids)}"}

    def _error(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> httpx.Response:
        tid = self._transaction_headers()
        body = {
            "errorCode": code,
            "errorMessage": message,
            "context": {"requestId": tid["Transaction-Id"], "requestType": "incoming.Identity_Token"},
        }
        return httpx.Response(status, json=body, headers={**tid, **(headers or {})})

    def _fault_response(self, fault: Fault) -> httpx.Response:
        if fault.body is not None:
            return httpx.Response(
                fault.status, content=fault.body, headers={**self._transaction_headers(), **fault.headers}
            )
        message = fault.error_message or f"simulated {fault.status}"
        return self._error(fault.status, fault.error_code, message, fault.headers)

    def _answer(self, request: httpx.Request, fault: Fault | None) -> httpx.Response:
        if request.method != "POST" or request.url.path != "/identity/token":
            return self._error(404, "BXNIM0404E", "Not found")
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return self._error(400, "BXNIM0109E", "Content type not supported")
        form = {k: v[0] for k, v in parse_qs(request.content.decode("utf-8", "replace")).items()}
        if form.get("grant_type") != APIKEY_GRANT:
            return self._error(400, "BXNIM0308E", "Grant type not supported")
        key = form.get("apikey", "")
        if not key.strip() or (self.api_keys is not None and key not in self.api_keys):
            return self._error(400, "BXNIM0415E", "Provided API key could not be found.")
        with_refresh = False
        if self.client_id is not None:
            if not self._basic_ok(request.headers.get("authorization")):
                return self._error(401, "BXNIM0310E", "Client credentials are invalid")
            with_refresh = True
        return self._issue(form.get("scope"), with_refresh, fault)

    def _basic_ok(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            pair = base64.b64decode(header[6:], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        return pair == f"{self.client_id}:{self.client_secret}"

    def _issue(self, scope: str | None, with_refresh: bool, fault: Fault | None) -> httpx.Response:
        exact_now = self.wall_clock()
        skew = fault.skew if fault is not None else 0.0
        now = int(exact_now + skew)  # IAM's claims are whole seconds, on IAM's clock
        lifetime = self.lifetime
        serial = next(self._serial)
        claims = {
            "iam_id": "IBMid-fake0001",
            "id": "IBMid-fake0001",
            "sub": "fake@example.com",
            "iat": now,
            "exp": now + int(lifetime),
            "iss": "https://iam.cloud.ibm.com/identity",
            "grant_type": APIKEY_GRANT,
            "scope": scope or "ibm openid",
            "client_id": "default",
            "account": {"bss": "fakeaccount0001", "valid": True},
            "jti": str(uuid.uuid4()),
        }
        header = {"alg": "RS256", "typ": "JWT", "kid": "fake"}
        access_token = ".".join(
            [
                _b64(json.dumps(header).encode()),
                _b64(json.dumps(claims).encode()),
                _b64(f"fake-signature-{serial}-{uuid.uuid4().hex}".encode()),
            ]
        )
        self.issued.append(access_token)
        self._expiry[access_token] = exact_now + lifetime
        refresh_token = "not_supported"
        if with_refresh:
            refresh_token = f"fake-refresh-{serial}-{uuid.uuid4().hex}"
            self.refresh_tokens.append(refresh_token)
        body: dict[str, Any] = {
            "access_token": access_token,
            "refresh_token": refresh_token,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "expiration": now + int(lifetime),
            "scope": scope or "ibm openid",
        }
        for name, value in (fault.fields or {}).items() if fault is not None else ():
            if value is OMIT:
                body.pop(name, None)
            else:
                body[name] = value
        return httpx.Response(200, json=body, headers=self._transaction_headers())
