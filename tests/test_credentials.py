"""Credentials refused at construction: placeholders, quoted values, and URLs holding a secret in
any letter case. Every message is checked to quote nothing secret."""

from __future__ import annotations

import pytest

from aioiam import ApiKeySource, TokenManager
from aioiam._sources import check_credential

KEY = "Abc123-secret-key_XYZ-0123456789abcdefghij"
CLIENT_SECRET = "Client-Secret-0123456789"


@pytest.mark.parametrize(
    "wrapped",
    [f"{{{KEY}}}", f'"{KEY}"', f"'{KEY}'", f"<{KEY}>", "<your-apikey>", "{apikey}", '"my_apikey"', f"{KEY}'"],
)
def test_a_key_wrapped_like_a_placeholder_or_a_quoted_value_is_refused(wrapped: str) -> None:
    with pytest.raises(ValueError, match="placeholder") as caught:
        TokenManager(wrapped)
    assert "quoted value" in str(caught.value)
    assert KEY not in str(caught.value)


@pytest.mark.parametrize("field", ["client_id", "client_secret"])
def test_client_credentials_are_checked_the_same_way(field: str) -> None:
    values = {"client_id": "bx", "client_secret": CLIENT_SECRET, field: f'"{CLIENT_SECRET}"'}
    with pytest.raises(ValueError, match=f"{field} starts or ends") as caught:
        TokenManager(KEY, client_id=values["client_id"], client_secret=values["client_secret"])
    assert CLIENT_SECRET not in str(caught.value)


def test_surrounding_white_space_is_not_part_of_the_key() -> None:
    assert check_credential("api_key", f"  {KEY}\n") == KEY


def test_a_key_with_a_brace_inside_is_left_to_iam() -> None:
    assert check_credential("api_key", "ab{cd}ef-not-wrapped") == "ab{cd}ef-not-wrapped"


@pytest.mark.parametrize(
    "url",
    [
        f"https://{KEY.lower()}.example.com",
        f"https://{KEY.upper()}.example.com",
        f"https://iam.example.com/{KEY.upper()}",
        f"https://iam.example.com/{KEY.swapcase()}/identity/token",
    ],
)
def test_a_url_holding_the_key_in_any_letter_case_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="url contains the API key or the client secret") as caught:
        TokenManager(KEY, url=url)
    message = str(caught.value).casefold()
    assert KEY.casefold() not in message


def test_a_url_holding_the_client_secret_in_another_case_is_refused() -> None:
    url = f"https://iam.example.com/{CLIENT_SECRET.upper()}"
    with pytest.raises(ValueError, match="url contains") as caught:
        ApiKeySource(KEY, url=url, client_id="bx", client_secret=CLIENT_SECRET)
    assert CLIENT_SECRET.casefold() not in str(caught.value).casefold()


def test_no_repr_shows_a_key_that_was_refused_in_the_url() -> None:
    """The hole this closes: the manager's repr used to print an endpoint holding the key."""
    good = TokenManager(KEY, url="https://iam.example.com")
    assert KEY.casefold() not in repr(good).casefold()
    assert "iam.example.com" in repr(good)
