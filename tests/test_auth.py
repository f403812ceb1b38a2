"""IAMAuth: stepping the auth flow, and through a real httpx.AsyncClient on MockTransport."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import httpx
import pytest

from aioiam import IAMAuth
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
    flow = IAMAuth(tm).async_auth_flow(httpx.Request("GET", "https://api.example/x"))
    request = await flow.__anext__()
    assert request.headers["authorization"] == f"Bearer {fake.issued[0]}"
    with pytest.raises(StopAsyncIteration):
        await flow.asend(httpx.Response(200))
    await tm.aclose()


async def test_flow_on_401_refreshes_and_resends_once() -> None:
    fake = FakeIAM()
    tm = make_manager(fake)
    flow = IAMAuth(tm).async_auth_flow(httpx.Request("GET", "https://api.example/x"))
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
            response = await client.get("https://api.example/resource")
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
                statuses.append((await client.get("https://api.example/r")).status_code)

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
        response = await client.post("https://api.example/r", content=b"payload")
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
        response = await client.post("https://api.example/r", content=body())
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
        client.get("https://api.example/r")


def test_iam_auth_needs_a_manager() -> None:
    with pytest.raises(TypeError, match="TokenManager"):
        IAMAuth("not a manager")  # type: ignore[arg-type]
