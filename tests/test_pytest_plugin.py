"""The ``fake_iam`` fixture through pytest itself; the example in ``docs/testing.md`` runs exactly as written.

How the plugin is loaded here: every run is a pytest of its own in a subprocess (pytester's
``runpytest_subprocess``) given ``-p no:aioiam -p aioiam.testing.pytest_plugin``: the first flag
blocks the ``pytest11`` entry point named ``aioiam``, the second loads the module by hand. That
works whatever the installed copy of aioiam is: a checkout on ``PYTHONPATH``, an editable install
made before the entry point existed (no entry point), or an install that has it (without the
block, the entry point and ``-p`` would register the module twice, which pytest refuses). This
suite's own process never loads the plugin by hand (``pytest_plugins`` in a conftest would clash
in the same way once aioiam is installed).

That the entry point loads the plugin by itself is checked twice: ``pyproject.toml`` declares it,
and a run with neither flag finds the fixture, when the installed metadata has the entry point
(skipped while it does not, e.g. an editable install made before it was added: reinstall).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from pathlib import Path

import pytest

import aioiam

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "testing.md"
LOAD_BY_HAND = ("-p", "no:aioiam", "-p", "aioiam.testing.pytest_plugin")
TITLED_BLOCK = re.compile(r'^```\w+ title="(?P<name>[^"]+)"\n(?P<code>.*?)^```$', re.MULTILINE | re.DOTALL)
#: What a pytest-asyncio user's configuration holds (else pytest-asyncio warns, and warnings are errors here).
INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"


def doc_examples() -> dict[str, str]:
    """The code blocks of ``docs/testing.md`` that carry a file name (``python title="..."``, ``ini title="..."``)."""
    return {match["name"]: match["code"] for match in TITLED_BLOCK.finditer(DOC.read_text(encoding="utf-8"))}


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """Pytester whose subprocesses import this copy of aioiam, whatever the working directory."""
    package_root = str(Path(aioiam.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    return pytester


def run(pytester: pytest.Pytester, *args: str, load_by_hand: bool = True) -> pytest.RunResult:
    flags = LOAD_BY_HAND if load_by_hand else ()
    return pytester.runpytest_subprocess(*flags, "-p", "no:cacheprovider", "-W", "error", *args, timeout=50)


@pytest.mark.skipif(not DOC.exists(), reason="docs/ is not shipped with this copy of the tests")
def test_the_documented_example_files_pass_as_written(pytester: pytest.Pytester) -> None:
    examples = doc_examples()
    assert {"pytest.ini", "test_with_fake_iam.py", "test_in_process.py"} <= set(examples)
    assert examples["pytest.ini"] == INI
    for name, code in examples.items():
        pytester.path.joinpath(name).write_text(code, encoding="utf-8")
    result = run(pytester, "-v")
    # Newer anyio runs an unparametrized anyio test on every installed backend, older on asyncio only.
    assert set(result.parseoutcomes()) == {"passed"}, result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*test_in_process.py::test_a_refused_key_fails_at_once_and_is_not_retried*PASSED*",
            "*test_with_fake_iam.py::test_one_token_serves_every_call PASSED*",
            "*test_with_fake_iam.py::test_an_iam_outage_is_ridden_out[[]asyncio[]] PASSED*",
            "*test_with_fake_iam.py::test_an_iam_outage_is_ridden_out[[]trio[]] PASSED*",
        ]
    )


FIXTURE_BEHAVIOUR = """
import re

import httpx
import pytest

from aioiam.testing import FakeIAM

served: list[FakeIAM] = []
VERSION = {"version": "2022-03-01"}


def test_a_synchronous_test_gets_a_served_emulator(fake_iam: FakeIAM) -> None:
    assert re.fullmatch(r"http://127\\.0\\.0\\.1:[0-9]+", fake_iam.url)
    assert fake_iam.requests == 0
    with httpx.Client(base_url=fake_iam.url) as client:
        response = client.put(
            "/instance_identity/v1/token", params=VERSION, headers={"Metadata-Flavor": "ibm"}, json={"expires_in": 60}
        )
    assert response.status_code == 200
    assert fake_iam.requests_by_grant == {"vpc-identity": 1}
    served.append(fake_iam)


@pytest.mark.asyncio
async def test_each_test_gets_a_fresh_one_and_the_last_one_stopped(fake_iam: FakeIAM) -> None:
    [previous] = served
    assert fake_iam is not previous
    assert fake_iam.requests == 0
    with pytest.raises(RuntimeError, match="not being served"):
        previous.url
    form = {"grant_type": "urn:ibm:params:oauth:grant-type:cr-token", "cr_token": fake_iam.cr_token}
    async with httpx.AsyncClient(base_url=fake_iam.url) as client:
        answer = await client.post("/identity/token", data={**form, "profile_name": "test-profile"})
    assert answer.status_code == 200
    assert fake_iam.is_valid(answer.json()["access_token"])


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_switches_set_from_the_test_reach_the_server(fake_iam: FakeIAM, anyio_backend: str) -> None:
    form = {"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": fake_iam.api_key}
    async with httpx.AsyncClient(base_url=fake_iam.url) as client:
        fake_iam.down = True
        assert (await client.post("/identity/token", data=form)).status_code == 503
        fake_iam.down = False
        fake_iam.refusing = True
    async with httpx.AsyncClient(base_url=fake_iam.url) as client:
        with pytest.raises(httpx.ConnectError):
            await client.post("/identity/token", data=form)
        fake_iam.refusing = False
        assert (await client.post("/identity/token", data=form)).status_code == 200
    assert fake_iam.requests_by_grant == {"apikey": 2}
"""


def test_the_fixture_serves_a_fresh_emulator_per_test_on_every_runner(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_fixture_behaviour=FIXTURE_BEHAVIOUR)
    result = run(pytester, "-p", "no:randomly")
    result.assert_outcomes(passed=4)


def test_loading_the_plugin_imports_neither_trio_nor_pytest_asyncio(pytester: pytest.Pytester) -> None:
    code = (
        "import sys\n"
        "import aioiam.testing.pytest_plugin\n"
        "loaded = sorted({'trio', 'pytest_asyncio', 'anyio.pytest_plugin'} & set(sys.modules))\n"
        "print('loaded:', loaded)\n"
    )
    result = pytester.run(sys.executable, "-c", code, timeout=50)
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines(["loaded: []"])


def test_pyproject_declares_the_entry_point() -> None:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is new in Python 3.11")
    with (ROOT / "pyproject.toml").open("rb") as file:
        project = tomllib.load(file)["project"]
    assert project["entry-points"]["pytest11"] == {"aioiam": "aioiam.testing.pytest_plugin"}


def test_the_installed_entry_point_loads_the_plugin_by_itself(pytester: pytest.Pytester) -> None:
    points = [point for point in importlib.metadata.entry_points(group="pytest11") if point.name == "aioiam"]
    if not points:
        pytest.skip("the installed aioiam's metadata has no pytest11 entry point yet: reinstall aioiam")
    assert [point.value for point in points] == ["aioiam.testing.pytest_plugin"]
    pytester.makeini(INI)
    pytester.makepyfile(
        """
        def test_found(fake_iam):
            assert fake_iam.url.startswith("http://127.0.0.1:")
        """
    )
    result = run(pytester, load_by_hand=False)
    result.assert_outcomes(passed=1)
