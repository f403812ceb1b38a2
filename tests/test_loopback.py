"""Behaviour that crosses real TCP on loopback: FakeIAM served over a socket, refused and hung connections."""

from __future__ import annotations

import socket

import anyio
import pytest

from aioiam import IAMUnavailableError, RetryPolicy, TokenManager, TransientIAMError
from aioiam.testing import FakeIAM

pytestmark = [pytest.mark.anyio, pytest.mark.real_time]


async def test_single_flight_over_real_tcp() -> None:
    fake = FakeIAM(latency=0.05)
    async with fake.serve() as address, TokenManager("test-api-key", url=address.url) as tm:
        tokens: list[str] = []

        async def caller() -> None:
            tokens.append(await tm.get_token())

        async with anyio.create_task_group() as tg:
            for _ in range(200):
                tg.start_soon(caller)
    assert set(tokens) == {fake.issued[0]}
    assert fake.requests == 1


async def test_refused_key_over_real_tcp_carries_iam_fields() -> None:
    fake = FakeIAM(api_keys=["right"])
    async with fake.serve() as address:
        tm = TokenManager("wrong", url=address.url)
        from aioiam import InvalidCredentialsError

        with pytest.raises(InvalidCredentialsError) as info:
            await tm.get_token()
        await tm.aclose()
    assert info.value.error_code == "BXNIM0415E"
    assert info.value.request_id is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connection_refused_is_transient_and_bounded() -> None:
    tm = TokenManager(
        "k",
        url=f"http://127.0.0.1:{_free_port()}",
        retry=RetryPolicy(timeout=0.3, initial_delay=0.05, max_delay=0.1),
    )
    with pytest.raises(IAMUnavailableError) as info:
        await tm.get_token()
    assert isinstance(info.value.cause, TransientIAMError)
    assert "could not reach IAM" in str(info.value)
    await tm.aclose()


async def test_server_that_never_answers_hits_the_request_timeout() -> None:
    async def never(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await anyio.sleep(30)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, never)
        tm = TokenManager(
            "k",
            url=f"http://127.0.0.1:{port}",
            retry=RetryPolicy(request_timeout=0.2, timeout=0.3, initial_delay=0.5),
        )
        start = anyio.current_time()
        with pytest.raises(IAMUnavailableError, match="did not answer"):
            await tm.get_token()
        assert anyio.current_time() - start < 2
        await tm.aclose()
        tg.cancel_scope.cancel()
