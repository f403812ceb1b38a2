"""The ``aioiam demo`` command: on virtual time in process, and once for real as a subprocess."""

from __future__ import annotations

import subprocess
import sys

import anyio
import pytest

from aioiam import _cli
from aioiam._cli import DemoReport, main, run_demo


@pytest.mark.anyio
async def test_demo_rides_out_the_outage_with_one_request_in_flight() -> None:
    lines: list[str] = []
    # The outage runs from 5.1 s to 7.5 s, across the refresh of the token obtained at 3 s.
    report = await run_demo(workers=50, seconds=15, lifetime=6, latency=0.05, out=lines.append, seed=1)
    assert report.ok
    assert report.caller_errors == 0
    assert report.failed_attempts >= 1  # the outage really happened during a refresh
    assert report.tokens_issued >= 5  # first token plus a refresh every ~3 s
    assert report.longest_wait_after_first == 0  # virtual time: nobody waited for IAM after the first token
    assert report.first_token_wait == pytest.approx(0.05, abs=1e-6)
    assert any("IAM goes down" in line for line in lines)
    assert any("IAM is back" in line for line in lines)
    assert any("refresh failed" in line and "still serving" in line for line in lines)
    assert lines[-1].startswith("OK")
    assert anyio.current_time() >= 15


def test_demo_command_runs_for_real() -> None:
    """The console entry point end to end, on the real clock in a process of its own.

    With ten-minute tokens nothing in the half-second run depends on how fast the machine is
    (no refresh, no outage; the first request has the default 10 s): the outage is the test above.
    """
    result = subprocess.run(
        [sys.executable, "-m", "aioiam", "demo", "--workers", "20", "--seconds", "0.5", "--lifetime", "600"],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "callers served" in result.stdout
    assert "tokens the service refused 0" in result.stdout
    assert "OK:" in result.stdout


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``main(argv)``, check it is an argparse usage error (exit 2, nothing on stdout), return stderr."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("usage: aioiam")
    return err


def test_cli_without_a_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error([], capsys)
    assert err.splitlines()[-1] == "aioiam: error: no command given (try 'aioiam demo', or 'aioiam --help')"


def test_cli_rejects_an_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(["bench"], capsys)
    assert "invalid choice: 'bench'" in err.splitlines()[-1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workers", "-5"], "argument --workers: must be a whole number at least 1, got '-5'"),
        (["--workers", "0"], "argument --workers: must be a whole number at least 1, got '0'"),
        (["--workers", "2.5"], "argument --workers: expected a whole number at least 1, got '2.5'"),
        (["--seconds", "0"], "argument --seconds: must be a finite number greater than 0, got '0'"),
        (["--seconds", "nan"], "argument --seconds: must be a finite number greater than 0, got 'nan'"),
        (["--lifetime", "inf"], "argument --lifetime: must be a finite number greater than 0, got 'inf'"),
        (["--latency", "-0.1"], "argument --latency: must be a finite number at least 0, got '-0.1'"),
        (["--backend", "curio"], "argument --backend: invalid choice: 'curio'"),
    ],
)
def test_cli_rejects_nonsense_options(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(["demo", *argv], capsys)
    assert err.startswith("usage: aioiam demo")
    assert err.splitlines()[-1].startswith(f"aioiam demo: error: {message}")


def test_cli_accepts_the_edges_of_each_range(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, float, float, float]] = []

    async def fake_run_demo(*, workers: int, seconds: float, lifetime: float, latency: float) -> DemoReport:
        seen.append((workers, seconds, lifetime, latency))
        return DemoReport()

    monkeypatch.setattr(_cli, "run_demo", fake_run_demo)
    assert main(["demo", "--workers", "1", "--seconds", "0.001", "--lifetime", "0.001", "--latency", "0"]) == 0
    assert seen == [(1, 0.001, 0.001, 0.0)]


def test_demo_on_trio_without_trio_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not _cli._trio_missing()  # installed for the tests: the check sees it
    monkeypatch.setitem(sys.modules, "trio", None)  # ``import trio`` now raises ImportError
    assert _cli._trio_missing()

    def must_not_run(*args: object, **kwargs: object) -> object:
        raise AssertionError("the demo started without its backend")

    monkeypatch.setattr(anyio, "run", must_not_run)  # the module _cli calls
    assert main(["demo", "--backend", "trio"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "aioiam demo: error: trio is not installed; pip install trio, or use --backend asyncio\n"
