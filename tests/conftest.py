"""Shared fixtures: every async test runs on asyncio and on trio, both on virtual time.

Virtual time means sleeps and timeouts cost no real time and run in a deterministic order: on trio
through ``MockClock(autojump_threshold=0)``, on asyncio through ``tests._virtual_time``. Tests that
talk to a real socket on loopback are marked ``real_time`` and get the real clocks instead.

Hypothesis runs without its two real-time checks (the per-example deadline and the "too slow"
health check): on a loaded machine either fails a correct test, and a timeout belongs to
pytest-timeout.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
import trio.testing
from hypothesis import HealthCheck, settings

from tests._virtual_time import new_virtual_loop

settings.register_profile("aioiam", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("aioiam")


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param("trio", id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    if request.node.get_closest_marker("real_time"):
        return (request.param, {})
    if request.param == "asyncio":
        return ("asyncio", {"loop_factory": new_virtual_loop})
    return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})


@pytest.fixture
def clock() -> Callable[[], float]:
    """The clock the manager must use so its deadlines agree with the loop's sleeps."""
    return anyio.current_time


@pytest.fixture
def collect_coredis_garbage() -> Iterator[None]:
    """Collect at the end of the test what coredis leaves to the garbage collector, where the
    test's warning filters (``tests.fleet_helpers.COREDIS_LEFTOVERS``) still apply; otherwise its
    warnings surface in whichever later test happens to run the collection."""
    yield
    gc.collect()
