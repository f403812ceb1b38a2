"""An asyncio event loop on virtual time, the asyncio twin of ``trio.testing.MockClock(autojump_threshold=0)``.

Whenever the loop would block waiting for a timer, the clock jumps straight to that timer instead:
sleeps and timeouts take no real time and happen in a deterministic order. Real I/O still works
(the loop only jumps when no socket is ready and a timer is pending), but a test that waits on real
I/O and a timer at once would see the timer fire first, so loopback-network tests use the real clock.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any


class _JumpingSelector(selectors.DefaultSelector):
    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if ready or timeout is None or timeout <= 0:
            if not ready and timeout is None:
                return super().select(None)
            return ready
        assert self.loop is not None
        self.loop.advance(timeout)
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` is virtual and jumps to the next timer."""

    def __init__(self) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self._virtual_now = 0.0

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        self._virtual_now += seconds

    def __repr__(self) -> str:
        return f"<VirtualTimeLoop now={self._virtual_now:.3f}>"


def new_virtual_loop() -> Any:
    return VirtualTimeLoop()
