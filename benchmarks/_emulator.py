"""The IAM emulator in a process of its own, over real TCP on loopback.

With ten thousand tasks or more the benchmark process is CPU-bound; an emulator thread in the same
process would wait for the GIL and add its wait to every figure. So the emulator runs here, in a
child process with its own event loop, and the benchmark talks to it through a small control API
that the emulator does not count as IAM requests:

- ``GET /_bench/stats``: ``{"requests": ..., "max_in_flight": ..., "lifetime": ..., "latency": ...,
  "down": ..., "last_write_at": ...}``
- ``POST /_bench/config`` with a JSON body of any of ``lifetime``, ``latency``, ``down`` and
  ``reset`` (true zeroes the counters); answers with the stats.

``last_write_at`` is the ``time.monotonic()`` of this process right after the last ``send()`` on
any connection it accepted before the control request came in (``null`` if none). Read right after
a trial whose only request to the emulator was one IAM request, it is the moment IAM's answer was
on the wire (in the client's socket buffer: on loopback, ``send()`` delivers). ``time.monotonic()``
is ``CLOCK_MONOTONIC`` on Linux, one clock for every process of the machine, so the benchmark
process can subtract it from its own readings. If the machine preempts the emulator between its
``send()`` and its stamp, the stamp is late by that much: read it on a quiet machine.

Run as ``python -m benchmarks._emulator --lifetime 3600 --latency 0.05``: it prints its port on
the first line of stdout and serves until its stdin closes. :class:`Emulator` does that for you.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
import httpx

from aioiam.testing import FakeIAM

__all__ = ["Emulator"]

_CONTROL = "/_bench/"


class _WriteClock:
    """When this process last finished writing to a connection it accepted."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: float | None = None


class _BenchIAM(FakeIAM):
    """FakeIAM plus the control API; control requests are not counted as IAM requests."""

    def __init__(self, writes: _WriteClock, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._writes = writes

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith(_CONTROL):
            return self._control(request)
        return await super().handle(request)

    def _stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "max_in_flight": self.max_in_flight,
            "lifetime": self.lifetime,
            "latency": self.latency,
            "down": self.down,
            "last_write_at": self._writes.last,
        }

    def _control(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == _CONTROL + "config" and request.method == "POST":
            body = json.loads(request.content or b"{}")
            if body.get("reset"):
                self.requests = 0
                self.max_in_flight = 0
                self.issued.clear()
            if "lifetime" in body:
                self.lifetime = float(body["lifetime"])
            if "latency" in body:
                self.latency = float(body["latency"])
            if "down" in body:
                self.down = bool(body["down"])
        elif request.url.path != _CONTROL + "stats":
            return httpx.Response(404)
        return httpx.Response(200, json=self._stats())


def _wrap_accept(writes: _WriteClock) -> None:
    """Set ``TCP_NODELAY`` on every connection this process accepts, and clock its writes.

    aioiam's test server writes an answer's head and body in separate sends. Without
    ``TCP_NODELAY`` on the server side, Nagle's algorithm holds the body back until the client
    acknowledges the head, which a client delays by ~40 ms on a reused connection: every answer
    after the first on a kept-alive connection would take 40 ms more. Real servers set it; so does
    the emulator here, by wrapping ``socket.socket.accept`` in this process only.

    Each accepted connection comes back as a :class:`socket.socket` whose ``send`` stamps
    ``writes.last`` once the bytes are handed to the kernel: asyncio's transports write through
    it, so the stamp is the end of the emulator's last answer.
    """
    accept = socket.socket.accept

    class StampedSocket(socket.socket):
        def send(self, data: Any, flags: int = 0) -> int:
            sent = super().send(data, flags)
            writes.last = time.monotonic()
            return sent

    def accept_nodelay(self: socket.socket) -> tuple[socket.socket, Any]:
        connection, address = accept(self)
        if connection.family in (socket.AF_INET, socket.AF_INET6):
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            timeout = connection.gettimeout()
            stamped = StampedSocket(connection.family, connection.type, connection.proto, connection.detach())
            stamped.settimeout(timeout)
            connection = stamped
        return connection, address

    socket.socket.accept = accept_nodelay  # type: ignore[method-assign]


async def _serve(writes: _WriteClock, lifetime: float, latency: float) -> None:
    fake = _BenchIAM(writes, api_keys=None, lifetime=lifetime, latency=latency)
    stop = anyio.Event()
    loop = anyio.lowlevel.current_token()

    def watch_stdin() -> None:
        sys.stdin.read()  # returns at EOF: the parent closed the pipe, or died
        anyio.from_thread.run_sync(stop.set, token=loop)

    async with fake.serve() as address:
        print(address.port, flush=True)
        threading.Thread(target=watch_stdin, name="stdin watcher", daemon=True).start()
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lifetime", type=float, default=3600.0)
    parser.add_argument("--latency", type=float, default=0.05)
    args = parser.parse_args(argv)
    writes = _WriteClock()
    _wrap_accept(writes)
    anyio.run(_serve, writes, args.lifetime, args.latency)


class Emulator:
    """Starts the emulator process and drives its control API. Use as an async context manager."""

    def __init__(self, *, lifetime: float = 3600.0, latency: float = 0.05) -> None:
        self._args = ["--lifetime", str(lifetime), "--latency", str(latency)]
        self._process: anyio.abc.Process | None = None
        self._control: httpx.AsyncClient | None = None
        self.url = ""

    async def __aenter__(self) -> Emulator:
        process = await anyio.open_process(
            [sys.executable, "-m", "benchmarks._emulator", *self._args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
        )
        self._process = process
        assert process.stdout is not None
        line = b""
        with anyio.fail_after(30):
            while not line.endswith(b"\n"):
                line += await process.stdout.receive()
        self.url = f"http://127.0.0.1:{int(line)}"
        self._control = httpx.AsyncClient(base_url=self.url, timeout=30)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._control is not None:
            await self._control.aclose()
        process = self._process
        if process is not None:
            assert process.stdin is not None
            await process.stdin.aclose()  # the emulator stops at the end of its stdin
            with anyio.move_on_after(10) as waited:
                await process.wait()
            if waited.cancelled_caught:
                process.kill()
                await process.wait()
            await process.aclose()

    async def configure(self, **settings: float | bool) -> dict[str, Any]:
        """Set ``lifetime``, ``latency``, ``down``, or ``reset=True``; return the stats."""
        assert self._control is not None
        response = await self._control.post(_CONTROL + "config", json=settings)
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    async def stats(self) -> dict[str, Any]:
        assert self._control is not None
        response = await self._control.get(_CONTROL + "stats")
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    async def requests(self) -> int:
        """IAM requests since the last reset."""
        return int((await self.stats())["requests"])

    async def answered(self) -> tuple[int, float | None]:
        """IAM requests since the last reset, and ``last_write_at`` (see the module docstring)."""
        stats = await self.stats()
        last = stats["last_write_at"]
        return int(stats["requests"]), None if last is None else float(last)


if __name__ == "__main__":
    main()
