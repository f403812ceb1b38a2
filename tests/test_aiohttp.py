"""IAMMiddleware: against a real aiohttp web server on loopback, and unit-level with a fake handler.

aiohttp runs on asyncio only (its client session, connector and web server are built on asyncio's
transports; there is no trio support), so unlike the rest of the suite these tests are not
parametrised over trio: ``anyio_backend`` is overridden to plain asyncio, on the real clock, since
they talk to sockets. The manager gets its tokens from ``FakeIAM`` in process; only the service is
served over TCP. Tests assert outcomes and counts, never times.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import aiohttp
import anyio
import httpx
import pytest
from aiohttp import ClientRequest, ClientResponse, web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer
from yarl import URL

import aioiam.aiohttp
from aioiam import DEFAULT_ALLOWED_HOSTS, IAMAuth
from aioiam.aiohttp import IAMMiddleware
from aioiam.testing import FakeIAM
from tests.helpers import make_manager

pytestmark = [pytest.mark.anyio, pytest.mark.real_time]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: aiohttp has no trio support (see the module docstring)."""
    return "asyncio"


class Service:
    """A service that accepts tokens FakeIAM issued, except those in ``reject``.

    Records the ``Authorization`` header of every request (and the body of those to ``/r``). With
    ``hold_401s=n``, no 401 is answered before ``n`` requests have been refused, so that ``n``
    concurrent requests are all sent with the refused token before any of them sees its 401.
    """

    def __init__(self, fake: FakeIAM, *, reject: Collection[str] = (), hold_401s: int = 0) -> None:
        self.fake = fake
        self.reject = reject
        self.hold_401s = hold_401s
        self.refused = 0
        self.all_refused = asyncio.Event()
        self.seen: list[str | None] = []
        self.bodies: list[bytes] = []
        self.redirect_to = ""

    async def handle(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization")
        self.seen.append(header)
        self.bodies.append(await request.read())
        token = (header or "").removeprefix("Bearer ")
        if token in self.fake.issued and token not in self.reject:
            return web.json_response({"ok": True})
        self.refused += 1
        if self.refused >= self.hold_401s:
            self.all_refused.set()
        with anyio.fail_after(10):  # a safety net only: the test would fail on the counts
            await self.all_refused.wait()
        return web.json_response({"error": "unauthorized"}, status=401)

    async def redirect(self, request: web.Request) -> web.Response:
        self.seen.append(request.headers.get("Authorization"))
        raise web.HTTPFound(self.redirect_to)


@asynccontextmanager
async def serve(service: Service) -> AsyncIterator[URL]:
    """Serve ``service`` on 127.0.0.1 (a free port); yields the base URL."""
    app = web.Application()
    app.router.add_route("*", "/r", service.handle)
    app.router.add_get("/redirect", service.redirect)
    async with TestServer(app, host="127.0.0.1") as server:
        yield server.make_url("/")


class PinnedResolver(AbstractResolver):
    """Resolves every name to 127.0.0.1, so a loopback server can be reached by any name."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        pass


def session(middleware: IAMMiddleware, **kwargs: Any) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(middlewares=[middleware], **kwargs)


async def test_token_is_sent_to_loopback() -> None:
    fake = FakeIAM()
    service = Service(fake)
    async with make_manager(fake) as tm, serve(service) as base, session(IAMMiddleware(tm)) as client:
        for _ in range(3):
            async with client.get(base / "r") as response:
                assert response.status == 200
    assert service.seen == [f"Bearer {fake.issued[0]}"] * 3
    assert fake.requests == 1


async def test_token_is_not_sent_to_a_disallowed_host_and_it_is_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeIAM()
    service = Service(fake)
    middleware = IAMMiddleware(make_manager(fake), allow_loopback=False)
    async with serve(service) as base, session(middleware) as client:
        with caplog.at_level(logging.WARNING, logger="aioiam"):
            for _ in range(3):
                async with client.get(base / "r") as response:
                    assert response.status == 401
            async with client.get(base / "r", headers={"Authorization": "Basic theirs"}) as response:
                assert response.status == 401
    assert service.seen == [None, None, None, "Basic theirs"]  # untouched: their own header is kept
    assert [r.getMessage() for r in caplog.records] == [
        "aioiam: not sending the IAM token to http://127.0.0.1 (plain http); the request goes out without it"
    ]
    assert fake.requests == 0  # no token is even fetched for a refused host


async def test_a_redirect_to_another_host_does_not_carry_the_token(caplog: pytest.LogCaptureFixture) -> None:
    """Each hop is judged by its own host: a loopback service redirecting to a name gets no token there."""
    fake = FakeIAM()
    service = Service(fake)
    async with (
        make_manager(fake) as tm,
        serve(service) as base,
        session(IAMMiddleware(tm), connector=aiohttp.TCPConnector(resolver=PinnedResolver())) as client,
    ):
        service.redirect_to = str(base.with_host("crawled.example") / "r")
        with caplog.at_level(logging.WARNING, logger="aioiam"):
            async with client.get(base / "redirect") as response:
                assert response.status == 401
                assert response.url.host == "crawled.example"
                assert len(response.history) == 1
    assert service.seen == [f"Bearer {fake.issued[0]}", None]  # loopback hop: token; crawled.example: none
    assert [r.getMessage() for r in caplog.records] == [
        "aioiam: not sending the IAM token to http://crawled.example (plain http); the request goes out without it"
    ]


def unit_request(url: str) -> ClientRequest:
    """A request as aiohttp builds it, to drive the middleware without a session or network."""
    return ClientRequest("GET", URL(url), loop=asyncio.get_running_loop())


async def test_plain_http_to_a_non_loopback_host_never_gets_the_token(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeIAM()
    tm = make_manager(fake)
    sent = cast(ClientResponse, object())
    seen: list[str | None] = []

    async def handler(request: ClientRequest) -> ClientResponse:
        seen.append(request.headers.get("Authorization"))
        return sent

    middleware = IAMMiddleware(tm, allowed_hosts=[*DEFAULT_ALLOWED_HOSTS, "api.example.com"])
    with caplog.at_level(logging.WARNING, logger="aioiam"):
        assert await middleware(unit_request("http://api.example.com/x"), handler) is sent
        assert await middleware(unit_request("http://api.cloud.ibm.com/x"), handler) is sent
    assert seen == [None, None]
    assert fake.requests == 0
    assert [r.getMessage().split()[7] for r in caplog.records] == ["http://api.example.com", "http://api.cloud.ibm.com"]
    await tm.aclose()


class FakeResponse:
    """Just what the middleware reads of a response."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.released = False

    def release(self) -> None:
        self.released = True


async def test_an_allowed_host_over_https_gets_the_token_and_loses_the_header_afterwards() -> None:
    fake = FakeIAM()
    tm = make_manager(fake)
    seen: list[str | None] = []
    first = FakeResponse(401)
    second = FakeResponse(200)

    async def handler(request: ClientRequest) -> ClientResponse:
        seen.append(request.headers.get("Authorization"))
        return cast(ClientResponse, first if len(seen) == 1 else second)

    request = unit_request("https://api.cloud.ibm.com/x")
    assert await IAMMiddleware(tm)(request, handler) is cast(ClientResponse, second)
    assert seen == [f"Bearer {fake.issued[0]}", f"Bearer {fake.issued[1]}"]
    assert first.released
    assert "Authorization" not in request.headers  # so request_info shows no token afterwards
    await tm.aclose()


@pytest.mark.parametrize(
    "url",
    [
        "https://resource-controller.cloud.ibm.com/v2",
        "https://API.CLOUD.IBM.COM./x",
        "https://s3.us-south.cloud-object-storage.appdomain.cloud/b",
        "https://127.0.0.1:8443/x",
        "http://localhost:8080/x",
        "http://[::1]:8080/x",
        "http://app.localhost:8080/x",
        "http://api.cloud.ibm.com/x",
        "https://cloud.ibm.com.evil.example/x",
        "https://evilcloud.ibm.com/x",
        "https://cloud.ibm.com@evil.example/x",
        "https://10.0.0.1/x",
    ],
)
@pytest.mark.parametrize("allow_loopback", [True, False])
def test_middleware_and_iam_auth_judge_every_url_alike(
    url: str, allow_loopback: bool, caplog: pytest.LogCaptureFixture
) -> None:
    tm = make_manager()
    middleware = IAMMiddleware(tm, allow_loopback=allow_loopback)
    auth = IAMAuth(tm, allow_loopback=allow_loopback)
    with caplog.at_level(logging.WARNING, logger="aioiam"):
        assert middleware.may_send_token(URL(url)) is auth.may_send_token(httpx.URL(url))
    assert len(caplog.records) in (0, 2)  # a refused host: one warning from each


async def test_hundred_concurrent_401s_cause_one_refresh_and_one_resend_each() -> None:
    fake = FakeIAM()
    async with make_manager(fake) as tm:
        stale = await tm.get_token()
        service = Service(fake, reject={stale}, hold_401s=100)
        statuses: list[int] = []
        async with serve(service) as base, session(IAMMiddleware(tm)) as client:

            async def call() -> None:
                async with client.get(base / "r") as response:
                    statuses.append(response.status)

            async with anyio.create_task_group() as tg:
                for _ in range(100):
                    tg.start_soon(call)
    assert statuses == [200] * 100
    assert fake.requests == 2  # the first token, and one refresh for all hundred 401s
    assert len(service.seen) == 200  # each request sent once with the stale token, once with the fresh one
    assert service.seen.count(f"Bearer {stale}") == 100
    assert service.seen.count(f"Bearer {fake.issued[1]}") == 100


async def test_a_bytes_body_is_resent_after_a_401() -> None:
    fake = FakeIAM()
    async with make_manager(fake) as tm:
        stale = await tm.get_token()
        service = Service(fake, reject={stale})
        async with (
            serve(service) as base,
            session(IAMMiddleware(tm)) as client,
            client.post(base / "r", data=b"payload") as response,
        ):
            assert response.status == 200
    assert service.seen == [f"Bearer {stale}", f"Bearer {fake.issued[1]}"]
    assert service.bodies == [b"payload", b"payload"]


async def test_a_second_401_is_returned_not_retried_again() -> None:
    fake = FakeIAM()
    async with make_manager(fake) as tm:
        service = Service(fake, reject=fake.issued)  # the live list: every token, even the next one
        async with (
            serve(service) as base,
            session(IAMMiddleware(tm)) as client,
            client.get(base / "r") as response,
        ):
            assert response.status == 401
    assert len(service.seen) == 2
    assert fake.requests == 2


async def test_an_async_generator_body_is_not_resent() -> None:
    fake = FakeIAM()
    async with make_manager(fake) as tm:
        stale = await tm.get_token()
        service = Service(fake, reject={stale})

        async def body() -> AsyncIterator[bytes]:
            yield b"chunk"

        async with (
            serve(service) as base,
            session(IAMMiddleware(tm)) as client,
            client.post(base / "r", data=body()) as response,
        ):
            assert response.status == 401
        assert tm.token is not None
        assert tm.token.access_token == stale  # not dropped either: it was not retried
    assert service.seen == [f"Bearer {stale}"]
    assert service.bodies == [b"chunk"]
    assert fake.requests == 1


async def test_no_token_in_logs_reprs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeIAM()
    produced: list[str] = []
    with caplog.at_level(logging.DEBUG):  # every logger: aioiam's and aiohttp's
        async with make_manager(fake) as tm:
            # Every token is refused: 401, refresh, 401; then, within the drop cooldown, 401 as is.
            service = Service(fake, reject=fake.issued)
            middleware = IAMMiddleware(tm)
            async with serve(service) as base, session(middleware) as client:
                async with client.get(base / "r") as response:
                    assert response.status == 401
                    produced += [repr(response), repr(response.request_info), str(response.request_info)]
                with pytest.raises(aiohttp.ClientResponseError) as raised:
                    async with client.get(base / "r", raise_for_status=True):
                        pass
                produced += [repr(raised.value), str(raised.value)]
                assert not middleware.may_send_token(URL("https://crawled.example/"))  # a warning, too
            produced += [repr(middleware), repr(tm)]
    produced += [record.getMessage() for record in caplog.records]
    assert any("token dropped after a 401" in line for line in produced), "the audit saw no refresh"
    assert any("crawled.example" in line for line in produced)
    assert len(fake.issued) == 2
    assert len(service.seen) == 3
    for line in produced:
        for token in fake.issued:
            assert token not in line


def test_import_aioiam_does_not_import_aiohttp() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", "import sys, aioiam; print(aioiam.__file__); print('aiohttp' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
        cwd=ROOT,
    )
    where, imported = result.stdout.split()
    assert Path(where).is_relative_to(ROOT)  # this checkout, not an installed copy
    assert imported == "False"


def test_without_aiohttp_the_import_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # what an environment without aiohttp looks like
    monkeypatch.delitem(sys.modules, "aioiam.aiohttp")
    with pytest.raises(ImportError, match=r"pip install 'aioiam\[aiohttp\]'"):
        importlib.import_module("aioiam.aiohttp")


def test_public_surface() -> None:
    assert aioiam.aiohttp.__all__ == ["IAMMiddleware"]


def test_middleware_needs_a_manager() -> None:
    with pytest.raises(TypeError, match="TokenManager"):
        IAMMiddleware("not a manager")  # type: ignore[arg-type]


def test_host_patterns_are_checked_like_iam_auth() -> None:
    with pytest.raises(ValueError, match="host pattern"):
        IAMMiddleware(make_manager(), allowed_hosts=["https://api.example.com"])
    with pytest.raises(TypeError, match="list"):
        IAMMiddleware(make_manager(), allowed_hosts="api.example.com")
