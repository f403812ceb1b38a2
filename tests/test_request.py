"""The token request on the wire, URL rules and constructor validation (HTTP mocked with respx)."""

from __future__ import annotations

import base64
import inspect
from urllib.parse import parse_qs

import anyio
import httpx
import pytest
import respx

from aioiam import InvalidResponseError, TokenManager, __version__
from aioiam._sources import ApiKeySource
from aioiam._urls import is_loopback_host, token_endpoint
from aioiam.testing import FakeIAM

pytestmark = pytest.mark.anyio

TOKEN_BODY = {"access_token": "a.b.c", "token_type": "Bearer", "expires_in": 3600, "expiration": 0}


def form_of(request: httpx.Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.content.decode()).items()}


async def test_request_is_the_api_key_grant_form_post() -> None:
    with respx.mock(assert_all_called=True) as router:
        route = router.post("https://iam.cloud.ibm.com/identity/token").respond(200, json=TOKEN_BODY)
        tm = TokenManager("my-key", clock=anyio.current_time)
        assert await tm.get_token() == "a.b.c"
    request = route.calls.last.request
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.headers["accept"] == "application/json"
    assert request.headers["user-agent"] == f"aioiam/{__version__}"
    assert "authorization" not in request.headers
    assert form_of(request) == {
        "grant_type": "urn:ibm:params:oauth:grant-type:apikey",
        "apikey": "my-key",
        "response_type": "cloud_iam",
    }
    await tm.aclose()


async def test_client_credentials_and_scope_are_sent() -> None:
    with respx.mock(assert_all_called=True) as router:
        route = router.post("https://iam.test.cloud.ibm.com/identity/token").respond(
            200, json={**TOKEN_BODY, "refresh_token": "r-1"}
        )
        tm = TokenManager(
            "my-key",
            url="https://iam.test.cloud.ibm.com/",
            client_id="bx",
            client_secret="bx-secret",
            scope="ibm openid",
            clock=anyio.current_time,
        )
        token = await tm.get_token_info()
    assert token.refresh_token == "r-1"
    request = route.calls.last.request
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"bx:bx-secret").decode()
    assert form_of(request)["scope"] == "ibm openid"
    await tm.aclose()


async def test_fake_iam_checks_client_credentials() -> None:
    fake = FakeIAM(client_id="bx", client_secret="bx-secret")
    tm = TokenManager(
        "test-api-key",
        url="http://localhost:8080",
        client_id="bx",
        client_secret="bx-secret",
        transport=fake.transport,
        clock=anyio.current_time,
    )
    token = await tm.get_token_info()
    assert token.refresh_token is not None
    await tm.aclose()


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("https://iam.cloud.ibm.com", "https://iam.cloud.ibm.com/identity/token"),
        ("https://iam.cloud.ibm.com/", "https://iam.cloud.ibm.com/identity/token"),
        ("https://iam.cloud.ibm.com/identity/token", "https://iam.cloud.ibm.com/identity/token"),
        ("https://iam.cloud.ibm.com/identity/token/", "https://iam.cloud.ibm.com/identity/token"),
        ("https://private.iam.cloud.ibm.com", "https://private.iam.cloud.ibm.com/identity/token"),
        ("https://proxy.example/iam", "https://proxy.example/iam/identity/token"),
        ("http://localhost:8080", "http://localhost:8080/identity/token"),
        ("http://127.0.0.5:9", "http://127.0.0.5:9/identity/token"),
        ("http://[::1]:8080", "http://[::1]:8080/identity/token"),
    ],
)
def test_url_is_normalised_to_the_token_endpoint(url: str, endpoint: str) -> None:
    assert token_endpoint(url) == endpoint
    assert TokenManager("k", url=url)._source.endpoint == endpoint  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("http://iam.cloud.ibm.com", "https"),
        ("http://10.0.0.1", "https"),
        ("http://localhost.evil.com", "https"),
        ("ftp://iam.cloud.ibm.com", "absolute https URL"),
        ("iam.cloud.ibm.com", "absolute https URL"),
        ("", "non-empty"),
        ("https://user:pw@iam.cloud.ibm.com", "user name or password"),
        ("https://iam.cloud.ibm.com/?x=1", "query"),
        ("https://[::1", "not a valid URL"),
        ("https://:443", "absolute https URL"),
    ],
)
def test_bad_urls_raise_value_error_at_construction(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        TokenManager("k", url=url)
    assert "pw" not in str(info.value)


@pytest.mark.parametrize("key", ["", "   ", None])  # a key of the wrong type: tests/test_validation.py
def test_missing_or_blank_key_raises_value_error(key: object) -> None:
    with pytest.raises(ValueError, match="api_key"):
        TokenManager(key)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("client_id", "client_secret"),
    [("bx", None), (None, "secret"), ("", "secret"), ("bx", "")],
)
def test_client_id_and_secret_go_together(client_id: str | None, client_secret: str | None) -> None:
    with pytest.raises(ValueError, match="both or neither"):
        TokenManager("k", client_id=client_id, client_secret=client_secret)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("[::1]", True),
        ("LOCALHOST", True),
        ("10.0.0.1", False),
        ("example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


async def test_redirects_are_not_followed() -> None:
    with respx.mock(assert_all_called=True) as router:
        router.post("https://iam.cloud.ibm.com/identity/token").respond(302, headers={"Location": "http://evil/"})
        tm = TokenManager("my-key", clock=anyio.current_time)
        with pytest.raises(InvalidResponseError, match="302"):
            await tm.get_token()
        assert len(router.calls) == 1
    await tm.aclose()


async def test_the_body_is_not_an_async_generator_so_a_cancelled_send_leaves_nothing_to_finalize() -> None:
    # httpx's own body stream is an async generator: cancelled mid-send, it is left unfinished
    # and trio warns when it is collected. The token request's body is a plain iterator.
    source = ApiKeySource("test-api-key-0123456789")
    async with httpx.AsyncClient() as client:
        request = source.build_request(client)
    iterator = aiter(request.stream)  # type: ignore[arg-type]
    assert not inspect.isasyncgen(iterator)
    assert [chunk async for chunk in iterator] == [request.content]
    assert int(request.headers["Content-Length"]) == len(request.content)
    assert [chunk async for chunk in request.stream] == [request.content]  # type: ignore[union-attr]
