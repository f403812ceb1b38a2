"""A small HTTP/1.1 server on loopback that hands each request to an async handler.

It exists so that :class:`~aioiam.testing.FakeIAM` can be reached over real TCP (by aioiam, by
IBM's synchronous SDK, by ``curl``), with keep-alive, on asyncio or trio, and so that its faults
happen on a real socket: a handler can cut the connection mid-answer (:class:`DropConnection`), a
:class:`ListenSwitch` can close the port so that connections are refused, and a handler that never
answers is cancelled when the client gives up and disconnects.

It is a test tool: it binds to loopback addresses only and makes no attempt at production
robustness (no TLS, no HTTP/2, no limits beyond a 1 MiB request body).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
import h11
import httpx
from anyio.abc import SocketStream, TaskGroup

from .._urls import is_loopback_host

__all__ = ["DropConnection", "ListenSwitch", "ServerAddress", "serve", "serve_in_thread"]

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]
_MAX_BODY = 1 << 20
_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


class DropConnection(Exception):
    """Raised by a handler to close the connection without answering (or mid-answer).

    Attributes:
        partial: Bytes of the raw answer to send before closing, to simulate a cut mid-response.
        reset: Close with a TCP reset (``SO_LINGER`` 0) rather than an orderly close, so the
            client typically sees ``ECONNRESET``. Which error the client reports still depends on
            timing (a reset may arrive after the client has read the partial answer and the
            end of the stream): expect any ``httpx.TransportError``.
    """

    def __init__(self, partial: bytes = b"", *, reset: bool = False) -> None:
        super().__init__("drop connection")
        self.partial = partial
        self.reset = reset


@dataclass(frozen=True)
class ServerAddress:
    """Where a server listens."""

    host: str
    port: int

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:8123``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


class ListenSwitch:
    """Whether the servers attached to it accept connections; flipped by ``FakeIAM.refusing``.

    Turning it off closes each attached server's listening socket at once, so new connections are
    refused by the operating system (``ECONNREFUSED``), while the port stays reserved by a bound,
    non-listening socket; turning it back on listens on the same port again. Connections already
    accepted are left alone. It may be flipped from the server's event loop thread or from any
    other thread (then it waits until the server has acted on it).

    On Linux the port closes before the setter returns. Elsewhere the listening socket is closed
    by the server's accept loop as soon as it runs.
    """

    def __init__(self, listening: bool = True) -> None:
        self._listening = listening
        self._ports: set[_Port] = set()
        self._lock = threading.Lock()

    @property
    def listening(self) -> bool:
        """Whether attached servers accept connections."""
        return self._listening

    def set(self, listening: bool) -> None:
        """Open or close the port of every attached server."""
        with self._lock:
            self._listening = listening
            ports = list(self._ports)
        for port in ports:
            port.set_listening(listening)

    def _attach(self, port: _Port) -> None:
        with self._lock:
            self._ports.add(port)
            listening = self._listening
        port.set_listening(listening)

    def _detach(self, port: _Port) -> None:
        with self._lock:
            self._ports.discard(port)


def _bound_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _Port:
    """One server's listening socket, which a :class:`ListenSwitch` can close and reopen.

    While closed, a bound socket that does not listen keeps the port, so the operating system
    refuses connections and no other program takes the port in the meantime.
    """

    def __init__(self, host: str, port: int) -> None:
        self.sock = _bound_socket(host, port)
        self.sock.listen(128)
        self.host = host
        self.port = int(self.sock.getsockname()[1])
        self.listening = True
        self._retired: list[socket.socket] = []
        self._changed = anyio.Event()
        self._thread = threading.get_ident()
        self._loop = anyio.lowlevel.current_token()

    def set_listening(self, listening: bool) -> None:
        if threading.get_ident() != self._thread:
            with contextlib.suppress(RuntimeError):  # the server's loop has already ended
                anyio.from_thread.run_sync(self._set_listening, listening, token=self._loop)
            return
        self._set_listening(listening)

    def _set_listening(self, listening: bool) -> None:
        if listening == self.listening:
            return
        if listening:
            self.sock.listen(128)
        else:
            old = self.sock
            # Stops the listening socket at once on Linux (connections are refused from here on,
            # any in the backlog are reset) and wakes the accept loop, which then closes it.
            with contextlib.suppress(OSError):
                old.shutdown(socket.SHUT_RDWR)
            self._retired.append(old)
            self.sock = _bound_socket(self.host, self.port)
        self.listening = listening
        self._changed.set()
        self._changed = anyio.Event()

    async def accept_forever(
        self, on_connection: Callable[[SocketStream], Coroutine[Any, Any, None]], tg: TaskGroup
    ) -> None:
        try:
            while True:
                self._close_retired()
                if not self.listening:
                    await self._changed.wait()
                    continue
                sock, changed = self.sock, self._changed
                async with anyio.create_task_group() as waiters:
                    # Whichever comes first: a connection, or the switch closing this socket.
                    waiters.start_soon(self._cancel_on, changed, waiters.cancel_scope)
                    await anyio.wait_readable(sock)
                    waiters.cancel_scope.cancel()
                if sock is not self.sock:
                    continue
                try:
                    client, _ = sock.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:  # shut down under us (another platform's way of closing)
                    continue
                stream = await SocketStream.from_socket(client)
                tg.start_soon(on_connection, stream)
        finally:
            self._close_retired()
            self.sock.close()

    @staticmethod
    async def _cancel_on(event: anyio.Event, scope: anyio.CancelScope) -> None:
        await event.wait()
        scope.cancel()

    def _close_retired(self) -> None:
        while self._retired:
            self._retired.pop().close()


def _abort(stream: SocketStream) -> None:
    """Make closing ``stream`` send a TCP reset instead of an orderly close."""
    with contextlib.suppress(OSError, AttributeError, TypeError):
        raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def _read_request(stream: SocketStream, conn: h11.Connection, host_header: str) -> httpx.Request | None:
    """The next request on the connection, or ``None`` when the client is gone or misbehaves."""
    request_event: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            try:
                data = await stream.receive(65536)
            except _GONE:
                return None
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            request_event = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > _MAX_BODY:
                return None
        elif isinstance(event, h11.EndOfMessage):
            break
        elif event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
            return None
    assert request_event is not None
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request_event.headers]
    target = request_event.target.decode("latin-1")
    return httpx.Request(
        request_event.method.decode("ascii"),
        f"http://{host_header}{target}",
        headers=headers,
        content=bytes(body),
    )


async def _watch_for_hangup(stream: SocketStream, conn: h11.Connection, scope: anyio.CancelScope) -> None:
    """Cancel ``scope`` (the handler) when the client disconnects; keep any early bytes for h11."""
    while True:
        try:
            data = await stream.receive(65536)
        except _GONE:
            scope.cancel()
            return
        conn.receive_data(data)


async def _serve_connection(stream: SocketStream, handler: Handler, host_header: str) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_BODY)
    async with stream:
        while True:
            request = await _read_request(stream, conn, host_header)
            if request is None:
                return
            response: httpx.Response | None = None
            drop: DropConnection | None = None
            async with anyio.create_task_group() as tg:
                # A handler that never answers is cancelled once the client gives up.
                tg.start_soon(_watch_for_hangup, stream, conn, tg.cancel_scope)
                try:
                    answer = await handler(request)
                    await answer.aread()
                    response = answer
                except DropConnection as exc:
                    drop = exc
                tg.cancel_scope.cancel()
            if drop is not None:
                if drop.reset:
                    _abort(stream)
                if drop.partial:
                    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                        await stream.send(drop.partial)
                return
            if response is None:  # the client hung up while the handler was busy
                return
            content = response.content
            out_headers = [
                (k, v)
                for k, v in response.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "connection")
            ]
            out_headers.append(("content-length", str(len(content))))
            # One send for the whole answer: with the head and the body sent apart, Nagle's algorithm
            # holds the body back until the client acknowledges the head, which a client on a
            # kept-alive connection delays by ~40 ms.
            raw = b"".join(
                conn.send(event) or b""
                for event in (
                    h11.Response(status_code=response.status_code, headers=out_headers, reason=b""),
                    h11.Data(data=content),
                    h11.EndOfMessage(),
                )
            )
            try:
                await stream.send(raw)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return


@contextlib.asynccontextmanager
async def serve(
    handler: Handler,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    switch: ListenSwitch | None = None,
) -> AsyncIterator[ServerAddress]:
    """Serve ``handler`` over HTTP/1.1 on a loopback address until the block ends.

    Args:
        handler: Called with each request; its response is sent back. Raise
            :class:`DropConnection` to close the connection instead. A handler still running when
            the client disconnects is cancelled.
        host: A loopback address (anything else raises ``ValueError``).
        port: 0 picks a free port.
        switch: Opens and closes the listening port while serving (see :class:`ListenSwitch`).

    Yields:
        The address the server listens on. The port stays the same while serving, even across a
        close and reopen by ``switch``.
    """
    if not is_loopback_host(host):
        raise ValueError("the test server binds to loopback addresses only")
    listener = _Port(host, port)
    address = ServerAddress(host, listener.port)
    host_header = address.url.removeprefix("http://")

    async def on_connection(stream: SocketStream) -> None:
        with contextlib.suppress(h11.RemoteProtocolError):
            await _serve_connection(stream, handler, host_header)

    body_error: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.accept_forever, on_connection, tg)
            if switch is not None:
                switch._attach(listener)
            try:
                yield address
            except BaseException as exc:
                # Re-raised below, outside the task group, so the caller sees their own
                # exception and not an ExceptionGroup around it.
                body_error = exc
            finally:
                if switch is not None:
                    switch._detach(listener)
                tg.cancel_scope.cancel()
    finally:
        listener.sock.close()
    if body_error is not None:
        raise body_error


@contextlib.contextmanager
def serve_in_thread(
    handler: Handler,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    switch: ListenSwitch | None = None,
) -> Iterator[ServerAddress]:
    """Like :func:`serve`, on an asyncio loop in a daemon thread: for synchronous clients and benchmarks."""
    started = threading.Event()
    stop: list[Callable[[], None]] = []
    address: list[ServerAddress] = []
    errors: list[BaseException] = []

    async def main() -> None:
        stop_event = anyio.Event()
        token = anyio.lowlevel.current_token()
        stop.append(lambda: anyio.from_thread.run_sync(stop_event.set, token=token))
        async with serve(handler, host=host, port=port, switch=switch) as addr:
            address.append(addr)
            started.set()
            await stop_event.wait()

    def run() -> None:
        try:
            anyio.run(main)
        except BaseException as exc:  # reported to the caller below
            errors.append(exc)
            started.set()

    thread = threading.Thread(target=run, name="aioiam-test-server", daemon=True)
    thread.start()
    started.wait()
    if errors:
        raise errors[0]
    try:
        yield address[0]
    finally:
        stop[0]()
        thread.join(timeout=10)
