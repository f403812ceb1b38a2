"""Every ```python block in README.md runs, as written, with the built-in emulator standing in for IBM Cloud.

How a block runs:

- A **complete program** (no top-level ``await``) runs alone, in a fresh ``__main__`` namespace, as
  ``python example.py`` would run it; it starts its own event loop (``anyio.run(main)``).
- A **fragment** (top-level ``await``, which only the asyncio REPL, ``python -m asyncio``, accepts)
  runs the way that REPL would run it, after the imports of the blocks above it (a reader who
  followed the README has them), with ``api_key`` defined: the README's name for the reader's key.

What is substituted, the same way for every block (no block needs an IBM account or the network):

- ``aioiam.TokenManager`` made for IBM's IAM (its default URL, or any https URL on ``cloud.ibm.com``,
  given as ``url`` or by its source) with no ``transport`` or ``http_client`` of its own talks to a
  :class:`FakeIAM` through ``FakeIAM.transport``; that emulator accepts any key, and knows the
  README's trusted profile.
- What a reader's machine would have: ``IBMCLOUD_API_KEY`` set; the working directory holding the
  ``ibm-credentials.env`` the README shows; a compute-resource token where a platform mounts one
  (the first of IBM's default locations is pointed at a file holding one the emulator accepts).
- ``aiohttp.ClientSession`` gets a last middleware that sends requests for IBM Cloud hosts, with
  the headers the example's middlewares set, to the same stand-in service served on loopback.
- ``httpx.AsyncClient`` made with no ``transport`` sends requests for IBM Cloud hosts to an
  in-process stand-in service that answers 200 only to a bearer token that emulator issued, and
  fails the test on anything else (so an example that stops sending its token fails here); requests
  to loopback (``FakeIAM.serve()``) go out for real; a request to any other host fails the test.
  The manager's own client is an ``httpx.AsyncClient`` too, so a manager pointed at loopback keeps
  talking to the emulator it was pointed at.

A block that raises fails its test; so does a complete program that defines ``async def`` code but
starts no event loop (it would run nothing), and a README whose ```python fences this file cannot
all find.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import ipaddress
import linecache
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import httpx
import pytest
from yarl import URL

import aioiam
import aioiam._sources.container
from aioiam.testing import FakeIAM
from aioiam.testing._server import serve_in_thread

README = Path(__file__).resolve().parent.parent / "README.md"
IBM_CLOUD_DOMAINS = ("cloud.ibm.com", "appdomain.cloud")
#: What a README fragment calls the reader's own API key.
GIVEN_NAMES: dict[str, Any] = {"api_key": "my-ibm-cloud-api-key"}


@dataclass(frozen=True)
class Block:
    """One ```python block of the README: where it starts and its code."""

    line: int  # the README line of its first line of code
    code: str


def python_blocks(text: str) -> list[Block]:
    """Every ```python fenced block of ``text``, in order."""
    return [
        Block(text.count("\n", 0, match.start("code")) + 1, match.group("code"))
        for match in re.finditer(r"^```python\n(?P<code>.*?)^```$", text, re.MULTILINE | re.DOTALL)
    ]


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def compiled(block: Block) -> Any:
    """``block`` compiled as README.md, at its own line numbers, with top-level ``await`` allowed."""
    filename = str(README)
    source = "\n" * (block.line - 1) + block.code
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)  # tracebacks
    return compile(source, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)


def imports_above(block: Block) -> str:
    """The import statements of the blocks above ``block``."""
    lines: list[str] = []
    for earlier in BLOCKS[: BLOCKS.index(block)]:
        for node in ast.parse(earlier.code).body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                lines.append(ast.unparse(node))
    return "\n".join(lines)


def is_ibm_cloud(host: str) -> bool:
    return any(host == domain or host.endswith(f".{domain}") for domain in IBM_CLOUD_DOMAINS)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeIAM]:
    """Stand in for IBM Cloud as the module docstring says; return the emulator playing IAM."""
    fake = FakeIAM(api_keys=None, profiles={"Profile-readme": "my-profile"})
    platform_token = tmp_path / "sa-token"
    platform_token.write_text(fake.cr_token)
    monkeypatch.setattr(aioiam._sources.container, "DEFAULT_CR_TOKEN_FILES", (str(platform_token),))
    monkeypatch.setenv("IBMCLOUD_API_KEY", GIVEN_NAMES["api_key"])
    for name in ("IBM_CREDENTIALS_FILE", "VCAP_SERVICES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ibm-credentials.env").write_text(credentials_file_shown())

    class EmulatedIAM(aioiam.TokenManager):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            source = kwargs.get("source")
            url = httpx.URL(getattr(source, "endpoint", None) or kwargs.get("url", "https://iam.cloud.ibm.com"))
            own = any(kwargs.get(name) is not None for name in ("transport", "http_client"))
            if url.scheme == "https" and is_ibm_cloud(url.host) and not own:
                kwargs["transport"] = fake.transport
            super().__init__(*args, **kwargs)

    def ibm_cloud_service(request: httpx.Request) -> httpx.Response:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if not fake.is_valid(token):
            raise AssertionError(f"a README example called {request.url} without a token FakeIAM issued")
        return httpx.Response(200, json={"resources": []})

    class Offline(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self._ibm_cloud = httpx.MockTransport(ibm_cloud_service)
            self._loopback = httpx.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if is_ibm_cloud(request.url.host):
                return await self._ibm_cloud.handle_async_request(request)
            if is_loopback(request.url.host):
                return await self._loopback.handle_async_request(request)
            raise AssertionError(f"a README example tried to reach {request.url.host}")

        async def aclose(self) -> None:
            await self._loopback.aclose()

    class OfflineClient(httpx.AsyncClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if kwargs.get("transport") is None and not kwargs.get("mounts"):
                kwargs["transport"] = Offline()
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(aioiam, "TokenManager", EmulatedIAM)
    monkeypatch.setattr(httpx, "AsyncClient", OfflineClient)

    refused: list[str] = []  # what the stand-in served on loopback refused: the example may not raise

    async def served(request: httpx.Request) -> httpx.Response:
        try:
            return ibm_cloud_service(request)
        except AssertionError as exc:
            refused.append(str(exc))
            return httpx.Response(401)

    with serve_in_thread(served) as stand_in:
        monkeypatch.setattr(aiohttp, "ClientSession", offline_aiohttp_session(stand_in.url))
        yield fake
    assert refused == []


def credentials_file_shown() -> str:
    """The ``ibm-credentials.env`` the README shows (its ```sh block that names the file)."""
    text = README.read_text(encoding="utf-8")
    for match in re.finditer(r"^```sh\n(?P<code>.*?)^```$", text, re.MULTILINE | re.DOTALL):
        if match.group("code").startswith("# ./ibm-credentials.env"):
            return match.group("code")
    raise AssertionError("README.md shows no ibm-credentials.env")


def offline_aiohttp_session(stand_in: str) -> Callable[..., aiohttp.ClientSession]:
    """``aiohttp.ClientSession`` whose requests to IBM Cloud, once every middleware of the
    example's has run (so with the token it set), go to the stand-in service on loopback instead;
    loopback goes out as is, and any other host fails the test."""
    base = URL(stand_in)

    async def reroute(request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
        host = request.url.host or ""
        if is_ibm_cloud(host):
            request.url = base.with_path(request.url.path).with_query(request.url.query)
        elif not is_loopback(host):
            raise AssertionError(f"a README example tried to reach {host}")
        return await handler(request)

    session = aiohttp.ClientSession  # aiohttp discourages subclassing it: wrap it instead

    def offline_session(*args: Any, middlewares: Sequence[Any] = (), **kwargs: Any) -> aiohttp.ClientSession:
        return session(*args, middlewares=(*middlewares, reroute), **kwargs)

    return offline_session


def test_every_python_fence_is_found() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(BLOCKS) == text.count("```python") >= 3


@pytest.fixture
def loops_run(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records each event loop a block starts with ``anyio.run`` or ``asyncio.run``."""
    started: list[str] = []
    for module in (anyio, asyncio):
        run = module.run

        def counting(*args: Any, _run: Any = run, _name: str = module.__name__, **kwargs: Any) -> Any:
            started.append(_name)
            return _run(*args, **kwargs)

        monkeypatch.setattr(module, "run", counting)
    return started


@pytest.mark.parametrize("block", BLOCKS, ids=[f"README.md:{block.line}" for block in BLOCKS])
def test_readme_example_runs(block: Block, offline: FakeIAM, loops_run: list[str]) -> None:
    code = compiled(block)
    if not code.co_flags & inspect.CO_COROUTINE:
        exec(code, {"__name__": "__main__"})  # noqa: S102 (the README's own code)
        defines_async = any(isinstance(node, ast.AsyncFunctionDef) for node in ast.parse(block.code).body)
        assert loops_run or not defines_async, "the example defines async code but never runs it"
        return
    namespace: dict[str, Any] = {"__name__": "__main__", **GIVEN_NAMES}
    exec(imports_above(block), namespace)  # noqa: S102
    asyncio.run(eval(code, namespace))  # noqa: S307 (a coroutine, as python -m asyncio runs it)
