"""The ``aioiam demo`` command: on virtual time in process, and once for real as a subprocess."""

from __future__ import annotations

import subprocess
import sys

import anyio
import pytest

import aioiam
from aioiam._cli import DemoReport, main, run_demo, summary
from aioiam._cli import arguments as cli_arguments
from aioiam._cli import demo as cli_demo


@pytest.mark.anyio
async def test_demo_rides_out_the_outage_with_one_request_in_flight() -> None:
    lines: list[str] = []
    report = await run_demo(workers=100, seconds=12, lifetime=6, latency=0.05, out=lines.append, seed=1)
    assert report.ok
    assert report.exit_status == 0
    assert report.max_in_flight == 1
    assert report.caller_errors == report.service_rejections == 0
    assert report.failed_attempts >= 1  # the outage really happened during a refresh
    assert report.tokens_issued == 4  # the first, one at half its life, one after the outage, one more
    assert report.iam_requests == report.tokens_issued + report.failed_attempts + report.cut_off
    assert report.workers_waiting == report.workers_served == 100  # all waited for the first token, all got it
    assert report.calls_after_first == report.calls - 100  # every call but each worker's first
    assert report.slow_calls == 0
    assert any(" first token: IAM answered in 50 ms, for 100 workers waiting" in line for line in lines)
    assert any("refresh failed" in line and "still serving" in line for line in lines)
    assert lines[-1].startswith("OK: at most one IAM request in flight;")
    assert lines[-1].endswith("; no caller errors; the outage ridden out.")


@pytest.mark.anyio
async def test_demo_narration_happens_when_the_header_says() -> None:
    """The outage in the header, the narration and the summary is one and the same."""
    lines: list[str] = []
    await run_demo(workers=10, seconds=8, lifetime=6, out=lines.append, seed=2)
    assert lines[1].endswith(
        "; tokens live 6 s, refreshed in the background from half their life; IAM down from 4.80 s to 6.90 s"
    )
    assert "  t=  4.80s  IAM goes down" in lines
    assert "  t=  6.90s  IAM is back" in lines
    assert [line.split() for line in lines if line.startswith("IAM down ")] == [
        ["IAM", "down", "2.10", "s", "from", "4.80", "s", "to", "6.90", "s"]
    ]
    failed_at = [float(line[4:10]) for line in lines if "token refresh failed" in line]
    assert failed_at
    assert all(4.8 <= at <= 6.9 for at in failed_at)


@pytest.mark.anyio
async def test_demo_says_not_ok_and_fails_when_callers_wait_for_iam() -> None:
    """An outage that outlasts the token: callers wait for IAM after the first token, and the demo says so."""
    lines: list[str] = []
    report = await run_demo(workers=20, seconds=8, lifetime=2, outage=(1.6, 5.0), out=lines.append, seed=3)
    assert report.caller_errors == 0  # they waited, within retry.timeout
    # Each worker's first call after the token went stale waits for IAM, still, when the run ends.
    assert report.slow_calls == report.slow_calls_for_iam == report.calls_unfinished == 20
    assert report.slow_calls_with_token == 0
    assert not report.ok
    assert report.exit_status == 1
    assert any("token request failed" in line for line in lines)  # no usable token left: callers wait
    assert lines[-1] == "NOT OK: 20 calls after the first token waited for IAM longer than 50 ms."


@pytest.mark.anyio
async def test_demo_puts_a_stall_with_a_token_in_hand_down_to_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call slowed while holding a usable token is reported, but is not aioiam's failure (exit status 0)."""
    offset = 0.0

    def clock() -> float:
        return anyio.current_time() + offset

    class StallingManager(aioiam.TokenManager):
        stalled = False

        async def get_token(self) -> str:
            nonlocal offset
            token = await super().get_token()
            if not self.stalled and anyio.current_time() > 2:  # the process stops for 0.1 s, once
                StallingManager.stalled = True
                offset += 0.1
            return token

    monkeypatch.setattr(cli_demo, "TokenManager", StallingManager)
    lines: list[str] = []
    report = await run_demo(workers=10, seconds=4, lifetime=6, clock=clock, out=lines.append, seed=4)
    assert StallingManager.stalled
    assert report.slow_calls == report.slow_calls_with_token == 1
    assert not report.ok
    assert report.exit_status == 0
    assert lines[-2] == (
        "NOT OK: 1 call took longer than 50 ms with a usable token in hand (the process was stalled: "
        "the machine, not IAM)."
    )
    assert lines[-1].startswith("Exit status 0 all the same")


def test_summary_aligns_its_columns_and_counts_in_words() -> None:
    report = DemoReport(
        workers=1,
        seconds=3,
        calls=12_345,
        iam_requests=3,
        tokens_issued=1,
        failed_attempts=1,
        cut_off=1,
        max_in_flight=2,
        first_answer_at=0.05,
        all_served_at=0.3,
        workers_waiting=1,
        workers_served=1,
        calls_after_first=12_344,
        slow_calls=2,
        slow_calls_with_token=1,
        caller_errors=1,
    )
    lines = summary(report)
    table = lines[:-1]
    right = table[0].index("12,345") + len("12,345")  # where the numbers end
    for line in table:
        assert line[right - 1] != " ", line
        assert line[right : right + 3] in ("", "   "), line
    assert table[0] == "calls served                 12,345   a token fetched, then a call to the service with it"
    assert table[1].endswith("   1 token, 1 failed attempt during the outage, 1 still in flight at the end")
    assert lines[3].endswith("   250 ms   from IAM's answer until the one worker had it")
    assert lines[-1] == (
        "NOT OK: 2 IAM requests in flight at once; 1 call after the first token waited for IAM longer than 50 ms; "
        "1 call took longer than 50 ms with a usable token in hand (the process was stalled: the machine, not IAM); "
        "1 caller error."
    )
    assert report.exit_status == 1
    crowd = summary(DemoReport(workers=2_000, first_answer_at=0.05, all_served_at=0.3, workers_waiting=2_000))
    first = next(i for i, line in enumerate(crowd) if line.startswith("first token"))
    assert crowd[first].endswith("   250 ms   from IAM's answer until all 2,000 workers had it")
    assert crowd[first + 1].strip() == "(each worker served starts its call before the next one runs)"
    assert summary(DemoReport(workers=2, tokens_issued=2, failed_attempts=3))[1].endswith(
        "   2 tokens, 3 failed attempts during the outage"
    )
    # A loaded machine can delay the refresh past the outage: the summary says it was not tested.
    missed = summary(DemoReport(workers=2, tokens_issued=2, outage_started=4.8, outage_ended=6.9))
    assert missed[1].endswith("   2 tokens, none while IAM was down: no refresh fell in the outage")
    assert not missed[-1].endswith("the outage ridden out.")


@pytest.mark.parametrize(
    ("report", "status"),
    [
        (DemoReport(), 0),
        (DemoReport(slow_calls=3, slow_calls_with_token=3), 0),  # the machine stalled, aioiam did not
        (DemoReport(slow_calls=3, slow_calls_with_token=2), 1),  # one waited for IAM
        (DemoReport(max_in_flight=2), 1),
        (DemoReport(caller_errors=1), 1),
        (DemoReport(service_rejections=1), 1),
        (DemoReport(workers=5, workers_served=4), 1),
        (DemoReport(caller_errors=1, slow_calls=1, slow_calls_with_token=1), 1),
    ],
)
def test_demo_exit_status_is_one_only_when_aioiam_broke_a_guarantee(
    report: DemoReport, status: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def fake_run_demo(**kwargs: object) -> DemoReport:
        return report

    monkeypatch.setattr(cli_demo, "run_demo", fake_run_demo)
    assert main(["demo"]) == status
    assert report.ok == (report.problems() == [])


def test_demo_command_runs_for_real() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aioiam", "demo", "--workers", "50", "--seconds", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "first token: IAM answered in" in result.stdout
    assert "all 50 workers have a token" in result.stdout
    # OK, or NOT OK only for stalls of a loaded machine with a token in hand (then the status is still 0).
    assert result.stdout.splitlines()[-1].startswith(("OK:", "Exit status 0")), result.stdout


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
    assert (
        err.splitlines()[-1]
        == "aioiam: error: no command given (try 'aioiam demo', 'aioiam token', or 'aioiam --help')"
    )


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

    monkeypatch.setattr(cli_demo, "run_demo", fake_run_demo)
    assert main(["demo", "--workers", "1", "--seconds", "0.001", "--lifetime", "0.001", "--latency", "0"]) == 0
    assert seen == [(1, 0.001, 0.001, 0.0)]


def test_demo_on_trio_without_trio_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not cli_arguments.trio_missing()  # installed for the tests: the check sees it
    monkeypatch.setitem(sys.modules, "trio", None)  # ``import trio`` now raises ImportError
    assert cli_arguments.trio_missing()

    def must_not_run(*args: object, **kwargs: object) -> object:
        raise AssertionError("the demo started without its backend")

    monkeypatch.setattr(anyio, "run", must_not_run)  # the module the demo command calls
    assert main(["demo", "--backend", "trio"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "aioiam demo: error: trio is not installed; pip install trio, or use --backend asyncio\n"
