"""Behaviour that crosses real TCP on loopback: FakeIAM served over a socket, refused and hung connections.

On the real clock, so they assert outcomes and counts only: every limit on a request that is
answered is generous, and the short one is against a server that never answers.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import anyio.abc
import pytest

from aioiam import IAMUnavailableError, InvalidCredentialsError, RetryPolicy, TokenManager, TransientIAMError
from aioiam.testing import FakeIAM
from tests.helpers import FixedRandom

pytestmark = [pytest.mark.anyio, pytest.mark.real_time]

#: With the jitter drawing 0.5: a retry 25 ms after the first failure, then a 25 s backoff that
#: outlasts the caller's 10 s, so the caller gives up after exactly two requests.
TWO_TRIES = RetryPolicy(initial_delay=0.05, multiplier=1000, max_delay=60, timeout=10, request_timeout=5)


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
        with pytest.raises(InvalidCredentialsError) as info:
            await tm.get_token()
        await tm.aclose()
    assert info.value.error_code == "BXNIM0415E"
    assert info.value.request_id is not None


@contextmanager
def _refusing_port() -> Iterator[int]:
    """A loopback port bound but not listening: connections to it are refused while it is held.

    Held for the whole test, so no other test (or a second run in parallel) can take it meanwhile.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


async def test_connection_refused_is_transient_and_bounded() -> None:
    with _refusing_port() as port:
        tm = TokenManager("k", url=f"http://127.0.0.1:{port}", retry=TWO_TRIES, rng=FixedRandom(0.5))
        with pytest.raises(IAMUnavailableError) as info:
            await tm.get_token()
        await tm.aclose()
    assert isinstance(info.value.cause, TransientIAMError)
    assert str(info.value).startswith("IAM is unavailable and no usable token is left; last failure: could not reach")
    assert tm.request_count == 2


async def test_server_that_never_answers_hits_the_request_timeout() -> None:
    async def never(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await anyio.sleep_forever()  # so any request timeout is hit, however loaded the machine

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, never)
        tm = TokenManager(
            "k",
            url=f"http://127.0.0.1:{port}",
            retry=dataclasses.replace(TWO_TRIES, request_timeout=0.2),
            rng=FixedRandom(0.5),
        )
        with pytest.raises(IAMUnavailableError) as info:
            await tm.get_token()
        await tm.aclose()
        tg.cancel_scope.cancel()
    assert isinstance(info.value.cause, TransientIAMError)
    assert str(info.value.cause) == "IAM did not answer within 0.2s"
    assert tm.request_count == 2
