"""A manager outliving its event loop, and TLS verification settings."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import httpx
import pytest

from aioiam import RetryPolicy, TokenManager
from aioiam.testing import FakeIAM
from tests._virtual_time import new_virtual_loop

T = TypeVar("T")


def test_on_demand_manager_survives_asyncio_run_twice_over_real_tcp() -> None:
    fake = FakeIAM()
    skipped = [0.0]  # time moved on by hand, past the cooldown between two drops (see invalidate)
    with fake.serve_in_thread() as address:
        tm = TokenManager("test-api-key", url=address.url, clock=lambda: time.monotonic() + skipped[0])
        first = asyncio.run(tm.get_token())
        assert tm.invalidate(first)
        second = asyncio.run(tm.get_token())  # a new loop: the old loop's state must not be reused
        assert second != first
        assert not tm.invalidate(second)  # within the cooldown of the last drop
        skipped[0] = 11.0
        assert tm.invalidate(second)
        third = anyio.run(tm.get_token, backend="trio")  # and another backend altogether
        asyncio.run(tm.aclose())
    assert fake.issued == [first, second, third]


class VirtualLoops:
    """Runs coroutines each on a new asyncio loop on virtual time, like ``asyncio.run`` does.

    :meth:`clock` is one monotonic clock across those loops: the virtual time of the running loop
    plus that of the loops before it, plus any time :meth:`pass_time` skipped between them.
    """

    def __init__(self) -> None:
        self._before = 0.0

    def clock(self) -> float:
        return self._before + asyncio.get_running_loop().time()

    def run(self, main: Callable[[], Awaitable[T]]) -> T:
        """``asyncio.run(main())`` on a new virtual-time loop (``asyncio.Runner`` needs 3.11)."""

        async def wrapped() -> T:
            return await main()

        loop: asyncio.AbstractEventLoop = new_virtual_loop()
        asyncio.set_event_loop(loop)
        try:
            result = loop.run_until_complete(wrapped())
            self._before += loop.time()
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
        return result

    def pass_time(self, seconds: float) -> None:
        self._before += seconds


def test_backoff_sleep_on_a_new_loop_does_not_reuse_the_old_loops_event() -> None:
    loops = VirtualLoops()
    fake = FakeIAM(lifetime=0.05)
    tm = TokenManager(
        "test-api-key",
        url="http://127.0.0.1",
        transport=fake.transport,
        retry=RetryPolicy(initial_delay=0.01, max_delay=0.02),
        clock=loops.clock,
    )
    fake.fail_next(1, status=503)
    assert loops.run(tm.get_token) == fake.issued[0]  # slept through one backoff on this loop
    loops.pass_time(0.06)  # the 50 ms token is now stale
    fake.fail_next(1, status=503)
    assert loops.run(tm.get_token) == fake.issued[1]  # and again, on a new loop
    assert fake.requests == 4
    loops.run(tm.aclose)


def test_turning_tls_verification_off_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="aioiam"):
        TokenManager("k", verify=False)
    assert any("verification" in r.getMessage() and "OFF" in r.getMessage() for r in caplog.records)


def test_tls_verification_is_on_by_default(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="aioiam"):
        tm = TokenManager("k")
    assert not caplog.records
    context = tm._client._transport._pool._ssl_context  # type: ignore[attr-defined]
    assert context.verify_mode == ssl.CERT_REQUIRED


class _TLSStream:
    """What httpx's ``network_stream`` extension offers, for a TLS connection made with ``context``."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context

    def get_extra_info(self, name: str) -> object:
        return self if name == "ssl_object" else None


@pytest.mark.parametrize("verifying", [True, False])
def test_a_token_fetched_over_unverified_tls_is_warned_about_once(
    caplog: pytest.LogCaptureFixture, verifying: bool
) -> None:
    """A client passed in is opaque until it talks: the first answer over TLS tells whether it verified."""
    context = ssl.create_default_context()
    if not verifying:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE

    def answer(request: httpx.Request) -> httpx.Response:
        body = {"access_token": "a.b.c", "token_type": "Bearer", "expires_in": 3600}
        return httpx.Response(200, json=body, extensions={"network_stream": _TLSStream(context)})

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
            tm = TokenManager("test-api-key", http_client=client)
            await tm.get_token()
            tm.invalidate(await tm.get_token())
            await tm.get_token()
            await tm.aclose()

    with caplog.at_level(logging.WARNING, logger="aioiam"):
        asyncio.run(main())
    warnings = [r for r in caplog.records if "not verified" in r.getMessage()]
    assert len(warnings) == (0 if verifying else 1)


def test_verify_with_a_client_passed_in_is_an_error() -> None:
    with pytest.raises(ValueError, match="verify"):
        TokenManager("k", http_client=httpx.AsyncClient(), verify=False)
