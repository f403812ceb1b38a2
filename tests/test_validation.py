"""Bad arguments fail at construction with a typed, clear error that never quotes a secret.

TypeError for a wrong type, ValueError for a bad value; a key passed in the wrong place (as the
URL, inside the URL) is never echoed. Also: which hosts count as loopback.
"""

from __future__ import annotations

import functools
import logging
import random
import ssl
from typing import Any
from urllib.parse import quote_plus

import httpx
import pytest

from aioiam import ApiKeySource, FetchAttempt, IAMAuth, RefreshPolicy, RetryPolicy, TokenManager
from aioiam._urls import is_loopback_host, token_endpoint
from aioiam.testing import FakeIAM
from tests.helpers import Recorder

KEY = "SECRETkeySECRETkeySECRETkeySECRETkey-0123_"  # 44 characters, like a real IBM Cloud API key
CLIENT_SECRET = "SECRET-client-secret-42"


def make(**kwargs: Any) -> TokenManager:
    kwargs.setdefault("url", "http://127.0.0.1:1")
    return TokenManager(kwargs.pop("api_key", KEY), **kwargs)


def assert_no_secret(error: BaseException) -> None:
    for text in (str(error), repr(error)):
        for secret in (KEY, CLIENT_SECRET, quote_plus(KEY), "SECRET"):
            assert secret not in text, text


# ------------------------------------------------------------------ wrong types


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"api_key": b"SECRET-bytes-key-0123456789"}, "api_key must be a str, not bytes"),
        ({"api_key": 42}, "api_key must be a str, not int"),
        ({"client_id": 1, "client_secret": CLIENT_SECRET}, "client_id must be a str"),
        ({"client_id": "bx", "client_secret": b"SECRET-client-secret"}, "client_secret must be a str"),
        ({"scope": ["ibm", "openid"]}, "scope must be a str"),
        ({"url": b"https://iam.cloud.ibm.com"}, "url must be a str"),
        ({"url": None}, "url must be a str"),
        ({"refresh": {"refresh_fraction": 0.5}}, "refresh must be an aioiam.RefreshPolicy"),
        ({"retry": RefreshPolicy()}, "retry must be an aioiam.RetryPolicy"),
        ({"clock": "monotonic"}, "clock must be a function"),
        ({"wall_clock": 0.0}, "wall_clock must be a function"),
        ({"rng": 42}, "rng must have a random"),
        ({"verify": "/etc/ssl/private-ca.pem"}, "ssl.SSLContext"),
        ({"verify": None}, "ssl.SSLContext"),
        ({"verify": 1}, "ssl.SSLContext"),
        ({"hooks": Recorder()}, r"hooks=\[hook\]"),
        ({"hooks": 5}, "hooks must be a sequence"),
        ({"hooks": [Recorder(), "not callable"]}, r"hooks\[1\] must be callable"),
    ],
)
def test_wrong_types_raise_type_error_at_construction(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(TypeError, match=match) as info:
        make(**kwargs)
    assert_no_secret(info.value)


@pytest.mark.parametrize("api_key", [b"SECRET-bytes-key-0123456789", 42, 4.2])
def test_api_key_source_rejects_a_key_that_is_not_a_str(api_key: object) -> None:
    with pytest.raises(TypeError, match="api_key must be a str") as info:
        ApiKeySource(api_key)  # type: ignore[arg-type]
    assert_no_secret(info.value)


async def _async_hook(attempt: FetchAttempt) -> None:
    pass


async def _async_generator_hook(attempt: FetchAttempt) -> Any:
    yield attempt


class _AsyncCallable:
    async def __call__(self, attempt: FetchAttempt) -> None:
        pass


@pytest.mark.parametrize(
    "hook",
    [_async_hook, functools.partial(_async_hook), _AsyncCallable(), _async_generator_hook],
    ids=["async-def", "partial", "async-call", "async-generator"],
)
def test_async_hooks_are_refused_because_hooks_are_called_synchronously(hook: Any) -> None:
    with pytest.raises(TypeError, match=r"hooks\[0\].*async function.*called synchronously"):
        make(hooks=[hook])


class _DuckRandom:
    def random(self) -> float:
        return 0.5


@pytest.mark.anyio
@pytest.mark.parametrize("duck", [False, True], ids=["random-sslcontext", "duck-random-unverified"])
async def test_good_arguments_of_every_kind_are_accepted(duck: bool, caplog: pytest.LogCaptureFixture) -> None:
    """Accepted, and each one in effect: the manager gets a token with them and uses every one."""
    rng: Any = _DuckRandom() if duck else random.Random(1)
    u = 0.5 if duck else random.Random(1).random()  # the first draw is the refresh jitter
    verify: bool | ssl.SSLContext = False if duck else ssl.create_default_context()
    fake = FakeIAM(api_keys=[KEY], client_id="bx", client_secret=CLIENT_SECRET)
    recorder = Recorder()
    seen: list[FetchAttempt] = []
    with caplog.at_level(logging.WARNING, logger="aioiam"):
        tm = make(
            rng=rng,
            hooks=[recorder, print, seen.append, lambda attempt: None],
            refresh=RefreshPolicy(),
            retry=RetryPolicy(timeout=5),
            clock=lambda: 100.0,
            wall_clock=lambda: 0.0,
            verify=verify,
            transport=fake.transport,
            client_id="bx",
            client_secret=CLIENT_SECRET,
            scope="ibm openid platform",
        )
        token = await tm.get_token_info()
        await tm.aclose()
    assert token.access_token == fake.issued[0]  # the key and the client credentials were right
    assert token.refresh_token == fake.refresh_tokens[0]  # IAM saw the client credentials
    assert token.scope == "ibm openid platform"
    assert token.obtained_at == 100.0  # the clock
    assert token.refresh_at == pytest.approx(100.0 + 3600 * (0.8 - 0.05 * u))  # the rng, through the policy
    assert recorder.attempts == seen  # every hook was called
    assert [attempt.ok for attempt in seen] == [True]
    messages = [record.getMessage() for record in caplog.records]
    assert any("local clock differs" in message for message in messages)  # the wall clock (0.0)
    assert any("verification of IAM is OFF" in message for message in messages) is (verify is False)


# ------------------------------------------------------------------ secrets in URL errors


@pytest.mark.parametrize(
    "kwargs",
    [
        {"url": "k" * 40, "api_key": "k" * 40},
        {"url": KEY},  # the key passed as url (under some other key)
        {"url": KEY, "api_key": "another-real-looking-api-key-0123456789abcd"},
        {"url": CLIENT_SECRET, "client_id": "bx", "client_secret": CLIENT_SECRET},
        {"url": f"https://iam.cloud.ibm.com/{KEY}"},
        {"url": f"https://iam.cloud.ibm.com/{quote_plus(KEY + ' /+=')}", "api_key": KEY + " /+="},
        {"url": f"https://iam.cloud.ibm.com/?apikey={KEY}"},
        {"url": f"https://iam.cloud.ibm.com/#{KEY}"},
        {"url": f"https://{KEY}/"},
        {"url": f"https://{CLIENT_SECRET}@iam.cloud.ibm.com", "client_id": "bx", "client_secret": CLIENT_SECRET},
        {"url": "SECRET-unknown-value-0123456789"},
        {"url": "SECRET:unknown-value"},
        {"url": f"https://iam.cloud.ibm.com:{KEY}"},
    ],
    ids=[
        "url-is-the-key",
        "url-is-the-key-too",
        "url-is-an-unknown-key",
        "url-is-the-client-secret",
        "key-in-path",
        "key-form-encoded-in-path",
        "key-in-query",
        "key-in-fragment",
        "key-as-host",
        "secret-as-userinfo",
        "not-url-shaped",
        "odd-scheme",
        "key-as-port",
    ],
)
def test_url_errors_never_quote_a_secret(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="url") as info:
        make(**kwargs)
    assert_no_secret(info.value)
    for value in kwargs.values():
        if value != "bx":
            assert value not in str(info.value)


def test_swapped_key_and_url_are_refused_without_echoing_the_key() -> None:
    with pytest.raises(ValueError, match="looks like a URL") as info:
        TokenManager("https://iam.cloud.ibm.com", url=KEY)
    assert_no_secret(info.value)
    with pytest.raises(ValueError, match="absolute https URL") as info:
        token_endpoint(KEY)
    assert_no_secret(info.value)


def test_a_url_shaped_url_is_still_quoted_to_help() -> None:
    with pytest.raises(ValueError, match=r"'http://iam\.cloud\.ibm\.com'"):
        make(url="http://iam.cloud.ibm.com")
    with pytest.raises(ValueError, match=r"'ftp://iam\.cloud\.ibm\.com'"):
        make(url="ftp://iam.cloud.ibm.com")


def test_a_url_that_merely_contains_a_short_key_is_fine() -> None:
    # Short strings are not treated as secrets (see MIN_REDACTABLE_LENGTH): "iam" is in the URL.
    assert make(api_key="iam", url="https://iam.cloud.ibm.com")._source.endpoint.startswith("https://iam.")  # type: ignore[attr-defined]


# ------------------------------------------------------------------ loopback


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost.", True),
        ("LocalHost", True),
        ("127.0.0.1", True),
        ("[::1]", True),
        ("app.localhost", False),
        ("evil.localhost", False),
        ("localhost.localdomain", False),
        ("localhost.evil.com", False),
        ("0.0.0.0", False),  # noqa: S104 - a host name under test, nothing binds to it
    ],
)
def test_only_localhost_and_loopback_addresses_are_loopback(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_subdomains_of_localhost_get_neither_plain_http_nor_the_token() -> None:
    with pytest.raises(ValueError, match="must use https"):
        make(url="http://app.localhost:8080")
    auth = IAMAuth(make())
    assert not auth.may_send_token(httpx.URL("http://app.localhost:8080/v1"))
    assert not auth.may_send_token(httpx.URL("https://app.localhost/v1"))
    assert auth.may_send_token(httpx.URL("http://localhost:8080/v1"))
