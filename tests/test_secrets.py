"""No secret reaches a repr, a str, an exception message or a log record (DEBUG included)."""

from __future__ import annotations

import base64
import json
import logging
from urllib.parse import quote_plus

import anyio
import httpx
import pytest

from aioiam import (
    ApiKeySource,
    IAMAuth,
    IAMError,
    IAMUnavailableError,
    InvalidCredentialsError,
    RetryPolicy,
    TokenManager,
)
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


def answering(status: int, message: str) -> httpx.MockTransport:
    """An IAM that answers every request with ``status`` and IAM's error body carrying ``message``."""
    return httpx.MockTransport(
        lambda request: httpx.Response(status, json={"errorCode": "BXNIM0415E", "errorMessage": message})
    )


@pytest.mark.parametrize("short_key", ["e", "fake-1", "7-chars"])
async def test_short_keys_are_not_scrubbed_out_of_unrelated_words(short_key: str) -> None:
    message = "Provided API key could not be found; fake-1 is not a key, and 7-chars neither"
    tm = TokenManager(short_key, url="http://127.0.0.1:1", transport=answering(400, message), clock=anyio.current_time)
    with pytest.raises(IAMError) as info:
        await tm.get_token()
    assert info.value.error_message == message
    assert "[redacted]" not in str(info.value)
    await tm.aclose()


async def test_short_keys_do_not_mangle_network_errors() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Name or service not known: the resolver failed")

    tm = TokenManager(
        "e",
        url="http://127.0.0.1:1",
        transport=httpx.MockTransport(refuse),
        clock=anyio.current_time,
        retry=RetryPolicy(timeout=1),
    )
    with pytest.raises(IAMError) as info:
        await tm.get_token()
    assert "Name or service not known: the resolver failed" in str(info.value)
    await tm.aclose()


def test_only_secrets_long_enough_to_scrub_are_listed() -> None:
    from aioiam import ApiKeySource
    from aioiam._redaction import MIN_REDACTABLE_LENGTH, scrub

    assert MIN_REDACTABLE_LENGTH == 8
    assert ApiKeySource("fake-1").secrets == ()
    assert ApiKeySource("8-chars!").secrets == ("8-chars%21", "8-chars!")
    assert scrub("a 7-chars and 8-chars! text", ["7-chars", "8-chars!"]) == "a 7-chars and [redacted] text"
    source = ApiKeySource(KEY, client_id="bx", client_secret="short")
    basic = base64.b64encode(b"bx:short").decode()
    assert set(source.secrets) == {KEY, basic}  # the short client secret alone is not listed
    assert [len(s) for s in source.secrets] == sorted((len(s) for s in source.secrets), reverse=True)


async def test_real_length_keys_are_scrubbed_in_every_spelling_sent() -> None:
    key = "SECRET/key+with=odd chars&0123456789abcdefgh"  # 44 characters, form-encoding changes it
    secret = "SECRET client/secret+42"
    fake = FakeIAM(api_keys=[key], client_id="bx", client_secret=secret)
    tm = TokenManager(
        key,
        url="http://127.0.0.1:1",
        client_id="bx",
        client_secret=secret,
        transport=echoing_iam(fake, 400),
        clock=anyio.current_time,
    )
    with pytest.raises(IAMError) as info:
        await tm.get_token()
    text = " ".join([str(info.value), repr(info.value), str(info.value.error_message), str(info.value.request_id)])
    assert "[redacted]" in text
    for spelling in (key, quote_plus(key), secret, base64.b64encode(f"bx:{secret}".encode()).decode()):
        assert spelling not in text
    assert "SECRET" not in text
    await tm.aclose()


@pytest.mark.parametrize("status", [403, 503, 404])
@pytest.mark.parametrize("header", ["Transaction-Id", "X-Global-Transaction-Id", "X-Request-Id"])
async def test_a_request_id_header_echoing_the_request_is_scrubbed(
    status: int, header: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def handle(request: httpx.Request) -> httpx.Response:
        echo = request.content.decode() + " " + request.headers.get("authorization", "")
        return httpx.Response(status, headers={header: echo}, json={"errorMessage": "denied"})

    tm = TokenManager(
        KEY,
        url="http://127.0.0.1:1",
        client_id="bx",
        client_secret=CLIENT_SECRET,
        transport=httpx.MockTransport(handle),
        clock=anyio.current_time,
        retry=RetryPolicy(timeout=0.5, initial_delay=0.1, max_delay=0.2),
    )
    with caplog.at_level(logging.DEBUG, logger="aioiam"), pytest.raises(IAMError) as caught:
        await tm.get_token()
    await tm.aclose()
    error = caught.value
    seen = [str(error), repr(error), str(error.request_id), str(getattr(error, "cause", ""))]
    seen += [record.getMessage() for record in caplog.records]
    assert error.request_id is not None
    assert "[redacted]" in error.request_id
    basic = base64.b64encode(f"bx:{CLIENT_SECRET}".encode()).decode()
    for secret in (KEY, quote_plus(KEY), CLIENT_SECRET, basic):
        assert not any(secret in text for text in seen), secret


@pytest.mark.parametrize("header", ["Transaction-Id", "X-Global-Transaction-Id", "X-Request-Id"])
async def test_the_api_key_source_itself_scrubs_a_request_id_header_echoing_the_key(header: str) -> None:
    """Scrubbed by ``ApiKeySource.fetch``, not only by a manager around it: a source is public."""
    key = "SECRET/api+key=0123456789"  # form-encoding changes it: both spellings must go

    def handle(request: httpx.Request) -> httpx.Response:
        echo = f"rid-1 {key} {quote_plus(key)}"
        return httpx.Response(400, headers={header: echo}, json={"errorCode": "BXNIM0415E", "errorMessage": "denied"})

    source = ApiKeySource(key, url="http://127.0.0.1:1")
    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as client:
        with pytest.raises(InvalidCredentialsError) as info:
            await source.fetch(client)
    error = info.value
    assert error.request_id == "rid-1 [redacted] [redacted]"
    for text in (error.request_id, str(error), repr(error)):
        assert key not in text
        assert quote_plus(key) not in text


async def test_a_network_error_quoting_the_key_is_scrubbed_before_callers_or_logs_see_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"proxy refused CONNECT for https://iam.cloud.ibm.com/?apikey={KEY} (403)")

    tm = TokenManager(
        KEY,
        url="http://127.0.0.1:1",
        transport=httpx.MockTransport(refuse),
        clock=anyio.current_time,
        retry=RetryPolicy(timeout=1, initial_delay=0.1, max_delay=0.2),
    )
    with caplog.at_level(logging.DEBUG, logger="aioiam"), pytest.raises(IAMUnavailableError) as info:
        await tm.get_token()
    await tm.aclose()
    error = info.value
    assert error.cause is not None
    assert "could not reach IAM: ConnectError: proxy refused CONNECT" in str(error.cause)
    assert "apikey=[redacted]" in str(error.cause)
    texts = [str(error), repr(error), str(error.cause), repr(error.cause), str(error.__cause__)]
    texts += [record.getMessage() for record in caplog.records]
    assert len(texts) > 5, "nothing was logged: the audit proves nothing"
    for text in texts:
        assert KEY not in text, text
