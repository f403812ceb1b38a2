"""What differs between event loops, in one place: which loop is running, starting a task that
outlives its caller, and the latch a flight's waiters wait on.

The backend is detected once per binding, through sniffio (:func:`detect`); after that,
:meth:`Backend.same_loop` tells with one cheap public call whether a caller is still on the loop
the manager is bound to. Only asyncio and trio are supported (anyio's two backends).

Everything else in aioiam is written against anyio and does not know which loop it runs on.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio
import sniffio

__all__ = ["AsyncioLatch", "Backend", "Latch", "detect"]

#: asyncio keeps only weak references to tasks; these are the strong ones, for the tasks
#: :meth:`Backend.spawn` started (held here, not by the backend, which may go before its task).
_SPAWNED: set[asyncio.Task[None]] = set()

#: Above this many waiters, :meth:`AsyncioLatch.set` pauses automatic garbage collection while it
#: resolves their futures.
_PAUSE_GC_ABOVE = 1_000


class Latch(Protocol):
    """A one-shot event: ``set()`` once, ``is_set()``, ``await wait()``.

    ``set()`` releases every waiter in one pass of the event loop, whatever their number.
    ``wait()`` is always a checkpoint, like ``anyio.Event.wait``.
    """

    def set(self) -> None: ...

    def is_set(self) -> bool: ...

    def wait(self) -> Awaitable[object]: ...


class AsyncioLatch:
    """The asyncio :class:`Latch`: one future per waiter, every one resolved by ``set()``.

    What ``asyncio.Event`` does, minus its coroutine: ``wait()`` hands back the waiter's future
    itself, so a waiting task holds no frame for the latch. With a hundred thousand callers
    waiting for the first token, each frame held is a hundred thousand more objects for the
    garbage collector to walk while they wait. A cancelled waiter's future is cancelled, and
    ``set()`` skips it; nothing is removed before then.
    """

    __slots__ = ("_loop", "_set", "_waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._set = False
        self._waiters: list[asyncio.Future[None]] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, []
        # Each resolved future makes asyncio allocate one Handle. A crowd's worth of them at once
        # survives enough young collections to set off full ones, and a full collection walks
        # every object of every task still waiting: at a hundred thousand waiters that was the
        # largest single cost of the release (see ``docs/design.md``). So for a crowd, automatic
        # collection waits until this loop, which runs no other code of this thread, is over; it is
        # turned back on only if it was on. Small releases leave the collector alone.
        pause = len(waiters) > _PAUSE_GC_ABOVE and gc.isenabled()
        if pause:
            gc.disable()
        try:
            for future in waiters:
                if not future.done():
                    future.set_result(None)
        finally:
            if pause:
                gc.enable()

    def wait(self) -> Awaitable[object]:
        if self._set:
            return asyncio.sleep(0)
        future = self._loop.create_future()
        self._waiters.append(future)
        return future


class Backend:
    """The event loop a manager is bound to, and how to do on it what anyio cannot.

    Not thread-safe, like the manager. Methods must be called from inside the loop, except
    :meth:`same_loop`, which may be called from anywhere that runs an event loop.
    """

    __slots__ = ("_detached", "loop", "name")

    def __init__(self, name: str, loop: object) -> None:
        #: ``"asyncio"`` or ``"trio"``.
        self.name = name
        #: The running loop (asyncio) or the run's token (trio): its identity names the loop.
        self.loop = loop
        # Each task started by start_detached(): its cancel scope, and an event set when it ends.
        self._detached: dict[anyio.CancelScope, anyio.Event] = {}

    def __repr__(self) -> str:
        return f"<Backend {self.name}>"

    def same_loop(self) -> bool:
        """Whether the calling task runs on this backend's loop. One public call, no detection."""
        try:
            if self.name == "asyncio":
                return asyncio.get_running_loop() is self.loop
            import trio

            return trio.lowlevel.current_trio_token() is self.loop
        except RuntimeError:  # no loop of that kind is running here: another backend's
            return False

    def new_latch(self) -> Latch:
        """A fresh one-shot event whose ``set()`` releases every waiter in one pass of the loop."""
        if isinstance(self.loop, asyncio.AbstractEventLoop):
            return AsyncioLatch(self.loop)
        return anyio.Event()

    def spawn(self, function: Callable[[], Awaitable[None]], *, name: str) -> None:
        """Run ``function()`` in a new task that belongs to no caller's task group.

        For work a caller starts but must not own: cancelling the caller does not cancel it, and
        the caller does not wait for it. On asyncio it is a task of the loop; on trio, a system
        task (trio cancels those when the run ends). ``function`` must not raise: on trio an
        exception from a system task ends the whole run. Cancel it through a cancel scope it
        holds; this does not track it beyond keeping it alive.
        """
        if self.name == "asyncio":
            task = asyncio.get_running_loop().create_task(_call(function), name=name)
            _SPAWNED.add(task)
            task.add_done_callback(_SPAWNED.discard)
        else:
            import trio

            trio.lowlevel.spawn_system_task(_call, function, name=name, context=contextvars.copy_context())

    def start_detached(self, function: Callable[[], Awaitable[None]], *, name: str) -> None:
        """:meth:`spawn` ``function()`` under a cancel scope that :meth:`cancel_detached` cancels.

        For work that must outlive whoever started it but not the owner who closes it (a
        manager's on-demand token request). Does not wait for anything.
        """
        scope = anyio.CancelScope()
        ended = self._detached[scope] = anyio.Event()

        async def run() -> None:
            try:
                with scope:
                    await function()
            finally:
                del self._detached[scope]
                ended.set()

        self.spawn(run, name=name)

    def cancel_detached(self) -> None:
        """Cancel every task started by :meth:`start_detached` that is still running. Does not wait."""
        for scope in self._detached:
            scope.cancel()

    async def detached_ended(self) -> None:
        """Return once every task started by :meth:`start_detached` so far has ended."""
        for ended in list(self._detached.values()):
            await ended.wait()


async def _call(function: Callable[[], Awaitable[None]]) -> None:
    await function()


def detect() -> Backend:
    """The backend of the running event loop.

    Raises:
        RuntimeError: Not called from a running asyncio or trio event loop.
    """
    try:
        name = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        raise RuntimeError("aioiam must be used from a running asyncio or trio event loop") from None
    if name == "asyncio":
        return Backend(name, asyncio.get_running_loop())
    if name == "trio":
        import trio

        return Backend(name, trio.lowlevel.current_trio_token())
    raise RuntimeError(f"aioiam runs on asyncio and trio, not on {name}")
