"""``FakeIAM``: an in-process IAM emulator for demos and tests.

It answers ``POST /identity/token`` the way IAM does (form body, JSON answer, IAM-style error
bodies) and issues JWT-shaped tokens that are not signed by anything. It runs wherever an
``httpx`` transport runs: pass :attr:`FakeIAM.transport` to a client or to ``TokenManager``.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import anyio
import httpx

from ._server import ServerAddress, serve, serve_in_thread

__all__ = ["FakeIAM", "Fault"]

APIKEY_GRANT = "urn:ibm:params:oauth:grant-type:apikey"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class Fault:
    """One scripted answer that replaces the next normal one.

    Attributes:
        status: The HTTP status to answer with.
        body: The raw body; when ``None`` an IAM-style JSON error body is made for error statuses.
        headers: Extra response headers (``Retry-After``, say).
        error_code: The IAM error code for the generated body.
        delay: Extra seconds to wait before answering.
    """

    status: int = 503
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    error_code: str = "BXNIM0001E"
    delay: float = 0.0


class FakeIAM:
    """An IAM token endpoint emulator, in process.

    Args:
        api_keys: The keys it accepts; ``None`` accepts any non-blank key.
        lifetime: ``expires_in`` of issued tokens, in seconds.
        latency: Seconds every answer takes (slept on the event loop clock).
        client_id: With ``client_secret``, the Basic credentials it expects; then it also issues
            refresh tokens.
        client_secret: See ``client_id``.
        wall_clock: The Unix time used for ``iat``, ``exp`` and ``expiration``.

    Attributes:
        requests: Token requests received so far (every one, faults included).
        issued: Access tokens issued so far, oldest first.
        latency: Settable at any time.
        down: While true, every request gets ``down_status`` (an outage).
        down_status: The status served while ``down``.
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
        self._expiry: dict[str, float] = {}
        self.down = False
        self.down_status = 503
        self.in_flight = 0
        self.max_in_flight = 0
        self._faults: deque[Fault] = deque()
        self._serial = itertools.count(1)
        self.transport = httpx.MockTransport(self.handle)

    def __repr__(self) -> str:
        return f"<FakeIAM requests={self.requests} issued={len(self.issued)} down={self.down}>"

    def serve(self, *, host: str = "127.0.0.1", port: int = 0) -> AbstractAsyncContextManager[ServerAddress]:
        """Serve this emulator over real HTTP on loopback, in the current event loop.

        Use as ``async with fake.serve() as address:`` and point a manager at ``address.url``.
        """
        return serve(self.handle, host=host, port=port)

    def serve_in_thread(self, *, host: str = "127.0.0.1", port: int = 0) -> AbstractContextManager[ServerAddress]:
        """Serve over real HTTP on loopback from a thread of its own (for synchronous clients)."""
        return serve_in_thread(self.handle, host=host, port=port)

    def fail_next(self, count: int = 1, fault: Fault | None = None, **kwargs: object) -> None:
        """Answer the next ``count`` requests with ``fault`` (or ``Fault(**kwargs)``)."""
        fault = fault if fault is not None else Fault(**kwargs)  # type: ignore[arg-type]
        self._faults.extend([fault] * count)

    def is_valid(self, access_token: str, now: float | None = None) -> bool:
        """Whether ``access_token`` was issued here and has not expired (a service's check)."""
        expires_at = self._expiry.get(access_token)
        if expires_at is None:
            return False
        return expires_at > (self.wall_clock() if now is None else now)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer one request as IAM would."""
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            fault = self._faults.popleft() if self._faults else None
            delay = self.latency + (fault.delay if fault else 0.0)
            if delay:
                await anyio.sleep(delay)
            if fault is not None:
                return self._fault_response(fault)
            if self.down:
                return self._error(self.down_status, "BXNIM0001E", "IAM is down (simulated outage)")
            return self._answer(request)
        finally:
            self.in_flight -= 1

    # ------------------------------------------------------------------ answers

    def _transaction_headers(self) -> dict[str, str]:
        return {"Transaction-Id": f"fake-{next(self._serial)}"}

    def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> httpx.Response:
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
        return self._error(fault.status, fault.error_code, f"simulated {fault.status}", fault.headers)

    def _answer(self, request: httpx.Request) -> httpx.Response:
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
        return self._issue(form.get("scope"), with_refresh)

    def _basic_ok(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            pair = base64.b64decode(header[6:], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        return pair == f"{self.client_id}:{self.client_secret}"

    def _issue(self, scope: str | None, with_refresh: bool) -> httpx.Response:
        exact_now = self.wall_clock()
        now = int(exact_now)  # IAM's claims are whole seconds
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
                _b64(f"fake-signature-{serial}".encode()),
            ]
        )
        self.issued.append(access_token)
        self._expiry[access_token] = exact_now + lifetime
        body = {
            "access_token": access_token,
            "refresh_token": f"fake-refresh-{serial}" if with_refresh else "not_supported",
            "token_type": "Bearer",
            "expires_in": lifetime,
            "expiration": now + int(lifetime),
            "scope": scope or "ibm openid",
        }
        return httpx.Response(200, json=body, headers=self._transaction_headers())
