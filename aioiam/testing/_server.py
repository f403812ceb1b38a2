"""A small HTTP/1.1 server on loopback that hands each request to an async handler.

It exists so that :class:`~aioiam.testing.FakeIAM` can be reached over real TCP (by aioiam, by
IBM's synchronous SDK, by ``curl``), with keep-alive, on asyncio or trio. It is a test tool: it
binds to loopback addresses only and makes no attempt at production robustness.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import anyio
import h11
import httpx
from anyio.abc import SocketStream, TaskGroup

from .._sources import is_loopback_host

__all__ = ["DropConnection", "ServerAddress", "serve", "serve_in_thread"]

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]
_MAX_BODY = 1 << 20


class DropConnection(Exception):
    """Raised by a handler to close the connection without answering (or mid-answer).

    Attributes:
        partial: Bytes of the raw answer to send before closing, to simulate a reset mid-response.
    """

    def __init__(self, partial: bytes = b"") -> None:
        super().__init__("drop connection")
        self.partial = partial


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


async def _serve_connection(stream: SocketStream, handler: Handler, host_header: str) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_BODY)
    async with stream:
        while True:
            request_event: h11.Request | None = None
            body = bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    try:
                        data = await stream.receive(65536)
                    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                        return
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    request_event = event
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > _MAX_BODY:
                        return
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                    return
            assert request_event is not None
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request_event.headers]
            target = request_event.target.decode("latin-1")
            request = httpx.Request(
                request_event.method.decode("ascii"),
                f"http://{host_header}{target}",
                headers=headers,
                content=bytes(body),
            )
            try:
                response = await handler(request)
            except DropConnection as drop:
                if drop.partial:
                    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                        await stream.send(drop.partial)
                return
            content = await response.aread()
            out_headers = [
                (k, v)
                for k, v in response.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "connection")
            ]
            out_headers.append(("content-length", str(len(content))))
            try:
                await stream.send(
                    conn.send(h11.Response(status_code=response.status_code, headers=out_headers, reason=b"")) or b""
                )
                await stream.send(conn.send(h11.Data(data=content)) or b"")
                await stream.send(conn.send(h11.EndOfMessage()) or b"")
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return


@contextlib.asynccontextmanager
async def serve(handler: Handler, *, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[ServerAddress]:
    """Serve ``handler`` over HTTP/1.1 on a loopback address until the block ends.

    Args:
        handler: Called with each request; its response is sent back. Raise
            :class:`DropConnection` to close the connection instead.
        host: A loopback address (anything else raises ``ValueError``).
        port: 0 picks a free port.

    Yields:
        The address the server listens on.
    """
    if not is_loopback_host(host):
        raise ValueError("the test server binds to loopback addresses only")
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    bound = listener.extra(anyio.abc.SocketAttribute.local_address)
    address = ServerAddress(host, int(bound[1]))
    host_header = address.url.removeprefix("http://")

    async def on_connection(stream: SocketStream) -> None:
        with contextlib.suppress(h11.RemoteProtocolError):
            await _serve_connection(stream, handler, host_header)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(_serve_forever, listener, on_connection, tg)
        try:
            yield address
        finally:
            tg.cancel_scope.cancel()


async def _serve_forever(
    listener: anyio.abc.Listener[SocketStream],
    on_connection: Callable[[SocketStream], Awaitable[None]],
    tg: TaskGroup,
) -> None:
    await listener.serve(on_connection, task_group=tg)


@contextlib.contextmanager
def serve_in_thread(handler: Handler, *, host: str = "127.0.0.1", port: int = 0) -> Iterator[ServerAddress]:
    """Like :func:`serve`, on an asyncio loop in a daemon thread: for synchronous clients and benchmarks."""
    started = threading.Event()
    stop: list[Callable[[], None]] = []
    address: list[ServerAddress] = []
    errors: list[BaseException] = []

    async def main() -> None:
        stop_event = anyio.Event()
        token = anyio.lowlevel.current_token()
        stop.append(lambda: anyio.from_thread.run_sync(stop_event.set, token=token))
        async with serve(handler, host=host, port=port) as addr:
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
