"""Small helpers shared by the tests."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
import trio.testing

from aioiam import FetchAttempt, RefreshPolicy, TokenManager
from aioiam.testing import FakeIAM
from tests._virtual_time import new_virtual_loop

KEY = "test-api-key"
NO_JITTER = RefreshPolicy(jitter_fraction=0)


def make_manager(fake: FakeIAM | None = None, **kwargs: Any) -> TokenManager:
    """A manager on the test clock talking to ``fake`` in process."""
    fake = fake if fake is not None else FakeIAM()
    kwargs.setdefault("url", "http://127.0.0.1:1")
    kwargs.setdefault("clock", anyio.current_time)
    if "http_client" not in kwargs:
        kwargs.setdefault("transport", fake.transport)
    return TokenManager(kwargs.pop("api_key", KEY), **kwargs)


class FixedRandom(random.Random):
    """A ``random.Random`` whose ``random()`` always returns ``value``: jitter without chance."""

    def __init__(self, value: float = 0.5) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


class Recorder:
    """A hook that keeps every FetchAttempt."""

    def __init__(self) -> None:
        self.attempts: list[FetchAttempt] = []

    def __call__(self, attempt: FetchAttempt) -> None:
        self.attempts.append(attempt)


class FlakyTransport(httpx.AsyncBaseTransport):
    """Raises ``error()`` for the first ``failures`` requests, then defers to ``inner``."""

    def __init__(self, inner: httpx.AsyncBaseTransport, failures: int, error: Callable[[], Exception]) -> None:
        self.inner = inner
        self.failures = failures
        self.error = error
        self.calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error()
        return await self.inner.handle_async_request(request)


def run_virtual(main: Callable[[], Awaitable[None]], backend: str) -> None:
    """Run ``main`` on ``backend`` on virtual time (outside the anyio pytest plugin)."""
    options: dict[str, Any] = (
        {"loop_factory": new_virtual_loop}
        if backend == "asyncio"
        else {"clock": trio.testing.MockClock(autojump_threshold=0)}
    )
    anyio.run(main, backend=backend, backend_options=options)
