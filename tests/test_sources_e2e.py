"""Every source, end to end through a ``TokenManager``, against the emulator over real TCP on
loopback: tokens, refreshes, request counts per grant, and the error paths users meet."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from aioiam import (
    AssumeProfileSource,
    ConfigurationError,
    ContainerSource,
    InvalidCredentialsError,
    TokenManager,
    VPCInstanceSource,
)
from aioiam.testing import FakeIAM

pytestmark = [pytest.mark.anyio, pytest.mark.real_time]


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


async def two_tokens(tm: TokenManager) -> tuple[str, str]:
    """The first token, and a second one after the first is dropped (a refresh, counted)."""
    async with tm:
        first = await tm.get_token()
        tm.invalidate(first)
        second = await tm.get_token()
    return first, second


async def test_container_source_gets_and_refreshes_a_profile_token(tmp_path: Path) -> None:
    fake = FakeIAM()
    path = tmp_path / "sa-token"
    path.write_text(fake.cr_token)
    async with fake.serve():
        source = ContainerSource(cr_token_file=path, profile_name="test-profile", url=fake.url)
        first, second = await two_tokens(TokenManager(source=source))
    assert first != second
    assert claims(first)["iam_id"] == "iam-Profile-test"
    assert fake.requests_by_grant == {"cr-token": 2}


async def test_container_source_refused_and_misconfigured(tmp_path: Path) -> None:
    fake = FakeIAM()
    path = tmp_path / "sa-token"
    path.write_text("a-token-iam-does-not-know")
    async with fake.serve():
        tm = TokenManager(source=ContainerSource(cr_token_file=path, profile_id="Profile-test", url=fake.url))
        with pytest.raises(InvalidCredentialsError, match="BXNIM0407E") as refused:
            await tm.get_token()
        assert "a-token-iam-does-not-know" not in str(refused.value)
        await tm.aclose()
        missing = TokenManager(source=ContainerSource(cr_token_file=tmp_path / "none", profile_id="P", url=fake.url))
        with pytest.raises(ConfigurationError, match="missing"):
            await missing.get_token()
        await missing.aclose()
    assert fake.requests_by_grant == {"cr-token": 1}  # the missing file sent nothing


@pytest.mark.parametrize(
    ("selector", "iam_id"),
    [({}, "iam-Profile-test"), ({"profile_id": "Profile-b"}, "iam-Profile-b"), ({"profile_crn": "b"}, "iam-Profile-b")],
)
async def test_vpc_source_two_step_exchange(selector: dict[str, str], iam_id: str) -> None:
    fake = FakeIAM(profiles={"Profile-test": "test-profile", "Profile-b": "beta"})
    if selector.get("profile_crn"):
        selector = {"profile_crn": fake.profile_crn("Profile-b")}
    async with fake.serve():
        first, second = await two_tokens(TokenManager(source=VPCInstanceSource(metadata_url=fake.url, **selector)))
    assert claims(first)["iam_id"] == iam_id
    assert first != second
    assert fake.requests_by_grant == {"vpc-identity": 2, "vpc-iam": 2}


async def test_vpc_source_without_a_default_profile_is_refused() -> None:
    fake = FakeIAM(vpc_default_profile=None)
    async with fake.serve():
        tm = TokenManager(source=VPCInstanceSource(metadata_url=fake.url))
        with pytest.raises(InvalidCredentialsError) as caught:
            await tm.get_token()
        await tm.aclose()
    assert caught.value.status_code == 400
    assert not any(token in str(caught.value) for token in fake.identity_tokens)


async def test_assume_source_reuses_its_api_key_token() -> None:
    fake = FakeIAM(account_id="acct-1")
    async with fake.serve():
        source = AssumeProfileSource(fake.api_key, profile_name="test-profile", account_id="acct-1", url=fake.url)
        first, second = await two_tokens(TokenManager(source=source))
    assert claims(first)["iam_id"] == "iam-Profile-test"
    assert first != second
    assert fake.requests_by_grant == {"apikey": 1, "assume": 2}  # one API-key token served both


async def test_assume_source_for_an_unknown_profile_is_refused_without_the_key() -> None:
    fake = FakeIAM()
    async with fake.serve():
        source = AssumeProfileSource(fake.api_key, profile_id="Profile-unknown", url=fake.url)
        tm = TokenManager(source=source)
        with pytest.raises(InvalidCredentialsError) as caught:
            await tm.get_token()
        await tm.aclose()
    assert fake.api_key not in str(caught.value)
    assert fake.requests_by_grant == {"apikey": 1, "assume": 1}


async def test_many_callers_share_one_exchange_per_source(tmp_path: Path) -> None:
    """Single flight holds for two-step sources too: a hundred callers, one exchange."""
    fake = FakeIAM(latency=0.05)
    path = tmp_path / "token"
    path.write_text(fake.cr_token)
    async with fake.serve():
        sources: list[Callable[[], Any]] = [
            lambda: ContainerSource(cr_token_file=path, profile_id="Profile-test", url=fake.url),
            lambda: VPCInstanceSource(metadata_url=fake.url),
            lambda: AssumeProfileSource(fake.api_key, profile_id="Profile-test", url=fake.url),
        ]
        for make in sources:
            async with TokenManager(source=make()) as tm:
                tokens: list[str] = []
                get: Callable[[], Awaitable[str]] = tm.get_token

                async def call() -> None:
                    tokens.append(await get())  # noqa: B023 - called within this iteration

                async with anyio.create_task_group() as tg:
                    for _ in range(100):
                        tg.start_soon(call)
                assert len(set(tokens)) == 1
    assert fake.requests_by_grant == {"cr-token": 1, "vpc-identity": 1, "vpc-iam": 1, "apikey": 1, "assume": 1}
