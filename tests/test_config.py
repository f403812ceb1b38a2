"""``TokenManager.from_env``: IBM's configuration conventions, source by source, and what is said
when something is missing. Files and variables are set per test; nothing real is read."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from aioiam import (
    AssumeProfileSource,
    ConfigurationError,
    ContainerSource,
    RetryPolicy,
    StaticTokenSource,
    TokenManager,
    VPCInstanceSource,
)
from aioiam._config import find_service, parse_credentials_file
from aioiam.testing import FakeIAM

KEY = "config-api-key-0123456789"


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty working directory and home, and no IBM variables from the machine running the tests."""
    for name in list(__import__("os").environ):
        if name.startswith(("MY_SERVICE", "IBM_CREDENTIALS_FILE", "VCAP_SERVICES", "IBMCLOUD_API_KEY")):
            monkeypatch.delenv(name)
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    return tmp_path


def source_of(tm: TokenManager) -> object:
    return tm._settings.source


def test_credentials_file_lines_are_parsed_as_ibm_writes_them() -> None:
    text = (
        "# a comment\n\nMY_SERVICE_APIKEY = abc=def \nnot a pair\nMY_SERVICE_AUTH_URL=https://iam.test.cloud.ibm.com\n"
    )
    assert parse_credentials_file(text) == {
        "MY_SERVICE_APIKEY": "abc=def",
        "MY_SERVICE_AUTH_URL": "https://iam.test.cloud.ibm.com",
    }


def test_the_working_directorys_file_comes_before_the_home_file(clean: Path) -> None:
    (clean / "home" / "ibm-credentials.env").write_text(f"MY_SERVICE_APIKEY=home-{KEY}\n")
    (clean / "work" / "ibm-credentials.env").write_text(f"MY_SERVICE_APIKEY=work-{KEY}\n")
    found = find_service("my-service")
    assert found.properties == {"APIKEY": f"work-{KEY}"}
    assert found.origin == f"the credentials file {clean / 'work' / 'ibm-credentials.env'}"


def test_ibm_credentials_file_names_the_only_file_read(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean / "work" / "ibm-credentials.env").write_text(f"MY_SERVICE_APIKEY=work-{KEY}\n")
    named = clean / "elsewhere.env"
    named.write_text(f"MY_SERVICE_APIKEY=named-{KEY}\n")
    monkeypatch.setenv("IBM_CREDENTIALS_FILE", str(named))
    assert find_service("my-service").properties == {"APIKEY": f"named-{KEY}"}


def test_the_first_source_with_any_property_wins_without_merging(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean / "work" / "ibm-credentials.env").write_text("MY_SERVICE_AUTH_URL=https://iam.test.cloud.ibm.com\n")
    monkeypatch.setenv("MY_SERVICE_APIKEY", KEY)
    found = find_service("my-service")
    assert found.properties == {"AUTH_URL": "https://iam.test.cloud.ibm.com"}  # the env's key is not merged in
    with pytest.raises(ConfigurationError, match="no MY_SERVICE_APIKEY, so the auth type is container") as caught:
        TokenManager.from_env("my-service")
    assert "MY_SERVICE_IAM_PROFILE_ID or MY_SERVICE_IAM_PROFILE_NAME" in str(caught.value)


def test_environment_variables_then_vcap_services(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SERVICE_APIKEY", KEY)
    monkeypatch.setenv("MY_SERVICE_AUTH_URL", "https://iam.test.cloud.ibm.com")
    tm = TokenManager.from_env("my-service")
    assert source_of(tm).endpoint == "https://iam.test.cloud.ibm.com/identity/token"  # type: ignore[attr-defined]
    monkeypatch.delenv("MY_SERVICE_APIKEY")
    monkeypatch.delenv("MY_SERVICE_AUTH_URL")
    vcap = {"my-service": [{"name": "my-instance", "credentials": {"apikey": KEY}}]}
    monkeypatch.setenv("VCAP_SERVICES", json.dumps(vcap))
    assert find_service("my-service").properties == {"APIKEY": KEY}
    assert find_service("my-instance").properties == {"APIKEY": KEY}  # by the entry's name too


def test_nothing_found_lists_every_place_searched(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError) as caught:
        TokenManager.from_env("my-service")
    message = str(caught.value)
    assert str(clean / "work" / "ibm-credentials.env") in message
    assert str(clean / "home" / "ibm-credentials.env") in message
    assert "MY_SERVICE_*" in message
    assert "VCAP_SERVICES (not set)" in message
    assert isinstance(caught.value, ValueError)


def test_a_broken_vcap_services_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VCAP_SERVICES", "{not json")
    with pytest.raises(ConfigurationError, match="VCAP_SERVICES is set but is not JSON"):
        TokenManager.from_env("my-service")


@pytest.mark.parametrize(
    ("variables", "kind", "checks"),
    [
        ({"AUTH_TYPE": "container", "IAM_PROFILE_NAME": "ci", "CR_TOKEN_FILENAME": "/t"}, ContainerSource, "ci"),
        ({"IAM_PROFILE_ID": "Profile-1"}, ContainerSource, "Profile-1"),  # no key: container by default
        ({"AUTH_TYPE": "VPC", "IAM_PROFILE_CRN": "crn:v1:p"}, VPCInstanceSource, "crn:v1:p"),
        ({"AUTH_TYPE": "vpc"}, VPCInstanceSource, "default"),
        (
            {"AUTH_TYPE": "iamAssume", "APIKEY": KEY, "IAM_PROFILE_NAME": "ci", "IAM_ACCOUNT_ID": "acc"},
            AssumeProfileSource,
            "acc",
        ),
    ],
)
def test_each_auth_type_builds_its_source(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], kind: type, checks: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(f"MY_SERVICE_{name}", value)
    source = source_of(TokenManager.from_env("my-service"))
    assert isinstance(source, kind)
    assert checks in repr(source)
    assert KEY not in repr(source)


def test_bearer_token_auth_type(monkeypatch: pytest.MonkeyPatch) -> None:
    import base64

    payload = base64.urlsafe_b64encode(b'{"exp": 4102444800}').decode().rstrip("=")
    monkeypatch.setenv("MY_SERVICE_AUTH_TYPE", "bearerToken")
    monkeypatch.setenv("MY_SERVICE_BEARER_TOKEN", f"h.{payload}.s")
    assert isinstance(source_of(TokenManager.from_env("my-service")), StaticTokenSource)


@pytest.mark.parametrize(
    ("variables", "missing"),
    [
        ({"AUTH_TYPE": "iam"}, "MY_SERVICE_APIKEY"),
        ({"AUTH_TYPE": "container"}, "MY_SERVICE_IAM_PROFILE_ID or MY_SERVICE_IAM_PROFILE_NAME"),
        ({"AUTH_TYPE": "iamAssume", "APIKEY": KEY}, "MY_SERVICE_IAM_PROFILE_ID or MY_SERVICE_IAM_PROFILE_CRN"),
        ({"AUTH_TYPE": "iamAssume", "APIKEY": KEY, "IAM_PROFILE_NAME": "ci"}, "MY_SERVICE_IAM_ACCOUNT_ID"),
        ({"AUTH_TYPE": "bearerToken"}, "MY_SERVICE_BEARER_TOKEN"),
    ],
)
def test_a_missing_property_is_named(monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], missing: str) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(f"MY_SERVICE_{name}", value)
    with pytest.raises(ConfigurationError, match=missing) as caught:
        TokenManager.from_env("my-service")
    assert "environment variables MY_SERVICE_*" in str(caught.value)
    assert KEY not in str(caught.value)


def test_an_unsupported_auth_type_and_a_bad_value_say_where_they_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SERVICE_AUTH_TYPE", "noAuth")
    with pytest.raises(ConfigurationError, match="'noAuth', which aioiam does not support"):
        TokenManager.from_env("my-service")
    monkeypatch.setenv("MY_SERVICE_AUTH_TYPE", "iam")
    monkeypatch.setenv("MY_SERVICE_APIKEY", f'"{KEY}"')
    with pytest.raises(ConfigurationError, match="MY_SERVICE_\\* settings in the environment variables") as caught:
        TokenManager.from_env("my-service")
    assert "placeholder" in str(caught.value)
    assert KEY not in str(caught.value)


def test_overrides_win_over_what_was_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SERVICE_APIKEY", KEY)
    monkeypatch.setenv("MY_SERVICE_AUTH_URL", "https://iam.test.cloud.ibm.com")
    monkeypatch.setenv("MY_SERVICE_AUTH_DISABLE_SSL", "true")
    retry = RetryPolicy(timeout=3)
    tm = TokenManager.from_env("my-service", url="https://private.iam.cloud.ibm.com", retry=retry, verify=True)
    assert source_of(tm).endpoint == "https://private.iam.cloud.ibm.com/identity/token"  # type: ignore[attr-defined]
    assert tm._settings.retry is retry
    assert tm._settings.verify is True
    assert TokenManager.from_env("my-service")._settings.verify is False  # AUTH_DISABLE_SSL


def test_without_a_service_name_ibmcloud_api_key_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="IBMCLOUD_API_KEY is not set"):
        TokenManager.from_env()
    monkeypatch.setenv("IBMCLOUD_API_KEY", KEY)
    fake = FakeIAM(api_keys=[KEY])

    async def main() -> str:
        async with TokenManager.from_env(url="http://127.0.0.1", transport=fake.transport) as tm:
            return await tm.get_token()

    assert anyio.run(main) == fake.issued[0]


def test_a_credentials_file_gets_a_working_manager(clean: Path) -> None:
    (clean / "work" / "ibm-credentials.env").write_text(
        f"MY_SERVICE_AUTH_TYPE=iam\nMY_SERVICE_APIKEY={KEY}\nMY_SERVICE_AUTH_URL=http://127.0.0.1\n"
    )
    fake = FakeIAM(api_keys=[KEY])

    async def main() -> str:
        async with TokenManager.from_env("my-service", transport=fake.transport) as tm:
            return await tm.get_token()

    assert anyio.run(main) == fake.issued[0]
    assert fake.requests == 1
