"""No secret reaches a repr, a str, an exception message or a log record (DEBUG included)."""

from __future__ import annotations

import base64
import json
import logging

import anyio
import httpx
import pytest

from aioiam import IAMAuth, IAMError, RetryPolicy, TokenManager
from aioiam.testing import FakeIAM

pytestmark = pytest.mark.anyio

KEY = "SECRET-api-key-0123456789"
CLIENT_SECRET = "SECRET-client-secret-42"


def echoing_iam(fake: FakeIAM, status: int) -> httpx.MockTransport:
    """An IAM that misbehaves by echoing the request (key included) in its error message."""

    async def handle(request: httpx.Request) -> httpx.Response:
        if status == 200:
            return await fake.handle(request)
        echo = request.content.decode() + " " + request.headers.get("authorization", "")
        return httpx.Response(
            status,
            json={"errorCode": "BXNIM0415E", "errorMessage": f"bad request: {echo}", "context": {"requestId": echo}},
        )

    return httpx.MockTransport(handle)


@pytest.mark.parametrize("status", [200, 400, 503, 404])
async def test_nothing_secret_in_logs_errors_or_reprs(status: int, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeIAM(api_keys=[KEY], client_id="bx", client_secret=CLIENT_SECRET)
    produced: list[str] = []
    tm = TokenManager(
        KEY,
        url="http://127.0.0.1:1",
        client_id="bx",
        client_secret=CLIENT_SECRET,
        transport=echoing_iam(fake, status),
        clock=anyio.current_time,
        retry=RetryPolicy(timeout=3),
    )
    with caplog.at_level(logging.DEBUG, logger="aioiam"):
        try:
            token = await tm.get_token_info()
            produced += [repr(token), str(token)]
        except IAMError as exc:
            produced += [str(exc), repr(exc), repr(exc.__cause__), str(exc.__cause__)]
            produced += [str(getattr(exc, name)) for name in ("error_message", "request_id", "error_code")]
        produced += [repr(tm), str(tm), repr(IAMAuth(tm)), repr(tm._source)]
        await tm.aclose()
    produced += [record.getMessage() for record in caplog.records]
    assert caplog.records, "the run logged nothing, so the audit proves nothing"
    secrets = [KEY, CLIENT_SECRET, base64.b64encode(f"bx:{CLIENT_SECRET}".encode()).decode(), *fake.issued]
    secrets += [f"fake-refresh-{i}" for i in range(1, 5)]
    for text in produced:
        for secret in secrets:
            assert secret not in text, f"secret leaked into: {text[:200]}"


def test_token_values_hide_secrets_in_repr() -> None:
    from aioiam import Token, TokenResponse

    token = Token(access_token="AT-SECRET", refresh_token="RT-SECRET", token_type="Bearer", expires_in=1)
    response = TokenResponse(access_token="AT-SECRET", refresh_token="RT-SECRET", token_type="Bearer", expires_in=1)
    for text in (repr(token), str(token), repr(response), str(response)):
        assert "SECRET" not in text


def test_url_with_credentials_is_not_echoed() -> None:
    with pytest.raises(ValueError, match="user name or password") as info:
        TokenManager("k", url="https://user:SECRET-pw@iam.cloud.ibm.com")
    assert "SECRET" not in str(info.value)


async def test_errors_survive_pickling_without_gaining_secrets() -> None:
    import pickle

    fake = FakeIAM(api_keys=["other"])
    tm = TokenManager(KEY, url="http://127.0.0.1:1", transport=fake.transport, clock=anyio.current_time)
    with pytest.raises(IAMError) as info:
        await tm.get_token()
    clone = pickle.loads(pickle.dumps(info.value))  # noqa: S301 - our own object
    assert type(clone) is type(info.value)
    assert (clone.status_code, clone.error_code, clone.request_id) == (400, "BXNIM0415E", info.value.request_id)
    assert KEY not in json.dumps(clone.__dict__, default=str)
    await tm.aclose()
