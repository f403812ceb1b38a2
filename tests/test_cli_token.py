"""``aioiam token``, ``aioiam inspect`` and ``aioiam fake-iam``, through the installed entry point
(a subprocess running the ``aioiam`` console script) against the emulator served on loopback."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from aioiam._cli import main, parser
from aioiam._cli.token import describe_expiry
from aioiam.testing import FakeIAM, Fault

AIOIAM = shutil.which("aioiam", path=str(Path(sys.executable).parent)) or shutil.which("aioiam")
KEY = "cli-api-key-0123456789"


def run(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert AIOIAM is not None, "the aioiam console script is not installed (pip install -e .)"
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("IBMCLOUD_", "MY_SERVICE_"))}
    environment.update(env or {})
    return subprocess.run(  # noqa: S603 - our own entry point
        [AIOIAM, *args], input=stdin, capture_output=True, text=True, timeout=60, env=environment, check=False
    )


@pytest.fixture
def iam() -> Iterator[tuple[FakeIAM, str]]:
    fake = FakeIAM(api_keys=[KEY])
    with fake.serve_in_thread() as address:
        yield fake, address.url


def test_token_prints_the_token_and_nothing_else(iam: tuple[FakeIAM, str]) -> None:
    fake, url = iam
    result = run("token", "--url", url, env={"IBMCLOUD_API_KEY": KEY})
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == fake.issued[0] + "\n"


def test_token_reads_the_key_from_a_file_or_stdin(iam: tuple[FakeIAM, str], tmp_path: Path) -> None:
    fake, url = iam
    path = tmp_path / "key"
    path.write_text(KEY + "\n")
    assert run("token", "--url", url, "--api-key-file", str(path)).stdout == fake.issued[0] + "\n"
    assert run("token", "--url", url, "--api-key-file", "-", stdin=KEY + "\n").stdout == fake.issued[1] + "\n"


def test_token_from_a_service_with_json_details(iam: tuple[FakeIAM, str]) -> None:
    fake, url = iam
    result = run(
        "token", "--service", "my-service", "--json", env={"MY_SERVICE_APIKEY": KEY, "MY_SERVICE_AUTH_URL": url}
    )
    assert result.returncode == 0, result.stderr
    details = json.loads(result.stdout)
    assert details["access_token"] == fake.issued[0]
    assert details["expires_in"] == 3600
    assert details["claims"]["iam_id"].startswith("IBMid-")
    assert details["expires"].endswith("Z")


def test_an_api_key_on_the_command_line_is_refused_without_echoing_it(iam: tuple[FakeIAM, str]) -> None:
    fake, url = iam
    for args in (["--api-key", KEY], [f"--api-key={KEY}"]):
        result = run("token", "--url", url, *args)
        assert result.returncode == 2
        assert KEY not in result.stderr + result.stdout
        assert "never taken on the command line" in result.stderr
    assert fake.requests == 0


@pytest.mark.parametrize(
    ("env", "status", "says"),
    [
        ({"IBMCLOUD_API_KEY": "wrong-key-0123456789"}, 3, "BXNIM0415E"),
        ({}, 3, "IBMCLOUD_API_KEY is not set"),
        ({"IBMCLOUD_API_KEY": '"quoted-key-0123456789"'}, 3, "placeholder"),
    ],
)
def test_refused_or_missing_credentials_exit_3_with_one_line(
    iam: tuple[FakeIAM, str], env: dict[str, str], status: int, says: str
) -> None:
    _, url = iam
    result = run("token", "--url", url, "--timeout", "5", env=env)
    assert result.returncode == status
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert says in result.stderr
    assert "0123456789" not in result.stderr


def test_verbose_shows_the_librarys_warnings_on_stderr(iam: tuple[FakeIAM, str]) -> None:
    fake, url = iam
    fake.fail_next(1, Fault.error(503))
    result = run("token", "--url", url, "--verbose", env={"IBMCLOUD_API_KEY": KEY})
    assert result.returncode == 0
    assert "aioiam: token request failed (IAM answered 503" in result.stderr
    assert result.stdout == fake.issued[0] + "\n"


def test_iam_unavailable_exits_4(iam: tuple[FakeIAM, str]) -> None:
    fake, url = iam
    fake.down = True
    result = run("token", "--url", url, "--timeout", "0.5", env={"IBMCLOUD_API_KEY": KEY})
    assert result.returncode == 4
    assert result.stderr.startswith("aioiam token: error: ")
    assert len(result.stderr.splitlines()) == 1
    assert KEY not in result.stderr


def _jwt(claims: dict[str, object]) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"e30.{payload}.sig"


def test_inspect_a_token_argument_stdin_or_fetched(iam: tuple[FakeIAM, str]) -> None:
    fake, url = iam
    token = _jwt({"exp": int(time.time()) + 41 * 60 + 30, "iam_id": "IBMid-1"})
    by_argument = run("inspect", token)
    assert by_argument.returncode == 0
    first, *rest = by_argument.stdout.splitlines()
    assert first.startswith("expires in 41 minutes (")
    assert json.loads("\n".join(rest))["iam_id"] == "IBMid-1"
    assert run("inspect", "-", stdin=token).stdout == by_argument.stdout
    fetched = run("inspect", "--url", url, env={"IBMCLOUD_API_KEY": KEY})
    assert fetched.returncode == 0
    assert fetched.stdout.startswith("expires in 59 minutes") or fetched.stdout.startswith("expires in 1 hour")
    assert fake.requests == 1


def test_inspect_refuses_what_is_not_a_jwt() -> None:
    result = run("inspect", "not-a-token")
    assert result.returncode == 2
    assert "not a JWT" in result.stderr


@pytest.mark.parametrize(
    ("delta", "words"),
    [
        (41 * 60 + 5, "expires in 41 minutes"),
        (-3 * 60 - 1, "expired 3 minutes ago"),
        (1, "expires in 1 second"),
        (7200, "expires in 2 hours"),
        (-86_400 * 3, "expired 3 days ago"),
        (0, "expired 0 seconds ago"),
    ],
)
def test_expiry_in_plain_words(delta: float, words: str) -> None:
    assert describe_expiry(1_000_000 + delta, 1_000_000) == words


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_fake_iam_serves_until_interrupted(stop: signal.Signals) -> None:
    assert AIOIAM is not None
    command = [AIOIAM, "fake-iam", "--lifetime", "120"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:  # noqa: S603
        try:
            assert process.stdout is not None
            banner = [process.stdout.readline() for _ in range(5)]
            url = banner[0].split(" on ", 1)[1].split(" ", 1)[0]
            assert url.startswith("http://127.0.0.1:")
            assert "test-api-key" in banner[1]
            answer = httpx.post(
                f"{url}/identity/token",
                data={"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": "test-api-key"},
            )
            assert answer.status_code == 200
            assert answer.json()["expires_in"] == 120
        finally:
            process.send_signal(stop)
            status = process.wait(timeout=30)
    assert status == 0


@pytest.mark.parametrize("command", ["token", "inspect", "fake-iam", "demo"])
def test_every_command_has_help(command: str) -> None:
    result = run(command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: aioiam " + command)


# ------------------------------------------------------------------ the same commands in process
# (the subprocess tests above prove the entry point; these reach every branch, and coverage sees them)


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith(("IBMCLOUD_", "MY_SERVICE_", "IBM_CREDENTIALS_FILE", "VCAP_SERVICES")):
            monkeypatch.delenv(name)
    return monkeypatch


def test_in_process_token_json_inspect_and_failures(
    iam: tuple[FakeIAM, str], environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fake, url = iam
    environment.setenv("IBMCLOUD_API_KEY", KEY)
    assert main(["token", "--url", url]) == 0
    assert capsys.readouterr().out == fake.issued[0] + "\n"
    assert main(["token", "--url", url, "--json", "--verbose"]) == 0
    assert json.loads(capsys.readouterr().out)["access_token"] == fake.issued[1]
    assert main(["inspect", "--url", url]) == 0
    assert capsys.readouterr().out.startswith(("expires in 59 minutes", "expires in 1 hour"))
    environment.setattr("sys.stdin", io.StringIO(fake.issued[0]))
    assert main(["inspect", "-"]) == 0
    assert '"iam_id"' in capsys.readouterr().out
    assert main(["inspect", _jwt({"iam_id": "x"})]) == 0
    assert capsys.readouterr().out.startswith("no 'exp' claim")
    assert main(["token", "--url", url, "--api-key", KEY]) == 2
    assert main(["inspect", "--url", url, "--api-key"]) == 2
    assert main(["token", "--url", url, "--api-key-file", str(tmp_path / "none")]) == 3
    (tmp_path / "empty").write_text("\n")
    assert main(["token", "--url", url, "--api-key-file", str(tmp_path / "empty")]) == 3
    environment.setattr("sys.stdin", io.StringIO(""))
    assert main(["token", "--url", url, "--api-key-file", "-"]) == 3
    assert main(["token", "--url", "http://example.com"]) == 3  # plain http, not loopback
    fake.down = True
    assert main(["inspect", "--url", url, "--timeout", "0.3"]) == 4
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("aioiam token: error: an API key is never taken on the command line")
    assert "cannot read the API key from" in err[2]
    assert err[3] == f"aioiam token: error: {tmp_path / 'empty'} is empty (expected the API key)"
    assert err[4] == "aioiam token: error: nothing on standard input (expected the API key)"
    assert all(KEY not in line for line in err)


def test_in_process_fake_iam_serves_and_a_taken_port_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from aioiam._cli import fake_iam

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["fake-iam", "--port", str(port)]) == 1
    assert f"cannot serve on port {port}" in capsys.readouterr().err

    async def serve_briefly() -> None:
        args = parser().parse_args(["fake-iam", "--lifetime", "60"])
        with anyio.move_on_after(0.5):
            await fake_iam._serve(args)

    anyio.run(serve_briefly)
    out = capsys.readouterr().out
    assert "FakeIAM serving on http://127.0.0.1:" in out
    assert "tokens live 60 s" in out
