"""Parsing IAM's answers: tokens, error bodies, Retry-After, JWT claims. Pure functions."""

from __future__ import annotations

import base64
import json
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aioiam import (
    IAMError,
    InvalidCredentialsError,
    InvalidResponseError,
    RefreshPolicy,
    Token,
    TokenManager,
    TransientIAMError,
)
from aioiam._token import decode_jwt_claims, parse_error_response, parse_retry_after, parse_token_response


def jwt(claims: dict[str, Any]) -> str:
    def enc(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{enc({'alg': 'RS256'})}.{enc(claims)}.sig"


def body(**fields: Any) -> bytes:
    base: dict[str, Any] = {
        "access_token": jwt({"iat": 1000, "exp": 4600, "iam_id": "IBMid-1", "account": {"bss": "acc1"}}),
        "refresh_token": "not_supported",
        "token_type": "Bearer",
        "expires_in": 3600,
        "expiration": 4600,
        "scope": "ibm openid",
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def test_parses_a_normal_iam_answer() -> None:
    parsed = parse_token_response(body())
    assert parsed.expires_in == 3600
    assert parsed.expiration == 4600
    assert parsed.refresh_token is None  # IAM's "not_supported" placeholder
    assert parsed.scope == "ibm openid"
    assert parsed.claims["iam_id"] == "IBMid-1"


def test_token_exposes_claims_for_display() -> None:
    parsed = parse_token_response(body())
    token = Token(access_token=parsed.access_token, token_type="Bearer", expires_in=1, claims=parsed.claims)
    assert token.iam_id == "IBMid-1"
    assert token.account_id == "acc1"
    assert Token(access_token="x", token_type="Bearer", expires_in=1).iam_id is None


def test_shorter_jwt_lifetime_wins_over_expires_in() -> None:
    parsed = parse_token_response(body(access_token=jwt({"iat": 0, "exp": 600})))
    assert parsed.expires_in == 600


#: (the JWT's exp - iat, expires_in, the lifetime that must be used): the shorter one, either way.
SHORTER_WINS = [(7200, 3600, 3600), (1800, 3600, 1800)]


@pytest.mark.parametrize(("jwt_life", "expires_in", "lifetime"), SHORTER_WINS, ids=["jwt-longer", "jwt-shorter"])
def test_the_shorter_of_the_jwt_lifetime_and_expires_in_is_the_lifetime(
    jwt_life: int, expires_in: int, lifetime: int
) -> None:
    # A JWT claiming longer than expires_in must not win: the token would be handed out after
    # IAM stopped accepting it.
    parsed = parse_token_response(body(access_token=jwt({"iat": 1000, "exp": 1000 + jwt_life}), expires_in=expires_in))
    assert parsed.expires_in == lifetime


@pytest.mark.anyio
@pytest.mark.parametrize(("jwt_life", "expires_in", "lifetime"), SHORTER_WINS, ids=["jwt-longer", "jwt-shorter"])
async def test_a_token_is_scheduled_on_the_shorter_lifetime(jwt_life: int, expires_in: int, lifetime: int) -> None:
    answer = body(access_token=jwt({"iat": 1000, "exp": 1000 + jwt_life}), expires_in=expires_in, expiration=...)
    tm = TokenManager(
        "test-api-key",
        url="http://127.0.0.1:1",
        transport=httpx.MockTransport(lambda request: httpx.Response(200, content=answer)),
        clock=anyio.current_time,
        refresh=RefreshPolicy(jitter_fraction=0),
    )
    token = await tm.get_token_info()
    await tm.aclose()
    assert token.expires_in == lifetime
    assert token.expires_at - token.obtained_at == lifetime
    assert token.stale_at - token.obtained_at == lifetime - 10  # the 10 s margin
    assert token.refresh_at - token.obtained_at == pytest.approx(0.8 * lifetime)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"<html>proxy error</html>", "not JSON"),
        (b"[]", "not a JSON object"),
        (body(access_token=...), "access_token"),
        (body(access_token=""), "access_token"),
        (body(access_token=42), "access_token"),
        (body(access_token="abc\r\nX-Evil: 1"), "characters"),
        (body(token_type="MAC"), "token_type"),
        (body(expires_in=...), "expires_in"),
        (body(expires_in="3600"), "expires_in"),
        (body(expires_in=True), "expires_in"),
        (body(expires_in=0), "not positive"),
        (body(expires_in=-5), "not positive"),
        (body(expires_in=10**12), "longer than"),
    ],
)
def test_rejects_unusable_200_answers_with_a_clear_message(raw: bytes, match: str) -> None:
    with pytest.raises(InvalidResponseError, match=match) as info:
        parse_token_response(raw, request_id="rid-1")
    assert info.value.status_code == 200
    assert info.value.request_id == "rid-1"


def test_missing_token_type_is_taken_as_bearer_and_odd_optional_fields_are_dropped() -> None:
    parsed = parse_token_response(body(token_type=..., expiration="soon", scope=5, refresh_token=7))
    assert parsed.token_type == "Bearer"
    assert parsed.expiration is None
    assert parsed.scope is None
    assert parsed.refresh_token is None


def test_error_body_fields_are_kept() -> None:
    raw = json.dumps(
        {
            "errorCode": "BXNIM0415E",
            "errorMessage": "Provided API key could not be found.",
            "context": {"requestId": "req-9"},
        }
    ).encode()
    error = parse_error_response(400, raw)
    assert isinstance(error, InvalidCredentialsError)
    assert (error.status_code, error.error_code, error.request_id) == (400, "BXNIM0415E", "req-9")
    assert error.error_message == "Provided API key could not be found."
    assert str(error) == "IAM answered 400 BXNIM0415E: Provided API key could not be found. (request id req-9)"


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, InvalidCredentialsError),
        (401, InvalidCredentialsError),
        (403, InvalidCredentialsError),
        (408, TransientIAMError),
        (429, TransientIAMError),
        (500, TransientIAMError),
        (503, TransientIAMError),
        (404, InvalidResponseError),
        (405, InvalidResponseError),
    ],
)
def test_status_decides_the_error_class(status: int, kind: type[IAMError]) -> None:
    assert type(parse_error_response(status, b"", url="https://iam.example/identity/token")) is kind


def test_rate_limit_code_is_transient_whatever_the_status() -> None:
    raw = json.dumps({"errorCode": "BXNIM0436E", "errorMessage": "Too many requests"}).encode()
    assert isinstance(parse_error_response(400, raw), TransientIAMError)


def test_wrong_url_error_names_the_endpoint() -> None:
    error = parse_error_response(404, b"not found", url="https://iam.example/identity/token")
    assert "https://iam.example/identity/token" in str(error)
    assert "url" in str(error)


def test_html_error_page_is_not_copied_into_the_message() -> None:
    error = parse_error_response(502, b"<html><body>Bad gateway from proxy</body></html>", request_id="t-1")
    assert "html" not in str(error).lower()
    assert error.request_id == "t-1"


def test_error_text_from_iam_is_redacted() -> None:
    raw = json.dumps({"errorCode": "X", "errorMessage": "key SECRETKEY is bad"}).encode()
    error = parse_error_response(400, raw, redact=lambda s: s.replace("SECRETKEY", "[redacted]"))
    assert "SECRETKEY" not in str(error)
    assert "SECRETKEY" not in repr(error)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("5", 5.0),
        (" 2.5 ", 2.5),
        ("-3", 0.0),
        ("soon", None),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),
    ],
)
def test_retry_after_forms(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=1445412480.0) == expected


def test_retry_after_date_needs_a_clock() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT") is None


@pytest.mark.parametrize("token", ["", "a.b", "a.!!!.c", "a.bm90IGpzb24.c", "a.WzFd.c"])
def test_claims_of_non_jwts_are_empty(token: str) -> None:
    assert dict(decode_jwt_claims(token)) == {}


@given(st.binary(max_size=400))
def test_any_200_body_gives_a_token_or_invalid_response(raw: bytes) -> None:
    try:
        parsed = parse_token_response(raw)
    except InvalidResponseError:
        return
    assert parsed.access_token
    assert parsed.expires_in > 0


@given(st.integers(100, 599), st.binary(max_size=400))
def test_any_error_body_gives_an_iam_error(status: int, raw: bytes) -> None:
    assert isinstance(parse_error_response(status, raw), IAMError)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=5,
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "access_token": json_values,
            "token_type": json_values,
            "expires_in": json_values,
            "expiration": json_values,
            "refresh_token": json_values,
            "scope": json_values,
        },
    )
)
def test_any_json_object_gives_a_token_or_invalid_response(data: dict[str, Any]) -> None:
    raw = json.dumps(data).encode()
    try:
        parsed = parse_token_response(raw)
    except InvalidResponseError:
        with pytest.raises(InvalidResponseError, match="IAM answered 200"):
            parse_token_response(raw)
        return
    assert parsed.access_token == data["access_token"]
    assert 0 < parsed.expires_in <= 86_400
