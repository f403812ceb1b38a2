"""``FakeIAM``: an IAM emulator with scriptable faults, for demos and tests.

It answers ``POST /identity/token`` the way IAM does for the API-key, compute-resource
(``cr-token``) and ``assume`` grants (form body, JSON answer, IAM-style error bodies), and the VPC
instance metadata service's two token calls on the same server. It issues JWT-shaped tokens that
are not signed by anything. It runs in process as an ``httpx`` transport
(:attr:`FakeIAM.transport`) or over real HTTP on loopback (:meth:`FakeIAM.serve`,
:meth:`FakeIAM.serve_in_thread`).

Misbehaviour is scripted per request with :meth:`FakeIAM.fail_next` and a :class:`Fault`, or
switched on for a while with :attr:`FakeIAM.down` (every answer an error) and
:attr:`FakeIAM.refusing` (the port is closed); all of it applies to every endpoint alike.

What each grant checks lives in ``_grants``, the metadata service in ``_vpc``, the faults in
``_faults``; this module holds the emulator's state, serving, scripting and issuing.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import MappingProxyType
from typing import Any, Final

import anyio
import httpx

from . import _grants, _vpc
from ._faults import OMIT, Fault
from ._grants import GRANT_KEYS, TOKEN_PATH, Refusal, Subject, profile_crn, read_form
from ._server import DropConnection, ListenSwitch, ServerAddress, serve, serve_in_thread
from ._vpc import IAM_TOKEN_PATH, IDENTITY_TOKEN_PATH, IdentityGrant, is_metadata_path

__all__ = ["DEFAULT_PROFILES", "OMIT", "FakeIAM", "Fault"]

#: The trusted profiles a :class:`FakeIAM` knows by default: id to name.
DEFAULT_PROFILES: Final[Mapping[str, str]] = MappingProxyType({"Profile-test": "test-profile"})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _jwt(claims: Mapping[str, Any], *, kid: str, signature: str) -> str:
    header = {"alg": "RS256", "typ": "JWT", "kid": kid}
    return ".".join([_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()), _b64(signature.encode())])


def _accepted(values: Iterable[str] | None, what: str) -> tuple[frozenset[str] | None, tuple[str, ...]]:
    """The accepted set and the order it was given in (``None``: anything non-blank)."""
    if values is None:
        return None, ()
    if isinstance(values, str):
        raise TypeError(f"{what} takes a list of strings, not one string")
    order = tuple(dict.fromkeys(values))
    return frozenset(order), order


def _first_accepted(accepted: frozenset[str] | None, order: tuple[str, ...], any_value: str, what: str) -> str:
    if accepted is None:
        return any_value
    for value in order:
        if value in accepted:
            return value
    if accepted:  # replaced after construction: any one, but always the same one
        return min(accepted)
    raise LookupError(f"this FakeIAM accepts no {what}")


def _endpoint(request: httpx.Request, form: Mapping[str, str]) -> str:
    """The key a request is counted under in :attr:`FakeIAM.requests_by_grant`."""
    path, method = request.url.path, request.method
    if method == "POST" and path == TOKEN_PATH:
        return GRANT_KEYS.get(form.get("grant_type", ""), "other")
    if method == "PUT" and path == IDENTITY_TOKEN_PATH:
        return "vpc-identity"
    if method == "POST" and path == IAM_TOKEN_PATH:
        return "vpc-iam"
    return "other"


class FakeIAM:
    """An IAM token endpoint and VPC metadata service emulator, in process or on loopback, with scriptable faults.

    ``FakeIAM`` is a test double, not a model of IAM's every rule. On ``POST /identity/token`` it
    answers the API-key grant (checking the key against ``api_keys``), the compute-resource grant
    (``cr_token`` against ``cr_tokens``, the profile against ``profiles``) and the assume grant (an
    access token it issued and that is still valid, and a profile), and checks the Basic client
    credentials when configured. On ``PUT /instance_identity/v1/token`` and ``POST
    /instance_identity/v1/iam_token`` it plays the VPC instance metadata service. Every trusted
    profile trusts every compute resource and every identity; profiles live in one account
    (``account_id``). It does not rate-limit by itself, accept refresh tokens, speak TLS or verify
    anything about tokens except through :meth:`is_valid` and :meth:`is_valid_identity_token`.

    Example::

        fake = FakeIAM(lifetime=60)
        fake.fail_next(2, Fault.error(503))  # the next two answers fail, whatever the endpoint
        fake.fail_next(1, Fault.error(429, retry_after=3))
        fake.fail_next(1, Fault.reset())  # then the connection is cut mid-answer
        async with fake.serve() as address:  # real TCP on 127.0.0.1
            tm = aioiam.TokenManager(fake.api_key, url=fake.url)

    Args:
        api_keys: The keys it accepts; ``None`` accepts any non-blank key.
        lifetime: ``expires_in`` of issued IAM tokens, in seconds (settable at any time).
        latency: Seconds every answer takes (slept on the event loop clock).
        client_id: With ``client_secret``, the Basic credentials every grant on
            ``/identity/token`` must carry; then it also issues refresh tokens.
        client_secret: See ``client_id``.
        wall_clock: The Unix time used for ``iat``, ``exp``, ``expiration``, the metadata
            service's times, and :meth:`is_valid`.
        cr_tokens: The compute-resource tokens the ``cr-token`` grant accepts; ``None`` accepts
            any non-blank token.
        profiles: The trusted profiles, id to name.
        account_id: The account the trusted profiles belong to: the ``account.bss`` of their
            tokens, the ``account`` the assume grant must name, and the account in their CRNs
            (:meth:`profile_crn`). API-key tokens keep their own account, ``fakeaccount0001``.
        vpc_default_profile: The profile id the metadata service uses when a request names none;
            ``None``: no profile is linked to the instance, and such a request gets a 400.

    Attributes:
        requests: Requests that reached the emulator so far, faults included. Connections
            refused while :attr:`refusing` never reach it and are not counted.
        requests_by_grant: The same requests by endpoint: ``"apikey"``, ``"cr-token"``,
            ``"assume"`` (the grants of ``POST /identity/token``), ``"vpc-identity"`` (the
            metadata service's PUT), ``"vpc-iam"`` (its POST), and ``"other"`` (any other grant
            type, path or method). The counts always add up to :attr:`requests`.
        issued: IAM access tokens issued so far by any grant, oldest first (including those
            issued in a broken answer by :meth:`Fault.token`).
        identity_tokens: Instance identity tokens issued by the metadata service, oldest first.
        refresh_tokens: Refresh tokens issued so far, oldest first.
        api_keys: As given (a frozenset, or ``None``); settable at any time, as are the four below.
        cr_tokens: As given (a frozenset, or ``None``).
        profiles: As given (a dict of its own).
        account_id: As given.
        vpc_default_profile: As given.
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
        cr_tokens: Iterable[str] | None = ("test-cr-token",),
        profiles: Mapping[str, str] = DEFAULT_PROFILES,
        account_id: str = "test-account",
        vpc_default_profile: str | None = "Profile-test",
    ) -> None:
        self.api_keys, self._api_key_order = _accepted(api_keys, "api_keys")
        self.cr_tokens, self._cr_token_order = _accepted(cr_tokens, "cr_tokens")
        self.profiles: dict[str, str] = dict(profiles)
        self.account_id = account_id
        self.vpc_default_profile = vpc_default_profile
        self.lifetime = lifetime
        self.latency = latency
        self.client_id = client_id
        self.client_secret = client_secret
        self.wall_clock = wall_clock
        self.requests = 0
        self.requests_by_grant: Counter[str] = Counter()
        self.issued: list[str] = []
        self.identity_tokens: list[str] = []
        self.refresh_tokens: list[str] = []
        self._expiry: dict[str, float] = {}
        self._grant_of: dict[str, str] = {}
        self._identity_expiry: dict[str, float] = {}
        self.down = False
        self.down_status = 503
        self.in_flight = 0
        self.max_in_flight = 0
        self._faults: deque[Fault] = deque()
        self._request_ids = itertools.count(1)  # Transaction-Id / requestId of every answer
        self._serial = itertools.count(1)  # issued IAM tokens only, so errors leave no gaps
        self._identity_serial = itertools.count(1)
        self._switch = ListenSwitch()
        self._addresses: list[ServerAddress] = []
        self.transport = httpx.MockTransport(self._handle_in_process)

    def __repr__(self) -> str:
        return (
            f"<FakeIAM requests={self.requests} issued={len(self.issued)} down={self.down} "
            f"refusing={self.refusing} pending_faults={len(self._faults)}>"
        )

    # ------------------------------------------------------------------ what it accepts

    @property
    def api_key(self) -> str:
        """An API key it accepts: the first of ``api_keys`` in the order given.

        With ``api_keys=None`` (any non-blank key) it is ``"test-api-key"``. If ``api_keys`` was
        replaced after construction by keys not given then, it is the smallest of them.

        Raises:
            LookupError: It accepts no key at all (``api_keys=[]``).
        """
        return _first_accepted(self.api_keys, self._api_key_order, "test-api-key", "API key")

    @property
    def cr_token(self) -> str:
        """A compute-resource token it accepts, chosen as :attr:`api_key` is (``"test-cr-token"`` for ``None``).

        Raises:
            LookupError: It accepts no compute-resource token at all (``cr_tokens=[]``).
        """
        return _first_accepted(self.cr_tokens, self._cr_token_order, "test-cr-token", "compute-resource token")

    def profile_crn(self, profile_id: str) -> str:
        """The CRN of a trusted profile: ``crn:v1:bluemix:public:iam-identity::a/{account_id}::profile:{profile_id}``.

        The CRN of a profile in :attr:`profiles` is accepted wherever a CRN is (``profile_crn``
        of the assume grant, ``trusted_profile.crn`` of the metadata service). It does not check
        that the profile exists.
        """
        return profile_crn(self.account_id, profile_id)

    # ------------------------------------------------------------------ serving

    def serve(self, *, host: str = "127.0.0.1", port: int = 0) -> AbstractAsyncContextManager[ServerAddress]:
        """Serve this emulator over real HTTP on loopback, in the current event loop.

        Use as ``async with fake.serve() as address:`` and point a manager at ``address.url``
        (also :attr:`url` while serving). IAM's token endpoint and the metadata service share
        the server.
        """
        return self._serving_async(host, port)

    def serve_in_thread(self, *, host: str = "127.0.0.1", port: int = 0) -> AbstractContextManager[ServerAddress]:
        """Serve over real HTTP on loopback from a thread of its own (for synchronous code and fixtures).

        The server runs an asyncio loop on a daemon thread; the emulator's faults, switches and
        counts can be used from the calling thread. ``latency`` and fault delays run on that
        thread's real clock.
        """
        return self._serving_in_thread(host, port)

    @contextlib.asynccontextmanager
    async def _serving_async(self, host: str, port: int) -> AsyncIterator[ServerAddress]:
        async with serve(self.handle, host=host, port=port, switch=self._switch) as address:
            with self._listed(address):
                yield address

    @contextlib.contextmanager
    def _serving_in_thread(self, host: str, port: int) -> Iterator[ServerAddress]:
        with serve_in_thread(self.handle, host=host, port=port, switch=self._switch) as address, self._listed(address):
            yield address

    @contextlib.contextmanager
    def _listed(self, address: ServerAddress) -> Iterator[None]:
        self._addresses.append(address)
        try:
            yield
        finally:
            self._addresses.remove(address)

    @property
    def address(self) -> ServerAddress | None:
        """Where it is being served (the oldest server still running), or ``None`` when it is not."""
        return self._addresses[0] if self._addresses else None

    @property
    def url(self) -> str:
        """The base URL it is served at, e.g. ``http://127.0.0.1:8123``.

        Point a :class:`~aioiam.TokenManager` at it (``url=fake.url``), and the VPC metadata
        source too: the metadata service answers on the same server.

        Raises:
            RuntimeError: It is not being served (in process, use :attr:`transport` instead).
        """
        address = self.address
        if address is None:
            raise RuntimeError(
                "this FakeIAM is not being served: use `async with fake.serve():` or "
                "`with fake.serve_in_thread():` (or the fake_iam fixture), or fake.transport in process"
            )
        return address.url

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
        fault wins over :attr:`down`. The next requests are the next ones on any endpoint.
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
        """Whether ``access_token`` is an IAM token issued here (by any grant) that has not expired (a service's check).

        Args:
            access_token: The bearer token a service received.
            now: The Unix time to judge at; by default ``wall_clock()``.
        """
        expires_at = self._expiry.get(access_token)
        if expires_at is None:
            return False
        return expires_at > (self.wall_clock() if now is None else now)

    def is_valid_identity_token(self, identity_token: str, now: float | None = None) -> bool:
        """Whether ``identity_token`` is an instance identity token issued here that has not expired."""
        expires_at = self._identity_expiry.get(identity_token)
        if expires_at is None:
            return False
        return expires_at > (self.wall_clock() if now is None else now)

    def expires_at(self, access_token: str) -> float | None:
        """When an IAM token issued here expires (on ``wall_clock``), or ``None`` if unknown."""
        return self._expiry.get(access_token)

    def grant_of(self, access_token: str) -> str | None:
        """Which endpoint issued an IAM token (a :attr:`requests_by_grant` key), or ``None`` if not issued here."""
        return self._grant_of.get(access_token)

    def secrets(self) -> list[str]:
        """Every secret this emulator knows or gave out, for leak audits.

        The accepted API keys and compute-resource tokens, the client secret and its Basic
        credentials, and every access, refresh and instance identity token issued (with the
        payload and signature parts of each JWT on their own).
        """
        found: list[str] = [*(self.api_keys or ()), *(self.cr_tokens or ())]
        if self.client_id is not None and self.client_secret is not None:
            found.append(self.client_secret)
            found.append(base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode("ascii"))
        for token in [*self.issued, *self.identity_tokens]:
            found.append(token)
            found.extend(token.split(".")[1:])
        found.extend(self.refresh_tokens)
        return found

    # ------------------------------------------------------------------ answering

    async def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer one request as IAM or the metadata service would, or as the next queued fault says.

        Raises:
            DropConnection: For a :meth:`Fault.reset`, and for a request that arrives on an open
                connection while :attr:`refusing`. The server turns it into a cut connection;
                :attr:`transport` into ``httpx.ReadError``.
        """
        form = read_form(request) if request.url.path == TOKEN_PATH else {}
        self.requests += 1
        self.requests_by_grant[_endpoint(request, form)] += 1
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
                    return self._answer(request, form, fault)
                return self._fault_response(request, fault)
            if self.down:
                outage = _vpc.outage if is_metadata_path(request.url.path) else _grants.outage
                return self._refuse(request, outage(self.down_status))
            return self._answer(request, form, None)
        finally:
            self.in_flight -= 1

    async def _handle_in_process(self, request: httpx.Request) -> httpx.Response:
        if self.refusing:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        try:
            return await self.handle(request)
        except DropConnection:
            raise httpx.ReadError("[Errno 104] Connection reset by peer", request=request) from None

    def _id_headers(self, request: httpx.Request) -> dict[str, str]:
        """A fresh request id, in IAM's header (``Transaction-Id``) or the metadata service's (``X-Request-Id``)."""
        name = "X-Request-Id" if is_metadata_path(request.url.path) else "Transaction-Id"
        return {name: f"fake-{next(self._request_ids)}"}

    def _refuse(
        self, request: httpx.Request, refusal: Refusal, headers: Mapping[str, str] | None = None
    ) -> httpx.Response:
        ids = self._id_headers(request)
        if is_metadata_path(request.url.path):
            body = _vpc.error_body(refusal, ids["X-Request-Id"])
        else:
            body = _grants.error_body(refusal, ids["Transaction-Id"])
        return httpx.Response(refusal.status, json=body, headers={**ids, **(headers or {})})

    def _fault_response(self, request: httpx.Request, fault: Fault) -> httpx.Response:
        if fault.body is not None:
            headers = {**self._id_headers(request), **fault.headers}
            return httpx.Response(fault.status, content=fault.body, headers=headers)
        message = fault.error_message or f"simulated {fault.status}"
        return self._refuse(request, Refusal(fault.status, fault.error_code, message), fault.headers)

    def _answer(self, request: httpx.Request, form: Mapping[str, str], fault: Fault | None) -> httpx.Response:
        if is_metadata_path(request.url.path):
            outcome = _vpc.decide(self, request)
        else:
            outcome = _grants.decide(self, request, form)
        if isinstance(outcome, Refusal):
            return self._refuse(request, outcome)
        skew = fault.skew if fault is not None else 0.0
        if isinstance(outcome, IdentityGrant):
            body = self._issue_identity_token(outcome.expires_in, skew)
        else:
            body = self._issue(outcome, skew)
        for name, value in (fault.fields or {}).items() if fault is not None else ():
            if value is OMIT:
                body.pop(name, None)
            else:
                body[name] = value
        return httpx.Response(200, json=body, headers=self._id_headers(request))

    def _issue(self, subject: Subject, skew: float) -> dict[str, Any]:
        """Issue an IAM token to ``subject``; the answer's JSON body."""
        exact_now = self.wall_clock()
        now = int(exact_now + skew)  # IAM's claims are whole seconds, on IAM's clock
        lifetime = self.lifetime
        serial = next(self._serial)
        scope = subject.scope or "ibm openid"
        claims = {
            **subject.identity,
            "iat": now,
            "exp": now + int(lifetime),
            "iss": "https://iam.cloud.ibm.com/identity",
            "grant_type": subject.grant_type,
            "scope": scope,
            "client_id": "default",
            "account": {"bss": subject.account_id, "valid": True},
            "jti": str(uuid.uuid4()),
        }
        access_token = _jwt(claims, kid="fake", signature=f"fake-signature-{serial}-{uuid.uuid4().hex}")
        self.issued.append(access_token)
        self._expiry[access_token] = exact_now + lifetime
        self._grant_of[access_token] = subject.grant
        if subject.grant == "vpc-iam":
            return _vpc.iam_token_answer(access_token, now, lifetime)
        refresh_token = "not_supported"
        if subject.with_refresh:
            refresh_token = f"fake-refresh-{serial}-{uuid.uuid4().hex}"
            self.refresh_tokens.append(refresh_token)
        return {
            "access_token": access_token,
            "refresh_token": refresh_token,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "expiration": now + int(lifetime),
            "scope": scope,
        }

    def _issue_identity_token(self, expires_in: int, skew: float) -> dict[str, Any]:
        """Issue an instance identity token; the metadata service's JSON answer."""
        exact_now = self.wall_clock()
        created = exact_now + skew
        serial = next(self._identity_serial)
        claims = {
            "sub": f"crn:v1:bluemix:public:is:us-south-1:a/{self.account_id}::instance:fake-instance-0001",
            "account_id": self.account_id,
            "iat": int(created),
            "exp": int(created) + expires_in,
            "iss": "https://api.metadata.cloud.ibm.com",
            "jti": str(uuid.uuid4()),
        }
        token = _jwt(claims, kid="fake-vpc", signature=f"fake-identity-{serial}-{uuid.uuid4().hex}")
        self.identity_tokens.append(token)
        self._identity_expiry[token] = exact_now + expires_in
        return _vpc.identity_token_answer(token, created, expires_in)
