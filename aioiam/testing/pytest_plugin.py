"""aioiam's pytest plugin: the ``fake_iam`` fixture, an IAM emulator served on loopback for one test.

Once aioiam is installed, pytest loads this plugin by itself through the ``pytest11`` entry point
named ``aioiam``: a test only has to ask for ``fake_iam``. Without the entry point (aioiam on
``sys.path`` but not installed), load it by hand with ``-p aioiam.testing.pytest_plugin``; when
the entry point is installed too, also pass ``-p no:aioiam``, or pytest registers the module twice
and stops with "Plugin already registered under a different name". ``-p no:aioiam`` alone turns
it off.

The fixture is synchronous and serves from a thread of its own, so it works the same in tests
run by the anyio plugin and by pytest-asyncio, on asyncio and on trio, and in plain synchronous
tests. Loading the plugin imports aioiam (httpx, anyio, h11) and nothing else: neither trio nor
pytest-asyncio.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._fake_iam import FakeIAM

__all__ = ["fake_iam"]


@pytest.fixture
def fake_iam() -> Iterator[FakeIAM]:
    """A fresh :class:`~aioiam.testing.FakeIAM`, served on 127.0.0.1 (a free port, real TCP) for the test's duration.

    Point your code at it with ``aioiam.TokenManager(fake_iam.api_key, url=fake_iam.url)``; the
    VPC metadata service answers at the same ``url``. Everything of ``FakeIAM`` works as usual
    from the test: its counts (``requests``, ``requests_by_grant``, ``issued``), its faults
    (``fail_next``, ``down``, ``latency``, ``refusing``) and its settings (``lifetime``,
    ``api_keys``, ``cr_tokens``, ``profiles``...), which may be changed at any time.

    The server runs an asyncio loop on a daemon thread, on the real clock: delays and latency
    take real time, whatever clock the test's own event loop uses. It stops when the test ends
    (connections still open are closed); from then on ``fake_iam.url`` raises ``RuntimeError``.
    """
    fake = FakeIAM()
    with fake.serve_in_thread():
        yield fake
