"""Every example in README.md and on the documentation site (docs/) runs, as written, offline.

Every fenced code block of README.md and of each page under docs/ is one of these:

- **Python** (```python): run, as described below.
- **Shell** (```sh or ```bash): run with bash, as described below.
- **A file**: any block with a title (```ini title="ibm-credentials.env"```) is written, under that
  name, into the working directory of the page's examples: a credentials file the examples read,
  a ``pytest.ini``, an ``app.py`` that a test file imports.
- **Shown**: configuration or output that is not a program (```yaml, ```json, ```ini, ```text).
- **Not run, with the reason in the page source**: a block right after an HTML comment
  ``<!-- not run: REASON -->`` (on the last line before the fence). Each is reported as a skip with
  its reason (the suite runs with ``-ra``), and ``test_the_not_run_examples_are_the_few_listed``
  counts and lists them, so adding one is a decision.

A block in any other language fails the suite, and so does a page whose fences this file cannot
all parse: no example goes unnoticed.

How Python runs:

- A page with a titled test module (``test_*.py``) is a **pytest project**: its titled files are
  written to a fresh directory (with a ``pytest.ini`` setting pytest-asyncio's loop scope if the
  page has none) and pytest runs them in a subprocess, with aioiam's plugin loaded by hand (see
  tests/test_pytest_plugin.py for why ``-p no:aioiam -p aioiam.testing.pytest_plugin``). Every
  test must pass. These files use the ``fake_iam`` fixture or ``FakeIAM`` themselves: nothing is
  substituted for them.
- A **service** (a block that defines a module-level ``app``, an ASGI application) is imported as
  the module its title names (``app.py``: ``app``), started with its lifespan (``asgi-lifespan``),
  and asked once, through ``httpx.ASGITransport``, for each of its GET routes without path
  parameters (FastAPI's own documentation routes aside): each must answer 200.
- A **complete program** (no top-level ``await``, and every name it uses defined in it) runs alone,
  in a fresh ``__main__`` namespace, as ``python example.py`` would run it. If it defines
  ``async def`` code it must start an event loop (``anyio.run``, ``asyncio.run`` or ``trio.run``).
- A **fragment** (top-level ``await``, or names it does not define) runs the way the asyncio REPL
  (``python -m asyncio``) would run it, after the imports of the blocks above it on the same page,
  with the names the pages give the reader's own things: ``api_key`` (their API key), ``fake`` (a
  ``FakeIAM``) and ``access_token`` (a token they already have). A fragment that uses any other
  name it does not define fails.

What is substituted for Python (no block needs an IBM account or the network):

- ``aioiam.TokenManager`` made for IBM's IAM (its default URL, or any https URL on an IBM Cloud
  domain, given as ``url`` or by its source) or for a VPC instance's metadata service at its
  link-local address, with no ``transport`` or ``http_client`` of its own, talks to a
  :class:`FakeIAM` through ``FakeIAM.transport``. That emulator accepts any key, and knows the
  trusted profiles the pages use (``PROFILES``).
- What a reader's machine would have: ``IBMCLOUD_API_KEY`` set; ``HOME`` and the working
  directory an empty directory holding the page's titled files; a compute-resource token where a
  platform mounts one (IBM's default locations, and any file under ``/var/run/secrets/`` an example
  names, read from a file holding one the emulator accepts).
- ``aiohttp.ClientSession`` gets a last middleware that sends requests for IBM Cloud hosts, with
  the headers the example's middlewares set, to the same stand-in service served on loopback.
- ``httpx.AsyncClient`` made with no ``transport`` sends requests for IAM's hosts
  (``iam.cloud.ibm.com``, ``private.iam.cloud.ibm.com``...) to that emulator (an example may pass
  a client of its own to a manager), requests for other IBM Cloud hosts to an in-process stand-in
  service that answers 200 (``{"resources": []}``) only to a bearer token that
  emulator issued, and fails the test on anything else (so an example that stops sending its token
  fails here); requests to loopback go out for real; a request to any other host fails the test.
  The manager's own client is an ``httpx.AsyncClient`` too, so a manager pointed at loopback keeps
  talking to the emulator it was pointed at.

How shell runs: each block with ``bash`` (``set -euo pipefail``), in its page's working directory
(which holds the page's titled files), with ``aioiam`` and ``python`` on ``PATH`` running this copy
of aioiam, with no IBM Cloud credentials (``IBMCLOUD_API_KEY``, ``IBM_CREDENTIALS_FILE`` and
``VCAP_SERVICES`` unset, ``HOME`` an empty directory), and with the variables the page's earlier
blocks exported (one terminal per page). A block that is a single ``aioiam fake-iam`` command is
started in the background, as in a second terminal, and serves the page's later blocks until the
tests end. Port 8080, which the pages use for it, is replaced by a free port.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import inspect
import ipaddress
import linecache
import logging
import os
import re
import shlex
import socket
import subprocess
import symtable
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import httpx
import pytest
import trio
from yarl import URL

import aioiam
import aioiam._sources.container
from aioiam._sources.vpc import DEFAULT_METADATA_URL
from aioiam.testing import FakeIAM
from aioiam.testing._redis_server import RedisServer
from aioiam.testing._server import serve_in_thread

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
IBM_CLOUD_DOMAINS = ("cloud.ibm.com", "appdomain.cloud")
#: The trusted profiles the pages use (id: name), in the account the pages use.
PROFILES = {"Profile-9d3c5e1a": "my-profile", "Profile-4f8b2d6c": "deployer"}
ACCOUNT_ID = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
PLATFORM_TOKENS = "/var/run/secrets/"

PYTHON = {"python", "py"}
SHELL = {"sh", "bash"}
SHOWN = {"yaml", "json", "ini", "toml", "text"}
NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<reason>\S.*?)\s*-->")
FENCE = re.compile(
    r"^(?P<indent>[ ]*)(?P<fence>```+)(?P<info>[^\n`]*)\n(?P<code>.*?)^(?P=indent)(?P=fence)[ ]*$",
    re.MULTILINE | re.DOTALL,
)
PYTEST_FLAGS = ("-p", "no:aioiam", "-p", "aioiam.testing.pytest_plugin", "-p", "no:cacheprovider", "-W", "error")
DEFAULT_INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
#: The port the pages run ``aioiam fake-iam`` on; replaced by a free one here.
PAGE_PORT = "8080"
SERVER_COMMAND = re.compile(r"\A\s*aioiam fake-iam(?: [^\n;&|]*)?\s*(?:#[^\n]*)?\Z")
#: FastAPI's documentation routes: not the example's own.
FRAMEWORK_ROUTES = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int  # the page line of its first line of code
    lang: str
    title: str | None
    code: str
    not_run: str | None  # the reason given in the page source, if it is not run

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def parse(page: Path) -> list[Block]:
    """Every fenced block of ``page``, in order (indented fences inside lists and admonitions too)."""
    text = page.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        info = match["info"].strip()
        lang = info.split()[0] if info else ""
        title = re.search(r'title="(?P<title>[^"]+)"', info)
        before = [line.strip() for line in text[: match.start()].splitlines() if line.strip()]
        marker = NOT_RUN.fullmatch(before[-1]) if before else None
        indent = len(match["indent"])
        code = "".join(line[indent:] for line in match["code"].splitlines(keepends=True))
        blocks.append(
            Block(
                page=page,
                line=text.count("\n", 0, match.start("code")) + 1,
                lang=lang,
                title=title["title"] if title else None,
                code=code,
                not_run=marker["reason"] if marker else None,
            )
        )
    return blocks


BLOCKS = [block for page in PAGES for block in parse(page)]


def free_names(code: str) -> set[str]:
    """The names ``code`` uses but neither defines at its top level nor gets from builtins."""
    table = symtable.symtable(code, "<block>", "exec")
    defined = {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported() or s.is_namespace()}
    used: set[str] = set()

    def walk(scope: symtable.SymbolTable) -> None:
        for symbol in scope.get_symbols():
            if symbol.is_referenced() and (scope is table or symbol.is_global()):
                used.add(symbol.get_name())
        for child in scope.get_children():
            walk(child)

    walk(table)
    return used - defined - set(dir(builtins))


def compiled(block: Block) -> types.CodeType:
    """``block`` compiled as its page, at its own line numbers, with top-level ``await`` allowed."""
    filename = str(block.page)
    source = "\n" * (block.line - 1) + block.code
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)  # tracebacks
    code: types.CodeType = compile(source, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    return code


def defines_app(block: Block) -> bool:
    for node in ast.parse(block.code).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(isinstance(target, ast.Name) and target.id == "app" for target in targets):
            return True
    return False


def is_test_name(name: str) -> bool:
    return Path(name).name.startswith("test_") and name.endswith(".py")


def is_test_file(block: Block) -> bool:
    return block.lang in PYTHON and block.title is not None and is_test_name(block.title)


def pytest_pages() -> list[Path]:
    return sorted({block.page for block in BLOCKS if is_test_file(block) and block.not_run is None})


def kind(block: Block) -> str:
    """What the suite does with ``block``: not run, pytest, service, program, fragment, shell, file, shown."""
    if block.not_run is not None:
        return "not run"
    if block.lang in PYTHON:
        if defines_app(block):
            return "service"
        if block.page in pytest_pages() and block.title is not None:
            return "pytest"
        code = compiled(block)
        if code.co_flags & inspect.CO_COROUTINE or free_names(block.code):
            return "fragment"
        return "program"
    if block.lang in SHELL and block.title is None:
        return "shell"
    if block.title is not None:
        return "file"
    if block.lang in SHOWN:
        return "shown"
    raise AssertionError(f"{block.where}: a ```{block.lang or '(no language)'} block, which this suite cannot place")


def page_files(page: Path) -> dict[str, str]:
    """The titled blocks of ``page``: file name to content."""
    return {block.title: block.code for block in BLOCKS if block.page == page and block.title is not None}


def imports_above(block: Block) -> str:
    """The import statements of the Python blocks above ``block`` on its page."""
    lines: list[str] = []
    for earlier in BLOCKS[: BLOCKS.index(block)]:
        if earlier.page == block.page and earlier.lang in PYTHON and earlier.not_run is None:
            for node in ast.parse(earlier.code).body:
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    lines.append(ast.unparse(node))
    return "\n".join(lines)


def blocks_of(*kinds: str) -> list[Any]:
    return [pytest.param(block, id=block.where) for block in BLOCKS if kind(block) in kinds]


# ---------------------------------------------------------------------------------- the inventory


def test_every_fence_is_parsed_and_placed() -> None:
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        fences = len(re.findall(r"^[ ]*```", text, re.MULTILINE))
        found = [block for block in BLOCKS if block.page == page]
        assert fences == 2 * len(found), f"{page.relative_to(ROOT)}: {fences} fence lines, {len(found)} blocks parsed"
        titles = [block.title for block in found if block.title is not None]
        assert len(titles) == len(set(titles)), f"{page.relative_to(ROOT)}: two blocks with one title"
    kinds = [kind(block) for block in BLOCKS]  # raises for a block in a language it cannot place
    assert kinds.count("program") + kinds.count("service") >= 10


#: Every block the suite does not run, by page, with the reason its page gives. Keep it short.
EXPECTED_NOT_RUN = {
    "README.md": 2,  # the two commands at the top: they install from PyPI
    "docs/benchmarks.md": 1,  # the benchmarks themselves (minutes)
    "docs/cli.md": 1,  # curl to IBM Cloud with a real key
    "docs/design.md": 1,  # aioiam's own suite and CI
    "docs/failures.md": 1,  # aioiam's own fault matrix and soak
    "docs/getting-started.md": 1,  # pip install from PyPI
    "docs/fleet.md": 2,  # pip install from PyPI; a Sentinel's primary as client= (needs Sentinel servers)
}


def test_the_not_run_examples_are_the_few_listed() -> None:
    not_run = [block for block in BLOCKS if block.not_run is not None]
    listing = "\n".join(f"  {block.where}: {block.not_run}" for block in not_run)
    by_page: dict[str, int] = {}
    for block in not_run:
        name = str(block.page.relative_to(ROOT))
        by_page[name] = by_page.get(name, 0) + 1
    assert by_page == EXPECTED_NOT_RUN, f"the blocks not run changed:\n{listing}"
    print(f"\n{len(not_run)} of {len(BLOCKS)} blocks not run:\n{listing}")


@pytest.mark.parametrize("block", blocks_of("not run"))
def test_not_run(block: Block) -> None:
    """Reported as a skip, with the reason the page gives."""
    pytest.skip(f"{block.where} not run: {block.not_run}")


# ------------------------------------------------------------------------- standing in for IBM


def is_ibm_cloud(host: str) -> bool:
    return any(host == domain or host.endswith(f".{domain}") for domain in IBM_CLOUD_DOMAINS)


def is_iam(host: str) -> bool:
    """IAM's own hosts: iam.cloud.ibm.com, private.iam.cloud.ibm.com, iam.test.cloud.ibm.com..."""
    return is_ibm_cloud(host) and host.split(".")[0] in ("iam", "private")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Offline:
    """What the ``offline`` fixture stands up."""

    fake: FakeIAM
    workdir: Path
    given: dict[str, Any] = field(default_factory=dict)


def issued_token(fake: FakeIAM) -> str:
    """A token ``fake`` issued, got through its transport (as a reader's token was got from IAM)."""

    async def get() -> str:
        tm = aioiam.TokenManager("my-ibm-cloud-api-key", url="http://127.0.0.1", transport=fake.transport)
        try:
            return await tm.get_token()
        finally:
            await tm.aclose()

    return anyio.run(get)


@pytest.fixture(scope="session")
def example_redis() -> Iterator[RedisServer]:
    """A throwaway redis-server on loopback for the fleet examples; started only if one needs it."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Offline]:
    """Stand in for IBM Cloud as the module docstring says, in ``tmp_path`` holding the page's files."""
    block: Block = request.node.callspec.params["block"]
    fake = FakeIAM(api_keys=None, profiles=PROFILES, account_id=ACCOUNT_ID, vpc_default_profile="Profile-9d3c5e1a")
    platform_token = tmp_path / "platform" / "sa-token"
    platform_token.parent.mkdir()
    platform_token.write_text(fake.cr_token)
    monkeypatch.setattr(aioiam._sources.container, "DEFAULT_CR_TOKEN_FILES", (str(platform_token),))
    monkeypatch.setenv("IBMCLOUD_API_KEY", "my-ibm-cloud-api-key")
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("IBM_CREDENTIALS_FILE", "VCAP_SERVICES"):
        monkeypatch.delenv(name, raising=False)
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    for name, content in page_files(block.page).items():
        if not is_test_name(name):
            (workdir / name).write_text(content, encoding="utf-8")

    class MountedToken(aioiam.ContainerSource):
        def __init__(self, *, cr_token_file: str | os.PathLike[str] | None = None, **kwargs: Any) -> None:
            if cr_token_file is not None and os.fspath(cr_token_file).startswith(PLATFORM_TOKENS):
                cr_token_file = platform_token
            super().__init__(cr_token_file=cr_token_file, **kwargs)

    class EmulatedIAM(aioiam.TokenManager):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            source = kwargs.get("source")
            if isinstance(source, aioiam.VPCInstanceSource):
                emulated = f"metadata_url='{DEFAULT_METADATA_URL}'" in repr(source)
            else:
                url = httpx.URL(getattr(source, "endpoint", None) or kwargs.get("url", "https://iam.cloud.ibm.com"))
                emulated = url.scheme == "https" and is_ibm_cloud(url.host)
            own = any(kwargs.get(name) is not None for name in ("transport", "http_client"))
            if emulated and not own:
                kwargs["transport"] = fake.transport
            super().__init__(*args, **kwargs)

    def ibm_cloud_service(request: httpx.Request) -> httpx.Response:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if not fake.is_valid(token):
            raise AssertionError(f"an example called {request.url} without a token FakeIAM issued")
        return httpx.Response(200, json={"resources": []})

    class OfflineTransport(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self._ibm_cloud = httpx.MockTransport(ibm_cloud_service)
            self._loopback = httpx.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if is_iam(request.url.host):  # a client of the example's own, passed to a manager
                return await fake.transport.handle_async_request(request)
            if is_ibm_cloud(request.url.host):
                return await self._ibm_cloud.handle_async_request(request)
            if is_loopback(request.url.host):
                return await self._loopback.handle_async_request(request)
            raise AssertionError(f"an example tried to reach {request.url.host}")

        async def aclose(self) -> None:
            await self._loopback.aclose()

    class OfflineClient(httpx.AsyncClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if kwargs.get("transport") is None and not kwargs.get("mounts"):
                kwargs["transport"] = OfflineTransport()
            super().__init__(*args, **kwargs)

    if "RedisTokenCache" in block.code:  # fleet mode: a real Redis on loopback stands in for the fleet's
        redis = request.getfixturevalue("example_redis")
        cache_class = aioiam.RedisTokenCache

        def local_redis(url: str = "redis://localhost:6379/0", **options: Any) -> aioiam.RedisTokenCache:
            return cache_class(redis.url, **options)

        monkeypatch.setattr(aioiam, "RedisTokenCache", local_redis)
    monkeypatch.setattr(aioiam, "TokenManager", EmulatedIAM)
    monkeypatch.setattr(aioiam, "ContainerSource", MountedToken)
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
        yield Offline(fake, workdir, {"api_key": "my-ibm-cloud-api-key", "fake": fake})
    assert refused == []


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
            raise AssertionError(f"an example tried to reach {host}")
        return await handler(request)

    session = aiohttp.ClientSession  # aiohttp discourages subclassing it: wrap it instead

    def offline_session(*args: Any, middlewares: Sequence[Any] = (), **kwargs: Any) -> aiohttp.ClientSession:
        return session(*args, middlewares=(*middlewares, reroute), **kwargs)

    return offline_session


@pytest.fixture(autouse=True)
def logging_restored() -> Iterator[None]:
    """What an example does to logging (``basicConfig``, the ``aioiam`` logger's level) ends with it."""
    loggers = [logging.getLogger(), logging.getLogger("aioiam")]
    saved = [(logger.level, list(logger.handlers), logger.propagate, logger.disabled) for logger in loggers]
    yield
    for logger, (level, handlers, propagate, disabled) in zip(loggers, saved, strict=True):
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.propagate = propagate
        logger.disabled = disabled


@pytest.fixture
def loops_run(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records each event loop a block starts with ``anyio.run``, ``asyncio.run`` or ``trio.run``."""
    started: list[str] = []
    for module in (anyio, asyncio, trio):
        run = module.run

        def counting(*args: Any, _run: Any = run, _name: str = module.__name__, **kwargs: Any) -> Any:
            started.append(_name)
            return _run(*args, **kwargs)

        monkeypatch.setattr(module, "run", counting)
    return started


# ---------------------------------------------------------------------------------------- Python


@pytest.mark.parametrize("block", blocks_of("program", "fragment"))
def test_python_example_runs(block: Block, offline: Offline, loops_run: list[str]) -> None:
    code = compiled(block)
    if kind(block) == "program":
        exec(code, {"__name__": "__main__"})  # noqa: S102 (the page's own code)
        defines_async = any(isinstance(node, ast.AsyncFunctionDef) for node in ast.walk(ast.parse(block.code)))
        assert loops_run or not defines_async, "the example defines async code but never runs it"
        return
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(imports_above(block), namespace)  # noqa: S102
    given = dict(offline.given)
    if "access_token" in free_names(block.code):
        given["access_token"] = issued_token(offline.fake)
    unknown = free_names(block.code) - set(namespace) - set(given)
    assert not unknown, f"the fragment uses {sorted(unknown)}, which neither it, its page nor this suite defines"
    namespace.update(given)
    if code.co_flags & inspect.CO_COROUTINE:
        asyncio.run(eval(code, namespace))  # noqa: S307 (a coroutine, as python -m asyncio runs it)
    else:
        exec(code, namespace)  # noqa: S102


@pytest.mark.parametrize("block", blocks_of("service"))
def test_service_example_serves(block: Block, offline: Offline, monkeypatch: pytest.MonkeyPatch) -> None:
    from asgi_lifespan import LifespanManager
    from starlette.routing import Route

    name = Path(block.title or "app.py").stem
    module = types.ModuleType(name)
    module.__file__ = str(offline.workdir / f"{name}.py")
    monkeypatch.setitem(sys.modules, name, module)
    exec(compiled(block), module.__dict__)  # noqa: S102 (the page's own code)
    app = module.app
    paths = [
        route.path
        for route in app.routes
        if isinstance(route, Route)
        and "GET" in (route.methods or ())
        and "{" not in route.path
        and route.path not in FRAMEWORK_ROUTES
    ]
    assert paths, "the service has no GET route to ask"

    async def serve_once() -> None:
        async with LifespanManager(app) as started:
            transport = httpx.ASGITransport(app=started.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
                for path in paths:
                    response = await client.get(path)
                    assert response.status_code == 200, (path, response.status_code, response.text)

    anyio.run(serve_once)
    assert offline.fake.requests >= 1


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """Pytester whose subprocesses import this copy of aioiam, with no IBM credentials around."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    for name in ("IBMCLOUD_API_KEY", "IBM_CREDENTIALS_FILE", "VCAP_SERVICES"):
        monkeypatch.delenv(name, raising=False)
    return pytester


@pytest.mark.parametrize("page", pytest_pages(), ids=[str(page.relative_to(ROOT)) for page in pytest_pages()])
def test_pytest_example_files_pass(page: Path, project: pytest.Pytester) -> None:
    files = page_files(page)
    files.setdefault("pytest.ini", DEFAULT_INI)
    for name, content in files.items():
        project.path.joinpath(name).write_text(content, encoding="utf-8")
    result = project.runpytest_subprocess(*PYTEST_FLAGS, "-v", timeout=120)
    outcomes = result.parseoutcomes()
    assert set(outcomes) == {"passed"}, result.stdout.str()
    tests = sum(code.count("\ndef test_") + code.count("\nasync def test_") for code in files.values())
    assert outcomes["passed"] >= tests, result.stdout.str()


# ----------------------------------------------------------------------------------------- shell


@dataclass
class Terminal:
    """One page's shell: its directory, its exported variables, its emulators in the background."""

    workdir: Path
    port: str
    state: Path
    servers: list[subprocess.Popen[str]] = field(default_factory=list)
    started: set[int] = field(default_factory=set)


def free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


@pytest.fixture(scope="module")
def terminals(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[Path, Terminal]]:
    opened: dict[Path, Terminal] = {}
    yield opened
    for terminal in opened.values():
        for server in terminal.servers:
            server.terminate()
            server.wait(timeout=10)
            assert server.stdout is not None
            server.stdout.close()


@pytest.fixture(scope="module")
def shell_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of the pages' shells: this aioiam and Python first on PATH, no credentials."""
    bin_dir = tmp_path_factory.mktemp("bin")
    for name, command in (("aioiam", f"{shlex.quote(sys.executable)} -m aioiam"), ("python", sys.executable)):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec {command if name == "aioiam" else shlex.quote(command)} "$@"\n')
        shim.chmod(0o755)
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("IBMCLOUD_API_KEY", "IBM_CREDENTIALS_FILE", "VCAP_SERVICES")
    }
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env["HOME"] = str(tmp_path_factory.mktemp("home"))
    return env


def terminal_for(page: Path, terminals: dict[Path, Terminal], factory: pytest.TempPathFactory) -> Terminal:
    if page not in terminals:
        workdir = factory.mktemp(page.stem)
        for name, content in page_files(page).items():
            (workdir / name).write_text(content, encoding="utf-8")
        terminals[page] = Terminal(workdir, free_port(), workdir / ".exported")
    return terminals[page]


def start_server(block: Block, terminal: Terminal, env: dict[str, str]) -> None:
    command = block.code.replace(PAGE_PORT, terminal.port).split("#")[0].strip()
    server = subprocess.Popen(  # noqa: S603 (the page's own command)
        ["bash", "-c", f"exec {command}"],  # noqa: S607
        cwd=terminal.workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    terminal.servers.append(server)
    terminal.started.add(block.line)
    assert server.stdout is not None
    first = server.stdout.readline()
    assert first.startswith("FakeIAM serving on"), f"{block.where}: {first!r}"


@pytest.mark.parametrize("block", blocks_of("shell"))
def test_shell_example_runs(
    block: Block,
    terminals: dict[Path, Terminal],
    shell_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    terminal = terminal_for(block.page, terminals, tmp_path_factory)
    for earlier in BLOCKS[: BLOCKS.index(block)]:  # the emulators above it, even when run alone (-k)
        is_server = earlier.page == block.page and kind(earlier) == "shell" and SERVER_COMMAND.match(earlier.code)
        if is_server and earlier.line not in terminal.started:
            start_server(earlier, terminal, shell_env)
    if SERVER_COMMAND.match(block.code):
        if block.line not in terminal.started:
            start_server(block, terminal, shell_env)
        return
    script = (
        f"if [ -f {shlex.quote(str(terminal.state))} ]; then source {shlex.quote(str(terminal.state))}; fi\n"
        "set -euo pipefail\n"
        f"{block.code.replace(PAGE_PORT, terminal.port)}\n"
        f"export -p > {shlex.quote(str(terminal.state))}\n"
    )
    result = subprocess.run(  # noqa: S603 (the page's own commands)
        ["bash", "-c", script],  # noqa: S607
        cwd=terminal.workdir,
        env=shell_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{block.where} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"


# ------------------------------------------------------------------------- the reference pages


def page_text(name: str) -> str:
    return (ROOT / "docs" / name).read_text(encoding="utf-8")


def test_the_api_reference_documents_every_public_name() -> None:
    import aioiam.aiohttp
    import aioiam.testing

    documented = set(re.findall(r"^::: ([\w.]+)$", page_text("api.md"), re.MULTILINE))
    public = {f"aioiam.{name}" for name in aioiam.__all__}
    public |= {f"aioiam.aiohttp.{name}" for name in aioiam.aiohttp.__all__}
    public |= {f"aioiam.testing.{name}" for name in aioiam.testing.__all__}
    public.add("aioiam.testing.pytest_plugin.fake_iam")
    assert public - documented == set()


def test_the_cli_reference_names_every_command_option_and_exit_status() -> None:
    import argparse

    from aioiam._cli import arguments, parser

    text = page_text("cli.md")
    top = parser()
    commands = next(action for action in top._actions if isinstance(action, argparse._SubParsersAction))
    for name, command in commands.choices.items():
        assert f"## aioiam {name}" in text
        for action in command._actions:
            if action.help == argparse.SUPPRESS:
                continue
            for option in action.option_strings or [str(action.metavar)]:
                assert f"`{option}" in text, f"aioiam {name} {option} is not on cli.md"
            if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
                shown = f"{action.default:g}" if isinstance(action.default, float) else str(action.default)
                assert f"| `{shown}`" in text or f"| `{shown}`:" in text, (name, action.dest, shown)
    for option in ("--version", "--help"):
        assert f"`aioiam {option}`" in text
    for status in (arguments.EXIT_USAGE, arguments.EXIT_CREDENTIALS, arguments.EXIT_UNAVAILABLE):
        assert f"\n| {status} |" in text


def test_the_configuration_reference_names_every_key() -> None:
    import dataclasses

    from aioiam._config import AUTH_TYPES, PROPERTIES

    text = page_text("settings.md")
    for parameter in inspect.signature(aioiam.TokenManager.__init__).parameters:
        if parameter != "self":
            assert f"`{parameter}`" in text, parameter
    for policy in (aioiam.RefreshPolicy, aioiam.RetryPolicy):
        for policy_field in dataclasses.fields(policy):
            assert f"| `{policy_field.name}` | `{policy_field.default}` |" in text, policy_field.name
    for name in PROPERTIES:
        assert f"`{name}`" in text, name
    for auth_type in AUTH_TYPES:
        assert auth_type in text.lower(), auth_type
    for variable in ("IBMCLOUD_API_KEY", "IBM_CREDENTIALS_FILE", "VCAP_SERVICES"):
        assert f"`{variable}`" in text


def test_the_errors_reference_names_every_exception() -> None:
    text = page_text("errors.md")
    for name in aioiam.__all__:
        if isinstance(getattr(aioiam, name), type) and issubclass(getattr(aioiam, name), Exception):
            assert f"| `{name}` |" in text, name
