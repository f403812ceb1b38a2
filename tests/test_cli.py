"""The ``aioiam demo`` command: on virtual time in process, and once for real as a subprocess."""

from __future__ import annotations

import subprocess
import sys

import anyio
import pytest

from aioiam._cli import main, run_demo


@pytest.mark.anyio
async def test_demo_rides_out_the_outage_with_one_request_in_flight() -> None:
    lines: list[str] = []
    report = await run_demo(workers=200, seconds=30, lifetime=6, latency=0.05, out=lines.append, seed=1)
    assert report.ok
    assert report.caller_errors == 0
    assert report.failed_attempts >= 1  # the outage really happened during a refresh
    assert report.tokens_issued >= 6  # first token plus a refresh every ~3 s
    assert report.longest_wait_after_first == 0  # virtual time: nobody waited for IAM after the first token
    assert report.first_token_wait == pytest.approx(0.05, abs=1e-6)
    assert any("IAM goes down" in line for line in lines)
    assert any("refresh failed" in line and "still serving" in line for line in lines)
    assert lines[-1].startswith("OK")
    assert anyio.current_time() >= 30


def test_demo_command_runs_for_real() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aioiam", "demo", "--workers", "50", "--seconds", "3", "--lifetime", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "callers served" in result.stdout
    assert "OK:" in result.stdout


def test_cli_without_a_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_cli_rejects_nonsense_options() -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--workers", "0"])
