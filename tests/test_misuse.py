"""Misuse found by review, each refused clearly and without quoting a secret: a key where a name,
a path or a command goes; a class where an instance goes; a token with its scheme; secrets in
URLs percent-encoded or echoed in another case; and ``Retry-After`` as an HTTP date."""

from __future__ import annotations

import email.utils

import httpx
import pytest

import aioiam
from aioiam import (
    ApiKeySource,
    ConfigurationError,
    InvalidCredentialsError,
    StaticTokenSource,
    TokenManager,
    TransientIAMError,
    VPCInstanceSource,
)
from aioiam._cli import main

KEY = "Abc123SECRETkey0123456789abcdefXYZ_-q"


@pytest.mark.parametrize(
    "argv",
    [
        ["token", KEY],
        [KEY],
        ["token", "--apikey", KEY],
        ["token", "--", KEY],
        ["demo", "--workers", KEY],
        ["inspect", "--timeout", KEY],
    ],
)
def test_a_key_typed_on_the_command_line_is_never_repeated(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert KEY not in out + err
    assert "[not shown]" in err


def test_a_key_given_as_the_key_files_path_or_the_service_is_not_repeated(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IBMCLOUD_API_KEY", raising=False)
    assert main(["token", "--api-key-file", KEY]) == 3
    assert main(["token", "--service", KEY]) == 3
    assert main(["token", "--service", "  "]) == 3
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        "aioiam token: error: cannot read the API key from the file given (its name is not shown: it may be a key): "
        "FileNotFoundError"
    )
    assert "service_name looks like an API key" in err[1]
    assert "service_name is blank" in err[2]
    assert not any(KEY.casefold() in line.casefold() for line in err)


def test_from_env_misuse_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="looks like an API key") as caught:
        TokenManager.from_env(KEY)
    assert KEY.casefold() not in str(caught.value).casefold()
    monkeypatch.setenv("MY_SERVICE_APIKEY", "the-service-key-123")
    with pytest.raises(ConfigurationError, match="takes no api_key="):
        TokenManager.from_env("my-service", api_key=KEY)
    with pytest.raises(ConfigurationError, match="use TokenManager"):
        TokenManager.from_env(api_key=KEY)
    monkeypatch.setenv("IBMCLOUD_API_KEY", f'"{KEY}"')
    with pytest.raises(
        ConfigurationError, match=r"^IBMCLOUD_API_KEY cannot be used: api_key starts or ends with"
    ) as quoted:
        TokenManager.from_env()
    assert KEY not in str(quoted.value)


def test_a_source_class_instead_of_an_instance_is_a_type_error() -> None:
    with pytest.raises(
        TypeError, match=r"an instance, not the class VPCInstanceSource: pass VPCInstanceSource\(\.\.\.\)"
    ):
        TokenManager(source=VPCInstanceSource)  # type: ignore[arg-type]


@pytest.mark.parametrize("token", ["Bearer a.b.c", "bearer a.b.c", "a.b .c"])
def test_a_static_token_with_its_scheme_or_spaces_is_refused(token: str) -> None:
    with pytest.raises(ValueError, match="the token alone, without 'Bearer ' or spaces"):
        StaticTokenSource(token)


@pytest.mark.parametrize(
    "url",
    [
        "https://iam.example.com/" + "".join(f"%{ord(c):02X}" for c in KEY),
        "https://iam.example.com/" + "".join(f"%{ord(c):02x}" for c in KEY.upper()),
    ],
)
def test_a_url_holding_the_key_percent_encoded_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="url contains the API key"):
        ApiKeySource(KEY, url=url)


@pytest.mark.anyio
async def test_a_key_echoed_in_another_case_is_scrubbed() -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"errorCode": "BXNIM0415E", "errorMessage": f"no key {KEY.upper()} here"})

    source = ApiKeySource(KEY, url="https://iam.cloud.ibm.com")
    async with httpx.AsyncClient(transport=httpx.MockTransport(echo)) as client:
        with pytest.raises(InvalidCredentialsError) as caught:
            await source.fetch(client)
    assert KEY.casefold() not in str(caught.value).casefold()
    assert "no key [redacted] here" in str(caught.value)


@pytest.mark.anyio
@pytest.mark.parametrize("date_header", [True, False])
async def test_retry_after_as_an_http_date_is_honoured(date_header: bool) -> None:
    """Read against the answer's own ``Date`` when it has one, else the local clock."""
    import time

    now = time.time() if not date_header else 1_800_000_000.0

    def rate_limited(request: httpx.Request) -> httpx.Response:
        headers = {"Retry-After": email.utils.formatdate(now + 30, usegmt=True)}
        if date_header:
            headers["Date"] = email.utils.formatdate(now, usegmt=True)
        return httpx.Response(429, headers=headers)

    source = ApiKeySource(KEY)
    async with httpx.AsyncClient(transport=httpx.MockTransport(rate_limited)) as client:
        with pytest.raises(TransientIAMError) as caught:
            await source.fetch(client)
    assert caught.value.retry_after == pytest.approx(30, abs=2)


def test_the_public_names_used_here_are_public() -> None:
    assert aioiam.StaticTokenSource is StaticTokenSource
