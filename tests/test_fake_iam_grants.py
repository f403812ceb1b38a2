"""FakeIAM answers every grant aioiam speaks: API key, compute resource, assume, and the VPC metadata service.

Plain httpx requests, in process through ``fake.transport`` (virtual time) and over real TCP on
loopback (``real_time``). Outcomes and counts are asserted, never times.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import pytest

from aioiam.testing import OMIT, FakeIAM, Fault

APIKEY = "urn:ibm:params:oauth:grant-type:apikey"
CR_TOKEN = "urn:ibm:params:oauth:grant-type:cr-token"
ASSUME = "urn:ibm:params:oauth:grant-type:assume"
VERSION = {"version": "2022-03-01"}
FLAVOR = {"Metadata-Flavor": "ibm"}
IDENTITY_PATH = "/instance_identity/v1/token"
IAM_TOKEN_PATH = "/instance_identity/v1/iam_token"
PROFILES = {"Profile-a": "alpha", "Profile-b": "beta"}


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


@contextlib.asynccontextmanager
async def in_process(fake: FakeIAM) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=fake.transport, base_url="http://127.0.0.1") as client:
        yield client


async def grant(client: httpx.AsyncClient, grant_type: str, **form: str) -> httpx.Response:
    return await client.post("/identity/token", data={"grant_type": grant_type, **form})


async def identity(
    client: httpx.AsyncClient,
    body: Any = None,
    *,
    headers: Mapping[str, str] = FLAVOR,
    params: Mapping[str, str] = VERSION,
) -> httpx.Response:
    content = b"" if body is None else json.dumps(body).encode()
    return await client.put(IDENTITY_PATH, params=params, headers=headers, content=content)


async def vpc_iam(
    client: httpx.AsyncClient,
    identity_token: str | None,
    body: Any = None,
    *,
    params: Mapping[str, str] = VERSION,
) -> httpx.Response:
    headers = {} if identity_token is None else {"Authorization": f"Bearer {identity_token}"}
    content = b"" if body is None else json.dumps(body).encode()
    return await client.post(IAM_TOKEN_PATH, params=params, headers=headers, content=content)


async def identity_token(client: httpx.AsyncClient) -> str:
    response = await identity(client, {"expires_in": 300})
    assert response.status_code == 200
    token: str = response.json()["access_token"]
    return token


def assert_iam_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["errorCode"] == code
    assert isinstance(body["errorMessage"], str)
    assert body["errorMessage"]
    assert body["context"]["requestId"] == response.headers["Transaction-Id"]


def assert_vpc_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"errors", "trace"}
    [error] = body["errors"]
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]
    assert body["trace"] == response.headers["X-Request-Id"]


def substitute(value: Any, substitutes: Mapping[str, str]) -> Any:
    """``value`` with each placeholder string (``"<name>"``) replaced, however deep in dicts and lists."""
    if isinstance(value, str):
        return substitutes.get(value, value)
    if isinstance(value, dict):
        return {k: substitute(v, substitutes) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, substitutes) for v in value]
    return value


def parse_time(text: str) -> dt.datetime:
    assert text.endswith("Z")
    return dt.datetime.fromisoformat(text[:-1] + "+00:00")


# ---------------------------------------------------------------------------- the compute-resource grant


@pytest.mark.anyio
@pytest.mark.parametrize(
    "selectors",
    [
        pytest.param({"profile_id": "Profile-b"}, id="by-id"),
        pytest.param({"profile_name": "beta"}, id="by-name"),
        pytest.param({"profile_id": "Profile-b", "profile_name": "beta"}, id="by-both"),
    ],
)
async def test_cr_token_grant_issues_a_profile_token(selectors: dict[str, str]) -> None:
    fake = FakeIAM(cr_tokens=["cr-1", "cr-2"], profiles=PROFILES, account_id="acct-9", lifetime=1200)
    async with in_process(fake) as client:
        response = await grant(client, CR_TOKEN, cr_token="cr-2", **selectors)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 1200
    assert body["refresh_token"] == "not_supported"
    assert body["expiration"] == claims(body["access_token"])["exp"]
    jwt = claims(body["access_token"])
    assert jwt["iam_id"] == jwt["id"] == "iam-Profile-b"
    assert jwt["sub"] == "Profile-b"
    assert jwt["sub_type"] == "Profile"
    assert jwt["name"] == "beta"
    assert jwt["grant_type"] == CR_TOKEN
    assert jwt["account"] == {"bss": "acct-9", "valid": True}
    assert jwt["exp"] - jwt["iat"] == 1200
    assert fake.issued == [body["access_token"]]
    assert fake.is_valid(body["access_token"])
    assert fake.grant_of(body["access_token"]) == "cr-token"
    assert fake.requests_by_grant == {"cr-token": 1}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("form", "code"),
    [
        pytest.param({"cr_token": "not-this-one", "profile_id": "Profile-a"}, "BXNIM0407E", id="unknown-cr-token"),
        pytest.param({"cr_token": "  ", "profile_id": "Profile-a"}, "BXNIM0407E", id="blank-cr-token"),
        pytest.param({"profile_id": "Profile-a"}, "BXNIM0407E", id="no-cr-token"),
        pytest.param({"cr_token": "cr-1"}, "BXNIM0102E", id="no-profile"),
        pytest.param({"cr_token": "cr-1", "profile_crn": "crn:v1:x"}, "BXNIM0102E", id="crn-is-not-taken"),
        pytest.param({"cr_token": "cr-1", "profile_id": "Profile-z"}, "BXNIM0461E", id="unknown-profile-id"),
        pytest.param({"cr_token": "cr-1", "profile_name": "gamma"}, "BXNIM0461E", id="unknown-profile-name"),
        pytest.param(
            {"cr_token": "cr-1", "profile_id": "Profile-a", "profile_name": "beta"},
            "BXNIM0461E",
            id="id-and-name-disagree",
        ),
    ],
)
async def test_cr_token_grant_refuses(form: dict[str, str], code: str) -> None:
    fake = FakeIAM(cr_tokens=["cr-1"], profiles=PROFILES)
    async with in_process(fake) as client:
        response = await grant(client, CR_TOKEN, **form)
    assert_iam_error(response, 400, code)
    assert fake.issued == []
    assert fake.requests_by_grant == {"cr-token": 1}


@pytest.mark.anyio
async def test_cr_tokens_none_accepts_any_non_blank_token() -> None:
    fake = FakeIAM(cr_tokens=None)
    async with in_process(fake) as client:
        accepted = await grant(client, CR_TOKEN, cr_token="anything at all", profile_id="Profile-test")
        refused = await grant(client, CR_TOKEN, cr_token=" ", profile_id="Profile-test")
    assert accepted.status_code == 200
    assert_iam_error(refused, 400, "BXNIM0407E")
    assert fake.cr_token == "test-cr-token"


@pytest.mark.anyio
async def test_client_credentials_are_checked_for_every_grant() -> None:
    fake = FakeIAM(client_id="bx", client_secret="bx-secret")
    async with in_process(fake) as client:
        refused = await grant(client, CR_TOKEN, cr_token=fake.cr_token, profile_id="Profile-test")
        client.auth = httpx.BasicAuth("bx", "bx-secret")
        accepted = await grant(client, CR_TOKEN, cr_token=fake.cr_token, profile_id="Profile-test")
    assert_iam_error(refused, 401, "BXNIM0310E")
    assert accepted.status_code == 200
    assert accepted.json()["refresh_token"] == fake.refresh_tokens[0]


# ---------------------------------------------------------------------------- the assume grant


@pytest.mark.anyio
@pytest.mark.parametrize(
    "selectors",
    [
        pytest.param({"profile_id": "Profile-a"}, id="by-id"),
        pytest.param({"profile_crn": "crn:v1:bluemix:public:iam-identity::a/acct-9::profile:Profile-a"}, id="by-crn"),
        pytest.param({"profile_name": "alpha", "account": "acct-9"}, id="by-name-and-account"),
    ],
)
async def test_assume_grant_trades_an_issued_token_for_a_profile_token(selectors: dict[str, str]) -> None:
    fake = FakeIAM(profiles=PROFILES, account_id="acct-9")
    assert fake.profile_crn("Profile-a") == "crn:v1:bluemix:public:iam-identity::a/acct-9::profile:Profile-a"
    async with in_process(fake) as client:
        first = await grant(client, APIKEY, apikey=fake.api_key)
        user_token = first.json()["access_token"]
        response = await grant(client, ASSUME, access_token=user_token, **selectors)
    assert response.status_code == 200, response.text
    body = response.json()
    jwt = claims(body["access_token"])
    assert jwt["iam_id"] == "iam-Profile-a"
    assert jwt["sub_type"] == "Profile"
    assert jwt["grant_type"] == ASSUME
    assert jwt["account"]["bss"] == "acct-9"
    assert body["token_type"] == "Bearer"
    assert fake.issued == [user_token, body["access_token"]]
    assert fake.grant_of(body["access_token"]) == "assume"
    assert fake.grant_of(user_token) == "apikey"
    assert fake.requests_by_grant == {"apikey": 1, "assume": 1}


@pytest.mark.anyio
async def test_assume_accepts_a_token_from_any_grant_it_issued() -> None:
    fake = FakeIAM()
    async with in_process(fake) as client:
        container = await grant(client, CR_TOKEN, cr_token=fake.cr_token, profile_name="test-profile")
        response = await grant(client, ASSUME, access_token=container.json()["access_token"], profile_id="Profile-test")
    assert response.status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("form", "code"),
    [
        pytest.param({"profile_id": "Profile-a"}, "BXNIM0407E", id="no-access-token"),
        pytest.param({"access_token": "eyJ.not.issued", "profile_id": "Profile-a"}, "BXNIM0407E", id="not-issued"),
        pytest.param({"access_token": "<user>"}, "BXNIM0102E", id="no-profile"),
        pytest.param(
            {"access_token": "<user>", "profile_id": "Profile-a", "profile_crn": "<crn:Profile-a>"},
            "BXNIM0102E",
            id="id-and-crn",
        ),
        pytest.param(
            {"access_token": "<user>", "profile_id": "Profile-a", "profile_name": "alpha", "account": "acct-9"},
            "BXNIM0102E",
            id="id-and-name",
        ),
        pytest.param({"access_token": "<user>", "profile_name": "alpha"}, "BXNIM0102E", id="name-without-account"),
        pytest.param(
            {"access_token": "<user>", "profile_id": "Profile-a", "account": "acct-9"},
            "BXNIM0102E",
            id="account-without-name",
        ),
        pytest.param(
            {"access_token": "<user>", "profile_name": "alpha", "account": "another-account"},
            "BXNIM0461E",
            id="wrong-account",
        ),
        pytest.param({"access_token": "<user>", "profile_id": "Profile-z"}, "BXNIM0461E", id="unknown-id"),
        pytest.param(
            {"access_token": "<user>", "profile_crn": "crn:v1:bluemix:public:iam-identity::a/other::profile:Profile-a"},
            "BXNIM0461E",
            id="crn-in-another-account",
        ),
        pytest.param(
            {"access_token": "<user>", "profile_name": "gamma", "account": "acct-9"}, "BXNIM0461E", id="unknown-name"
        ),
    ],
)
async def test_assume_grant_refuses(form: dict[str, str], code: str) -> None:
    fake = FakeIAM(profiles=PROFILES, account_id="acct-9")
    async with in_process(fake) as client:
        user_token = (await grant(client, APIKEY, apikey=fake.api_key)).json()["access_token"]
        substitutes = {"<user>": user_token, "<crn:Profile-a>": fake.profile_crn("Profile-a")}
        response = await grant(client, ASSUME, **substitute(form, substitutes))
    assert_iam_error(response, 400, code)
    assert fake.issued == [user_token]


@pytest.mark.anyio
async def test_assume_refuses_an_expired_token() -> None:
    clock = Clock()
    fake = FakeIAM(lifetime=600, wall_clock=clock)
    async with in_process(fake) as client:
        user_token = (await grant(client, APIKEY, apikey=fake.api_key)).json()["access_token"]
        clock.now += 599
        still_valid = await grant(client, ASSUME, access_token=user_token, profile_id="Profile-test")
        clock.now += 1
        expired = await grant(client, ASSUME, access_token=user_token, profile_id="Profile-test")
    assert still_valid.status_code == 200
    assert_iam_error(expired, 400, "BXNIM0407E")


# ---------------------------------------------------------------------------- the VPC metadata service


@pytest.mark.anyio
@pytest.mark.parametrize(("body", "expires_in"), [({"expires_in": 3600}, 3600), ({"expires_in": 5}, 5), (None, 300)])
async def test_metadata_put_issues_an_instance_identity_token(body: Any, expires_in: int) -> None:
    fake = FakeIAM()
    async with in_process(fake) as client:
        response = await identity(client, body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"access_token", "created_at", "expires_at", "expires_in"}
    assert answer["expires_in"] == expires_in
    created, expires = parse_time(answer["created_at"]), parse_time(answer["expires_at"])
    assert (expires - created).total_seconds() == expires_in
    assert fake.identity_tokens == [answer["access_token"]]
    assert fake.is_valid_identity_token(answer["access_token"])
    assert not fake.is_valid(answer["access_token"]), "an identity token is not an IAM token"
    assert fake.issued == []
    assert fake.requests_by_grant == {"vpc-identity": 1}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("headers", "params", "content", "code"),
    [
        pytest.param({}, VERSION, b'{"expires_in": 300}', "missing_metadata_flavor", id="no-flavor"),
        pytest.param({"Metadata-Flavor": "google"}, VERSION, b"{}", "missing_metadata_flavor", id="wrong-flavor"),
        pytest.param(FLAVOR, {}, b"{}", "invalid_version", id="no-version"),
        pytest.param(FLAVOR, {"version": "2022-13-01"}, b"{}", "invalid_version", id="not-a-date"),
        pytest.param(FLAVOR, {"version": "20220301"}, b"{}", "invalid_version", id="compact-date"),
        pytest.param(FLAVOR, {"version": "2021-09-20"}, b"{}", "invalid_version", id="too-old"),
        pytest.param(FLAVOR, VERSION, b'{"expires_in": 4}', "invalid_value", id="too-short"),
        pytest.param(FLAVOR, VERSION, b'{"expires_in": 3601}', "invalid_value", id="too-long"),
        pytest.param(FLAVOR, VERSION, b'{"expires_in": "300"}', "invalid_value", id="a-string"),
        pytest.param(FLAVOR, VERSION, b'{"expires_in": 300.5}', "invalid_value", id="a-fraction"),
        pytest.param(FLAVOR, VERSION, b'{"expires_in": true}', "invalid_value", id="a-boolean"),
        pytest.param(FLAVOR, VERSION, b'{"expires_in": 30', "invalid_body", id="bad-json"),
        pytest.param(FLAVOR, VERSION, b"[300]", "invalid_body", id="not-an-object"),
    ],
)
async def test_metadata_put_refuses(headers: dict[str, str], params: dict[str, str], content: bytes, code: str) -> None:
    fake = FakeIAM()
    async with in_process(fake) as client:
        response = await client.put(IDENTITY_PATH, params=params, headers=headers, content=content)
    assert_vpc_error(response, 400, code)
    assert fake.identity_tokens == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "profile_id"),
    [
        pytest.param(None, "Profile-a", id="the-default-profile"),
        pytest.param({}, "Profile-a", id="an-empty-body"),
        pytest.param({"trusted_profile": {"id": "Profile-b"}}, "Profile-b", id="by-id"),
        pytest.param(
            {"trusted_profile": {"crn": "crn:v1:bluemix:public:iam-identity::a/acct-9::profile:Profile-b"}},
            "Profile-b",
            id="by-crn",
        ),
    ],
)
async def test_metadata_post_trades_an_identity_token_for_an_iam_token(body: Any, profile_id: str) -> None:
    fake = FakeIAM(profiles=PROFILES, account_id="acct-9", vpc_default_profile="Profile-a", lifetime=900)
    async with in_process(fake) as client:
        response = await vpc_iam(client, await identity_token(client), body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"access_token", "created_at", "expires_at", "expires_in"}, "no token_type, no refresh_token"
    assert answer["expires_in"] == 900
    assert (parse_time(answer["expires_at"]) - parse_time(answer["created_at"])).total_seconds() == 900
    jwt = claims(answer["access_token"])
    assert jwt["iam_id"] == f"iam-{profile_id}"
    assert jwt["sub_type"] == "Profile"
    assert jwt["account"]["bss"] == "acct-9"
    assert parse_time(answer["created_at"]).timestamp() == jwt["iat"]
    assert fake.issued == [answer["access_token"]]
    assert fake.is_valid(answer["access_token"])
    assert fake.grant_of(answer["access_token"]) == "vpc-iam"
    assert fake.requests_by_grant == {"vpc-identity": 1, "vpc-iam": 1}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("bearer", "body", "status", "code"),
    [
        pytest.param(None, None, 401, "invalid_token", id="no-bearer"),
        pytest.param("not-issued", None, 401, "invalid_token", id="unknown-identity-token"),
        pytest.param("<iam>", None, 401, "invalid_token", id="an-iam-token"),
        pytest.param("<identity>", {"trusted_profile": {"id": "Profile-z"}}, 400, "trusted_profile_not_found", id="id"),
        pytest.param(
            "<identity>",
            {"trusted_profile": {"crn": "crn:v1:bluemix:public:iam-identity::a/other::profile:Profile-a"}},
            400,
            "trusted_profile_not_found",
            id="crn-in-another-account",
        ),
        pytest.param(
            "<identity>",
            {"trusted_profile": {"id": "Profile-a", "crn": "<crn>"}},
            400,
            "invalid_body",
            id="id-and-crn",
        ),
        pytest.param("<identity>", {"trusted_profile": {"name": "alpha"}}, 400, "invalid_body", id="by-name"),
        pytest.param("<identity>", {"trusted_profile": "Profile-a"}, 400, "invalid_body", id="not-an-object"),
        pytest.param("<identity>", {"trusted_profile": {"id": ""}}, 400, "invalid_body", id="blank-id"),
        pytest.param("<identity>", ["Profile-a"], 400, "invalid_body", id="body-not-an-object"),
    ],
)
async def test_metadata_post_refuses(bearer: str | None, body: Any, status: int, code: str) -> None:
    fake = FakeIAM(profiles=PROFILES, vpc_default_profile="Profile-a")
    async with in_process(fake) as client:
        iam_token = (await grant(client, APIKEY, apikey=fake.api_key)).json()["access_token"]
        substitutes = {"<identity>": await identity_token(client), "<iam>": iam_token}
        substitutes["<crn>"] = fake.profile_crn("Profile-a")
        response = await vpc_iam(client, substitute(bearer, substitutes), substitute(body, substitutes))
    assert_vpc_error(response, status, code)
    assert fake.issued == [iam_token]


@pytest.mark.anyio
async def test_metadata_post_without_a_default_profile_needs_one_named() -> None:
    fake = FakeIAM(vpc_default_profile=None)
    async with in_process(fake) as client:
        token = await identity_token(client)
        unnamed = await vpc_iam(client, token)
        named = await vpc_iam(client, token, {"trusted_profile": {"id": "Profile-test"}})
        fake.vpc_default_profile = "Profile-gone"  # a default that names no known profile
        unknown_default = await vpc_iam(client, token)
        bad_version = await vpc_iam(client, token, params={"version": "2020-01-01"})
    assert_vpc_error(unnamed, 400, "no_trusted_profile")
    assert named.status_code == 200
    assert_vpc_error(unknown_default, 400, "trusted_profile_not_found")
    assert_vpc_error(bad_version, 400, "invalid_version")


@pytest.mark.anyio
async def test_metadata_post_refuses_an_expired_identity_token() -> None:
    clock = Clock()
    fake = FakeIAM(wall_clock=clock)
    async with in_process(fake) as client:
        response = await identity(client, {"expires_in": 60})
        token = response.json()["access_token"]
        clock.now += 59
        still_valid = await vpc_iam(client, token)
        clock.now += 1
        expired = await vpc_iam(client, token)
    assert still_valid.status_code == 200
    assert_vpc_error(expired, 401, "invalid_token")


@pytest.mark.anyio
async def test_other_paths_and_methods_under_the_metadata_service_are_not_found() -> None:
    fake = FakeIAM()
    async with in_process(fake) as client:
        get = await client.get(IDENTITY_PATH, params=VERSION, headers=FLAVOR)
        elsewhere = await client.put("/instance_identity/v1/keys", params=VERSION, headers=FLAVOR)
        iam_elsewhere = await client.post("/identity/other", data={"grant_type": APIKEY, "apikey": fake.api_key})
    assert_vpc_error(get, 404, "not_found")
    assert_vpc_error(elsewhere, 404, "not_found")
    assert_iam_error(iam_elsewhere, 404, "BXNIM0404E")
    assert fake.requests_by_grant == {"other": 3}


# ---------------------------------------------------------------------------- faults and counts on every endpoint


async def tokens_to_trade(client: httpx.AsyncClient, fake: FakeIAM) -> tuple[str, str]:
    """An instance identity token and an API-key token (two requests)."""
    user_token = (await grant(client, APIKEY, apikey=fake.api_key)).json()["access_token"]
    return await identity_token(client), user_token


async def ask_each_endpoint(
    client: httpx.AsyncClient, fake: FakeIAM, tokens: tuple[str, str], profile_id: str = "Profile-test"
) -> dict[str, httpx.Response]:
    """One well-formed request to each endpoint, in the order of the keys."""
    identity_token, user_token = tokens
    return {
        "apikey": await grant(client, APIKEY, apikey=fake.api_key),
        "cr-token": await grant(client, CR_TOKEN, cr_token=fake.cr_token, profile_id=profile_id),
        "assume": await grant(client, ASSUME, access_token=user_token, profile_id=profile_id),
        "vpc-identity": await identity(client, {"expires_in": 300}),
        "vpc-iam": await vpc_iam(client, identity_token),
    }


@pytest.mark.anyio
async def test_scripted_errors_hit_every_endpoint_in_its_own_error_shape() -> None:
    fake = FakeIAM()
    async with in_process(fake) as client:
        tokens = await tokens_to_trade(client, fake)
        fake.fail_next(5, Fault.error(503, error_code="BXNIM9999E", message="scripted"))
        answers = await ask_each_endpoint(client, fake, tokens)
    assert fake.pending_faults == 0
    for name in ("apikey", "cr-token", "assume"):
        assert_iam_error(answers[name], 503, "BXNIM9999E")
    for name in ("vpc-identity", "vpc-iam"):
        assert_vpc_error(answers[name], 503, "BXNIM9999E")
        assert answers[name].json()["errors"][0]["message"] == "scripted"


@pytest.mark.anyio
async def test_down_and_refusing_hit_every_endpoint() -> None:
    fake = FakeIAM()
    async with in_process(fake) as client:
        warm_up = await ask_each_endpoint(client, fake, await tokens_to_trade(client, fake))
        assert all(response.status_code == 200 for response in warm_up.values())
        fake.down = True
        fake.down_status = 500
        down = {
            "apikey": await grant(client, APIKEY, apikey=fake.api_key),
            "cr-token": await grant(client, CR_TOKEN, cr_token=fake.cr_token, profile_id="Profile-test"),
            "vpc-identity": await identity(client, {"expires_in": 300}),
            "vpc-iam": await vpc_iam(client, fake.identity_tokens[0]),
        }
        fake.down = False
        fake.refusing = True
        for request in (
            client.post("/identity/token", data={"grant_type": APIKEY, "apikey": fake.api_key}),
            client.put(IDENTITY_PATH, params=VERSION, headers=FLAVOR, content=b"{}"),
        ):
            with pytest.raises(httpx.ConnectError):
                await request
        fake.refusing = False
    assert_iam_error(down["apikey"], 500, "BXNIM0001E")
    assert_iam_error(down["cr-token"], 500, "BXNIM0001E")
    assert_vpc_error(down["vpc-identity"], 500, "service_unavailable")
    assert_vpc_error(down["vpc-iam"], 500, "service_unavailable")
    assert fake.requests == 7 + 4, "refused connections are not counted"


@pytest.mark.anyio
async def test_broken_answers_and_cut_connections_on_the_metadata_service() -> None:
    clock = Clock()
    fake = FakeIAM(wall_clock=clock, lifetime=1800)
    async with in_process(fake) as client:
        token = await identity_token(client)
        fake.fail_next(1, Fault.token(access_token=OMIT, token_type="Bearer"))
        omitted = await vpc_iam(client, token)
        fake.fail_next(1, Fault.clock_skew(3600))
        skewed = await vpc_iam(client, token)
        fake.fail_next(1, Fault.latency(5))
        late = await identity(client, {"expires_in": 30})
        fake.fail_next(1, Fault.html(502))
        html = await identity(client)
        fake.fail_next(1, Fault.reset())
        with pytest.raises(httpx.ReadError):
            await vpc_iam(client, token)
    assert omitted.status_code == 200
    assert set(omitted.json()) == {"created_at", "expires_at", "expires_in", "token_type"}
    assert len(fake.issued) == 2, "a broken answer still issues its token"
    assert fake.is_valid(fake.issued[0])
    assert parse_time(skewed.json()["created_at"]).timestamp() == int(clock.now) + 3600
    assert fake.expires_at(skewed.json()["access_token"]) == clock.now + 1800, "the real lifetime is unchanged"
    assert late.status_code == 200
    assert late.json()["expires_in"] == 30
    assert html.status_code == 502
    assert html.headers["content-type"].startswith("text/html")
    assert "X-Request-Id" in html.headers


@pytest.mark.anyio
async def test_requests_by_grant_adds_up_to_requests() -> None:
    fake = FakeIAM()
    async with in_process(fake) as client:
        await ask_each_endpoint(client, fake, await tokens_to_trade(client, fake))
        await grant(client, "refresh_token", refresh_token="r")
        await grant(client, APIKEY, apikey="wrong")
        await client.post("/identity/token", content=b"grant_type=urn:ibm:params:oauth:grant-type:apikey")
        fake.fail_next(1, Fault.error(503))
        await grant(client, CR_TOKEN, cr_token="x", profile_id="y")
    assert fake.requests_by_grant == {
        "apikey": 4,  # the warm-up, the answer, the wrong key, the wrong content type
        "cr-token": 2,
        "assume": 1,
        "vpc-identity": 2,
        "vpc-iam": 1,
        "other": 1,
    }
    assert sum(fake.requests_by_grant.values()) == fake.requests == 11


# ---------------------------------------------------------------------------- what it accepts, where it serves


def test_api_key_and_cr_token_name_one_it_accepts() -> None:
    fake = FakeIAM()
    assert (fake.api_key, fake.cr_token) == ("test-api-key", "test-cr-token")
    ordered = FakeIAM(api_keys=["k2", "k1", "k2"], cr_tokens=["c9", "c1"])
    assert (ordered.api_key, ordered.cr_token) == ("k2", "c9")
    ordered.api_keys = frozenset(["k1", "k3"])  # k2 revoked
    assert ordered.api_key == "k1"
    ordered.api_keys = frozenset(["k5", "k4"])
    assert ordered.api_key == "k4"
    anything = FakeIAM(api_keys=None, cr_tokens=None)
    assert (anything.api_key, anything.cr_token) == ("test-api-key", "test-cr-token")
    with pytest.raises(LookupError, match="accepts no API key"):
        _ = FakeIAM(api_keys=[]).api_key
    with pytest.raises(LookupError, match="accepts no compute-resource token"):
        _ = FakeIAM(cr_tokens=[]).cr_token
    with pytest.raises(TypeError, match="list of strings"):
        FakeIAM(api_keys="test-api-key")
    with pytest.raises(TypeError, match="list of strings"):
        FakeIAM(cr_tokens="test-cr-token")


def test_secrets_include_cr_tokens_and_identity_tokens() -> None:
    fake = FakeIAM(cr_tokens=["cr-secret"])
    fake.identity_tokens.append("head.payload.signature")
    assert {"test-api-key", "cr-secret", "head.payload.signature", "payload", "signature"} <= set(fake.secrets())


def test_url_says_clearly_when_it_is_not_served() -> None:
    fake = FakeIAM()
    assert fake.address is None
    with pytest.raises(RuntimeError, match="not being served"):
        _ = fake.url
    with fake.serve_in_thread() as address:
        assert fake.address == address
        assert fake.url == address.url
        with httpx.Client(base_url=fake.url) as client:
            response = client.post("/identity/token", data={"grant_type": APIKEY, "apikey": fake.api_key})
        assert response.status_code == 200
    assert fake.address is None
    with pytest.raises(RuntimeError, match="not being served"):
        _ = fake.url


# ---------------------------------------------------------------------------- over real TCP on loopback


@pytest.mark.anyio
@pytest.mark.real_time
async def test_every_endpoint_answers_and_refuses_over_loopback() -> None:
    fake = FakeIAM(profiles=PROFILES, vpc_default_profile="Profile-a", account_id="acct-9")
    async with fake.serve() as address, httpx.AsyncClient(base_url=fake.url) as client:
        assert fake.url == address.url
        assert fake.url.startswith("http://127.0.0.1:")
        ok = await ask_each_endpoint(client, fake, await tokens_to_trade(client, fake), "Profile-b")
        refused = {
            "apikey": await grant(client, APIKEY, apikey="nope"),
            "cr-token": await grant(client, CR_TOKEN, cr_token="nope", profile_id="Profile-a"),
            "assume": await grant(client, ASSUME, access_token="nope", profile_id="Profile-a"),
            "vpc-identity": await identity(client, {"expires_in": 300}, headers={}),
            "vpc-iam": await vpc_iam(client, "nope"),
        }
    assert {name: response.status_code for name, response in ok.items()} == dict.fromkeys(ok, 200)
    assert claims(ok["vpc-iam"].json()["access_token"])["iam_id"] == "iam-Profile-a"  # the default
    assert claims(ok["cr-token"].json()["access_token"])["iam_id"] == "iam-Profile-b"
    assert claims(ok["assume"].json()["access_token"])["account"]["bss"] == "acct-9"
    assert_iam_error(refused["apikey"], 400, "BXNIM0415E")
    assert_iam_error(refused["cr-token"], 400, "BXNIM0407E")
    assert_iam_error(refused["assume"], 400, "BXNIM0407E")
    assert_vpc_error(refused["vpc-identity"], 400, "missing_metadata_flavor")
    assert_vpc_error(refused["vpc-iam"], 401, "invalid_token")
    assert fake.requests_by_grant == {"apikey": 3, "cr-token": 2, "assume": 2, "vpc-identity": 3, "vpc-iam": 2}
    assert fake.address is None


@pytest.mark.anyio
@pytest.mark.real_time
async def test_faults_cut_metadata_connections_over_loopback() -> None:
    fake = FakeIAM()
    async with fake.serve(), httpx.AsyncClient(base_url=fake.url) as client:
        token = await identity_token(client)
        fake.fail_next(1, Fault.reset())
        with pytest.raises(httpx.TransportError):
            await vpc_iam(client, token)
        fake.refusing = True
        with pytest.raises(httpx.ConnectError):
            await identity(client, {"expires_in": 300})
        fake.refusing = False
        after = await vpc_iam(client, token)
    assert after.status_code == 200
    assert fake.requests_by_grant == {"vpc-identity": 1, "vpc-iam": 2}
