"""The trusted-profile and bearer-token sources: request shapes, argument checks and error paths,
through ``httpx.MockTransport`` (the emulator covers them end to end in ``test_sources_e2e.py``)."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import anyio
import httpx
import pytest

from aioiam import (
    AssumeProfileSource,
    ConfigurationError,
    ContainerSource,
    IAMError,
    InvalidCredentialsError,
    StaticTokenSource,
    TokenManager,
    VPCInstanceSource,
)
from aioiam._sources import DEFAULT_CR_TOKEN_FILES

pytestmark = pytest.mark.anyio

KEY = "assume-api-key-0123456789"
CR_TOKEN = "cr-token-from-the-platform-0123456789"


def jwt(claims: dict[str, object]) -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part(claims)}.signature"


def ok(token: str = "a.b.c", **extra: object) -> httpx.Response:  # noqa: S107 - a test token
    return httpx.Response(200, json={"access_token": token, "token_type": "Bearer", "expires_in": 3600, **extra})


Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def form(request: httpx.Request) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(request.content.decode()).items()}


# ------------------------------------------------------------------ ContainerSource


def test_container_source_needs_a_profile() -> None:
    with pytest.raises(ValueError, match="profile_id or profile_name"):
        ContainerSource()
    with pytest.raises(TypeError, match="cr_token_file must be a path"):
        ContainerSource(profile_id="Profile-1", cr_token_file=3)  # type: ignore[arg-type]


async def test_container_source_reads_the_file_at_every_fetch(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"{CR_TOKEN}\n")
    seen: list[dict[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(form(request))
        return ok()

    source = ContainerSource(cr_token_file=path, profile_id="Profile-1", profile_name="ci")
    async with client(answer) as http:
        await source.fetch(http)
        path.write_text("rotated-cr-token-0123456789")  # the platform rotates it
        await source.fetch(http)
    assert seen[0] == {
        "grant_type": "urn:ibm:params:oauth:grant-type:cr-token",
        "cr_token": CR_TOKEN,
        "profile_id": "Profile-1",
        "profile_name": "ci",
    }
    assert seen[1]["cr_token"] == "rotated-cr-token-0123456789"
    assert "rotated-cr-token-0123456789" in source.secrets
    assert CR_TOKEN not in repr(source)


async def test_a_missing_or_empty_token_file_names_every_path_and_sends_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    sent: list[httpx.Request] = []
    for path, why in ((tmp_path / "nowhere", "missing"), (empty, "empty"), (tmp_path, "unreadable")):
        source = ContainerSource(cr_token_file=os.fspath(path), profile_name="ci")
        async with client(lambda r: sent.append(r) or ok()) as http:  # type: ignore[func-returns-value]
            with pytest.raises(ConfigurationError, match=rf"tried {path} \({why}") as caught:
                await source.fetch(http)
        assert isinstance(caught.value, ValueError)
        assert isinstance(caught.value, IAMError)
        assert "cr_token_file=" in str(caught.value)
    assert sent == []


async def test_without_a_file_the_default_locations_are_tried_in_order() -> None:
    source = ContainerSource(profile_id="Profile-1")
    with pytest.raises(ConfigurationError) as caught:
        await source.read_cr_token()
    message = str(caught.value)
    positions = [message.index(path) for path in DEFAULT_CR_TOKEN_FILES]
    assert positions == sorted(positions)
    assert DEFAULT_CR_TOKEN_FILES[0] == "/var/run/secrets/tokens/vault-token"


async def test_the_cr_token_is_scrubbed_from_what_iam_sends_back(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(CR_TOKEN)

    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"errorCode": "BXNIM0111E", "errorMessage": f"bad cr_token {CR_TOKEN}"})

    tm = TokenManager(
        source=ContainerSource(cr_token_file=path, profile_id="Profile-1"), transport=httpx.MockTransport(refuse)
    )
    with pytest.raises(InvalidCredentialsError) as caught:
        await tm.get_token()
    assert CR_TOKEN not in str(caught.value)
    assert "[redacted]" in str(caught.value)
    await tm.aclose()


# ------------------------------------------------------------------ VPCInstanceSource


@pytest.mark.parametrize(
    "url",
    ["http://169.254.169.254", "http://127.0.0.1:8080", "http://[fe80::1]", "https://metadata.example.com/"],
)
def test_metadata_urls_that_are_allowed(url: str) -> None:
    assert "metadata_url" in repr(VPCInstanceSource(metadata_url=url))


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("http://metadata.example.com", "plain http only for the link-local"),
        ("http://10.0.0.1", "plain http only for the link-local"),
        ("ftp://169.254.169.254", "absolute URL"),
        ("http://169.254.169.254/?x=1", "query"),
        ("not a url", "absolute URL"),
    ],
)
def test_metadata_urls_that_are_refused(url: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        VPCInstanceSource(metadata_url=url)


def test_vpc_source_takes_at_most_one_selector() -> None:
    with pytest.raises(ValueError, match="at most one"):
        VPCInstanceSource(profile_id="Profile-1", profile_crn="crn:v1:x")
    with pytest.raises(TypeError):
        VPCInstanceSource(metadata_url=3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("selector", "body"),
    [
        ({}, None),
        ({"profile_id": "Profile-1"}, {"trusted_profile": {"id": "Profile-1"}}),
        ({"profile_crn": "crn:v1:p"}, {"trusted_profile": {"crn": "crn:v1:p"}}),
    ],
)
async def test_vpc_source_makes_the_two_step_exchange(selector: dict[str, str], body: object) -> None:
    identity = "instance-identity-token-0123456789"
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/token"):
            return httpx.Response(200, json={"access_token": identity, "expires_in": 300, "created_at": "x"})
        # The real service sends no token_type.
        return httpx.Response(
            200, json={"access_token": "iam.token.x", "expires_in": 3600, "expires_at": "2026-12-01T13:00:00Z"}
        )

    source = VPCInstanceSource(metadata_url="http://169.254.169.254", **selector)
    async with client(answer) as http:
        response = await source.fetch(http)
    assert (response.access_token, response.token_type, response.expires_in) == ("iam.token.x", "Bearer", 3600)
    put, post = seen
    assert (put.method, put.url.path, put.url.params["version"]) == ("PUT", "/instance_identity/v1/token", "2022-03-01")
    assert put.headers["Metadata-Flavor"] == "ibm"
    assert json.loads(put.content) == {"expires_in": 300}
    assert (post.method, post.url.path) == ("POST", "/instance_identity/v1/iam_token")
    assert post.headers["Authorization"] == f"Bearer {identity}"
    assert (json.loads(post.content) if post.content else None) == body
    assert identity in source.secrets


async def test_a_refused_identity_token_is_refused_credentials_without_the_token() -> None:
    identity = "instance-identity-token-0123456789"

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token"):
            return httpx.Response(200, json={"access_token": identity, "expires_in": 300})
        return httpx.Response(401, json={"errors": [{"message": f"token {identity} not valid"}]})

    async with client(answer) as http:
        with pytest.raises(InvalidCredentialsError) as caught:
            await VPCInstanceSource().fetch(http)
    assert identity not in str(caught.value)
    assert caught.value.status_code == 401


# ------------------------------------------------------------------ AssumeProfileSource


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({}, "exactly one"),
        ({"profile_id": "P", "profile_crn": "crn"}, "exactly one"),
        ({"profile_name": "ci"}, "go together"),
        ({"profile_id": "P", "account_id": "acc"}, "go together"),
    ],
)
def test_assume_source_selectors(kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        AssumeProfileSource(KEY, **kwargs)


async def test_assume_reuses_the_api_key_token_while_fresh_and_drops_it_when_refused() -> None:
    now = [0.0]
    grants: list[dict[str, str]] = []
    refuse_next = [False]

    def answer(request: httpx.Request) -> httpx.Response:
        data = form(request)
        grants.append(data)
        if data["grant_type"].endswith("apikey"):
            return ok(f"apikey.token.{len(grants)}", expires_in=100)
        if refuse_next[0]:
            refuse_next[0] = False
            return httpx.Response(400, json={"errorCode": "BXNIM0407E", "errorMessage": "token invalid"})
        return ok("profile.token.x")

    source = AssumeProfileSource(KEY, profile_name="ci", account_id="acc-1", clock=lambda: now[0])
    async with client(answer) as http:
        await source.fetch(http)
        now[0] = 79.0  # the API-key token is still fresh (refresh at 80 s)
        await source.fetch(http)
        refuse_next[0] = True
        with pytest.raises(InvalidCredentialsError):
            await source.fetch(http)
        await source.fetch(http)  # a new API-key token first
    kinds = [g["grant_type"].rsplit(":", 1)[-1] for g in grants]
    assert kinds == ["apikey", "assume", "assume", "assume", "apikey", "assume"]
    assert grants[1] == {
        "grant_type": "urn:ibm:params:oauth:grant-type:assume",
        "access_token": "apikey.token.1",
        "profile_name": "ci",
        "account": "acc-1",
    }
    assert grants[0]["apikey"] == KEY
    assert KEY not in repr(source)


# ------------------------------------------------------------------ StaticTokenSource


async def test_a_static_token_is_served_with_the_life_it_has_left_then_refused() -> None:
    now = [1_000_000.0]
    token = jwt({"exp": 1_000_000 + 600, "iam_id": "IBMid-1"})
    source = StaticTokenSource(token, wall_clock=lambda: now[0])
    async with client(lambda r: httpx.Response(500)) as http:
        answer = await source.fetch(http)
        assert (answer.access_token, answer.expires_in, answer.expiration) == (token, 600, 1_000_600)
        assert answer.claims["iam_id"] == "IBMid-1"
        now[0] += 591
        with pytest.raises(ConfigurationError, match="nothing can refresh it"):
            await source.fetch(http)
    assert token in source.secrets
    assert token not in repr(source)


async def test_a_manager_serves_a_static_token_and_then_says_why_it_stopped() -> None:
    token = jwt({"exp": 1_000 + 100})
    tm = TokenManager(
        source=StaticTokenSource(token, wall_clock=lambda: 1_000 + anyio.current_time()), clock=anyio.current_time
    )
    assert await tm.get_token() == token
    await anyio.sleep(95)
    with pytest.raises(ConfigurationError, match="expires at"):
        await tm.get_token()
    await tm.aclose()


@pytest.mark.parametrize("token", ["not-a-jwt", jwt({"iat": 1}), jwt({"exp": "soon"}), '"a.b.c"'])
def test_a_static_token_must_say_when_it_expires(token: str) -> None:
    with pytest.raises(ValueError, match=r"JWT with an 'exp' claim|quoted value"):
        StaticTokenSource(token)
