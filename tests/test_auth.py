"""IAMAuth: stepping the auth flow, and through a real httpx.AsyncClient on MockTransport."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest

from aioiam import DEFAULT_ALLOWED_HOSTS, IAMAuth
from aioiam.testing import FakeIAM
from tests.helpers import make_manager

pytestmark = pytest.mark.anyio


def service(fake: FakeIAM, *, reject: set[str] | None = None) -> httpx.MockTransport:
    """A service that accepts tokens FakeIAM issued, except those in ``reject``."""
    rejected = reject if reject is not None else set()
    seen: list[str] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        seen.append(token)
        await request.aread()
        if token in fake.issued and token not in rejected:
            return httpx.Response(200, json={"ok": True})
        return httpx.Response(401, json={"error": "unauthorized"})

    transport = httpx.MockTransport(handle)
    transport.seen = seen  # type: ignore[attr-defined]
    return transport


async def test_flow_sets_the_bearer_header_without_network() -> None:
    fake = FakeIAM()
    tm = make_manager(fake)
    flow = IAMAuth(tm).async_auth_flow(httpx.Request("GET", "https://api.cloud.ibm.com/x"))
    request = await flow.__anext__()
    assert request.headers["authorization"] == f"Bearer {fake.issued[0]}"
    with pytest.raises(StopAsyncIteration):
        await flow.asend(httpx.Response(200))
    await tm.aclose()


async def test_flow_on_401_refreshes_and_resends_once() -> None:
    fake = FakeIAM()
    tm = make_manager(fake)
    flow = IAMAuth(tm).async_auth_flow(httpx.Request("GET", "https://api.cloud.ibm.com/x"))
    request = await flow.__anext__()
    retry = await flow.asend(httpx.Response(401))
    assert retry.headers["authorization"] == f"Bearer {fake.issued[1]}"
    with pytest.raises(StopAsyncIteration):
        await flow.asend(httpx.Response(401))  # a second 401 is returned, not retried again
    assert fake.requests == 2
    assert request is retry
    await tm.aclose()


async def test_client_requests_carry_the_token() -> None:
    fake = FakeIAM()
    async with make_manager(fake) as tm, httpx.AsyncClient(auth=IAMAuth(tm), transport=service(fake)) as client:
        for _ in range(3):
            response = await client.get("https://api.cloud.ibm.com/resource")
            assert response.status_code == 200
    assert fake.requests == 1


async def test_hundred_concurrent_401s_cause_one_refresh() -> None:
    fake = FakeIAM()
    async with make_manager(fake) as tm:
        stale = await tm.get_token()
        transport = service(fake, reject={stale})
        async with httpx.AsyncClient(auth=IAMAuth(tm), transport=transport) as client:
            statuses: list[int] = []

            async def call() -> None:
                statuses.append((await client.get("https://api.cloud.ibm.com/r")).status_code)

            async with anyio.create_task_group() as tg:
                for _ in range(100):
                    tg.start_soon(call)
    assert statuses == [200] * 100
    assert fake.requests == 2  # the first token, and one refresh for all hundred 401s


async def test_request_with_bytes_body_is_replayed_after_401() -> None:
    fake = FakeIAM()
    tm = make_manager(fake)
    stale = await tm.get_token()
    transport = service(fake, reject={stale})
    async with httpx.AsyncClient(auth=IAMAuth(tm), transport=transport) as client:
        response = await client.post("https://api.cloud.ibm.com/r", content=b"payload")
    assert response.status_code == 200
    assert transport.seen == [stale, fake.issued[1]]  # type: ignore[attr-defined]
    await tm.aclose()


async def test_streaming_body_is_not_replayed_after_401() -> None:
    fake = FakeIAM()
    tm = make_manager(fake)
    stale = await tm.get_token()
    transport = service(fake, reject={stale})

    async def body() -> AsyncIterator[bytes]:
        yield b"chunk"

    async with httpx.AsyncClient(auth=IAMAuth(tm), transport=transport) as client:
        response = await client.post("https://api.cloud.ibm.com/r", content=body())
    assert response.status_code == 401
    assert transport.seen == [stale]  # type: ignore[attr-defined]
    assert fake.requests == 1
    await tm.aclose()


def test_sync_client_gets_a_clear_error() -> None:
    tm = make_manager()
    transport = httpx.MockTransport(lambda r: httpx.Response(200))
    with (
        httpx.Client(auth=IAMAuth(tm), transport=transport) as client,
        pytest.raises(TypeError, match=r"httpx\.AsyncClient"),
    ):
        client.get("https://api.cloud.ibm.com/r")


def test_iam_auth_needs_a_manager() -> None:
    with pytest.raises(TypeError, match="TokenManager"):
        IAMAuth("not a manager")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "sent"),
    [
        ("https://resource-controller.cloud.ibm.com/v2", True),
        ("https://cloud.ibm.com/", True),
        ("https://s3.us-south.cloud-object-storage.appdomain.cloud/b", True),
        ("https://API.CLOUD.IBM.COM./x", True),
        ("https://127.0.0.1:8443/x", True),
        ("http://localhost:8080/x", True),
        ("http://[::1]:8080/x", True),
        ("http://api.cloud.ibm.com/x", False),  # plain http to a real host
        ("https://cloud.ibm.com.evil.example/x", False),
        ("https://evilcloud.ibm.com/x", False),
        ("https://cloud.ibm.com@evil.example/x", False),
        ("https://example.com/x", False),
        ("https://10.0.0.1/x", False),
    ],
)
async def test_token_goes_only_to_allowed_hosts_over_https(url: str, sent: bool) -> None:
    fake = FakeIAM()
    seen: list[str | None] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200)

    tm = make_manager(fake)
    async with httpx.AsyncClient(auth=IAMAuth(tm), transport=httpx.MockTransport(handle)) as client:
        await client.get(url)
    assert (seen[0] is not None) is sent
    assert fake.requests == (1 if sent else 0)  # no token is even fetched for a refused host
    await tm.aclose()


async def test_refused_host_is_warned_about_once_and_its_own_header_is_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str | None] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200)

    tm = make_manager()
    async with httpx.AsyncClient(auth=IAMAuth(tm), transport=httpx.MockTransport(handle)) as client:
        with caplog.at_level(logging.WARNING, logger="aioiam"):
            for _ in range(3):
                await client.get("https://crawled.example/page")
            await client.get("https://crawled.example/x", headers={"Authorization": "Basic theirs"})
    assert seen == [None, None, None, "Basic theirs"]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "crawled.example" in warnings[0]
    await tm.aclose()


async def test_allowed_hosts_are_configurable() -> None:
    seen: list[str | None] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200)

    tm = make_manager()
    auth = IAMAuth(
        tm, allowed_hosts=[*DEFAULT_ALLOWED_HOSTS, "api.partner.example", "*.internal.example"], allow_loopback=False
    )
    async with httpx.AsyncClient(auth=auth, transport=httpx.MockTransport(handle)) as client:
        for url in (
            "https://api.partner.example/",
            "https://a.b.internal.example/",
            "https://internal.example/",
            "https://127.0.0.1/",
            "https://iam.cloud.ibm.com/",
        ):
            await client.get(url)
    assert [s is not None for s in seen] == [True, True, False, False, True]
    await tm.aclose()


@pytest.mark.parametrize(
    ("pattern", "url"),
    [
        ("API.Example.COM", "https://api.example.com/v1"),
        ("api.example.com", "https://API.EXAMPLE.COM/v1"),
        ("*.Example.COM", "https://eu.api.example.com/v1"),
        ("Api.Example.Com.", "https://api.example.com./v1"),
    ],
)
async def test_allowed_hosts_match_whatever_the_case(pattern: str, url: str) -> None:
    seen: list[str | None] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200)

    fake = FakeIAM()
    tm = make_manager(fake)
    auth = IAMAuth(tm, allowed_hosts=[pattern], allow_loopback=False)
    assert auth.may_send_token(httpx.URL(url))
    assert not auth.may_send_token(httpx.URL("https://api.example.org/v1"))
    async with httpx.AsyncClient(auth=auth, transport=httpx.MockTransport(handle)) as client:
        await client.get(url)
    assert seen == [f"Bearer {fake.issued[0]}"]
    await tm.aclose()


@pytest.mark.parametrize(
    "pattern", ["https://api.example.com", "api.example.com:443", "api.example.com/x", "a.*.com", "*", ""]
)
def test_bad_host_patterns_are_rejected(pattern: str) -> None:
    with pytest.raises(ValueError, match="host pattern"):
        IAMAuth(make_manager(), allowed_hosts=[pattern])


def test_allowed_hosts_must_be_a_list_not_a_string() -> None:
    with pytest.raises(TypeError, match="list"):
        IAMAuth(make_manager(), allowed_hosts="api.example.com")


async def test_a_service_that_refuses_every_token_costs_one_refresh_per_cooldown() -> None:
    """Found by review: a host that answers 401 to every token made one IAM request per call."""
    fake = FakeIAM()
    calls = 0

    def always_401(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(401)

    transport = httpx.MockTransport(always_401)
    async with make_manager(fake) as tm, httpx.AsyncClient(auth=IAMAuth(tm), transport=transport) as client:
        statuses = [(await client.get("https://api.cloud.ibm.com/x")).status_code for _ in range(50)]
        assert fake.requests == 2  # the first token, and one refresh after the first 401
        assert calls == 51  # the first call resent once; the rest not (the same token would get the same 401)
        await anyio.sleep(10)  # the cooldown between drops (a tenth of an hour-long token's life is more)
        assert (await client.get("https://api.cloud.ibm.com/x")).status_code == 401
        assert fake.requests == 3
    assert statuses == [401] * 50
