"""The pure timing rules: token state, schedule, backoff. No I/O, no event loop."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aioiam import InvalidResponseError, RefreshPolicy, RetryPolicy, TokenResponse, TokenState
from aioiam._timing import (
    backoff_delay,
    expiry_margin,
    next_attempt_at,
    schedule,
    seconds,
    token_state,
)
from aioiam._token import parse_token_response

lifetimes = st.floats(min_value=0.001, max_value=86_400, allow_nan=False)
times = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
unit = st.floats(min_value=0, max_value=1, exclude_max=True)
policies = st.builds(
    RefreshPolicy,
    refresh_fraction=st.floats(min_value=0.5, max_value=1.0),
    jitter_fraction=st.floats(min_value=0.0, max_value=0.09),
    expiry_margin=st.floats(min_value=0, max_value=120),
    expiry_margin_fraction=st.floats(min_value=0, max_value=0.5),
)


def response(lifetime: float) -> TokenResponse:
    return TokenResponse(access_token="a.b.c", token_type="Bearer", expires_in=lifetime)


def test_default_schedule_refreshes_at_80_percent_and_stops_10s_before_expiry() -> None:
    token = schedule(response(3600), obtained_at=100.0, policy=RefreshPolicy(jitter_fraction=0), u=0.0)
    assert token.refresh_at == pytest.approx(100 + 2880)
    assert token.stale_at == pytest.approx(100 + 3590)
    assert token.expires_at == pytest.approx(100 + 3600)


def test_jitter_moves_refresh_earlier_never_later() -> None:
    policy = RefreshPolicy(jitter_fraction=0.05)
    early = schedule(response(1000), 0.0, policy, u=0.999)
    late = schedule(response(1000), 0.0, policy, u=0.0)
    assert late.refresh_at == pytest.approx(800)
    assert 750 <= early.refresh_at < 751


def test_short_lived_token_margin_is_ten_percent_of_lifetime() -> None:
    assert expiry_margin(30, RefreshPolicy()) == pytest.approx(3)
    assert expiry_margin(3600, RefreshPolicy()) == 10


def test_token_state_walks_fresh_due_unusable() -> None:
    token = schedule(response(100), 0.0, RefreshPolicy(jitter_fraction=0), u=0.0)
    assert token_state(token, 0.0) is TokenState.FRESH
    assert token_state(token, 79.9) is TokenState.FRESH
    assert token_state(token, 80.0) is TokenState.REFRESH_DUE
    assert token_state(token, 89.9) is TokenState.REFRESH_DUE
    assert token_state(token, 90.0) is TokenState.UNUSABLE
    assert token_state(None, 0.0) is TokenState.UNUSABLE


@given(lifetime=lifetimes, obtained=times, policy=policies, u=unit, offset=st.floats(0, 2, allow_nan=False))
def test_token_inside_its_margin_is_never_usable(
    lifetime: float, obtained: float, policy: RefreshPolicy, u: float, offset: float
) -> None:
    token = schedule(response(lifetime), obtained, policy, u)
    margin = expiry_margin(lifetime, policy)
    now = token.expires_at - margin + offset * margin
    if now >= token.stale_at:
        assert token_state(token, now) is TokenState.UNUSABLE
    assert token_state(token, token.expires_at) is TokenState.UNUSABLE


@given(lifetime=lifetimes, obtained=times, policy=policies, u=unit)
def test_schedule_is_ordered(lifetime: float, obtained: float, policy: RefreshPolicy, u: float) -> None:
    token = schedule(response(lifetime), obtained, policy, u)
    assert obtained <= token.refresh_at <= token.stale_at <= token.expires_at
    assert token.expires_at - token.stale_at == pytest.approx(expiry_margin(lifetime, policy), abs=1e-6)


@given(failures=st.integers(1, 10_000), u=unit)
def test_backoff_is_within_cap(failures: int, u: float) -> None:
    policy = RetryPolicy(initial_delay=0.5, max_delay=30)
    delay = backoff_delay(failures, policy, u)
    assert 0 <= delay <= min(30, 0.5 * 2 ** min(failures - 1, 64))


def test_backoff_cap_doubles_then_saturates() -> None:
    policy = RetryPolicy(initial_delay=0.5, max_delay=30)
    caps = [backoff_delay(n, policy, u=1.0) for n in range(1, 10)]
    assert caps == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert backoff_delay(0, policy, u=1.0) == 0


@given(failures=st.integers(1, 50), u=unit, retry_after=st.floats(0, 10_000, allow_nan=False))
def test_backoff_honours_retry_after_up_to_its_cap(failures: int, u: float, retry_after: float) -> None:
    policy = RetryPolicy(max_retry_after=300)
    delay = backoff_delay(failures, policy, u, retry_after=retry_after)
    assert delay >= min(retry_after, 300)
    assert delay <= max(min(retry_after, 300), policy.max_delay)


def test_next_attempt_waits_for_refresh_time_and_backoff() -> None:
    token = schedule(response(100), 0.0, RefreshPolicy(jitter_fraction=0), u=0.0)
    assert next_attempt_at(token, float("-inf"), 10.0) == 80.0
    assert next_attempt_at(token, float("-inf"), 85.0) == 85.0
    assert next_attempt_at(token, 95.0, 85.0) == 95.0
    assert next_attempt_at(None, float("-inf"), 3.0) == 3.0


def test_after_a_refusal_the_refresher_asks_again_only_while_a_usable_token_is_held() -> None:
    token = schedule(response(100), 0.0, RefreshPolicy(jitter_fraction=0), u=0.0)  # stale at 90
    assert next_attempt_at(token, 88.0, 85.0, refused=True) == 88.0  # still usable: keep trying
    assert next_attempt_at(token, 95.0, 90.0, refused=True) == math.inf  # stale: stop
    assert next_attempt_at(None, 5.0, 3.0, refused=True) == math.inf


def test_durations_accept_timedelta_and_reject_nonsense() -> None:
    assert seconds(timedelta(minutes=1), "x") == 60
    assert RetryPolicy(timeout=timedelta(seconds=3)).timeout == 3  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-negative"):
        seconds(-1, "x")
    with pytest.raises(ValueError, match="finite"):
        seconds(float("nan"), "x")
    with pytest.raises(TypeError, match="number of seconds"):
        seconds("5", "x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"refresh_fraction": 0}, "refresh_fraction"),
        ({"refresh_fraction": 1.5}, "refresh_fraction"),
        ({"jitter_fraction": 0.9}, "jitter_fraction"),
        ({"expiry_margin_fraction": 1}, "expiry_margin_fraction"),
    ],
)
def test_refresh_policy_rejects_bad_values(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RefreshPolicy(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"multiplier": 0.5}, "multiplier"),
        ({"initial_delay": 10, "max_delay": 1}, "max_delay"),
        ({"request_timeout": 0}, "request_timeout"),
        ({"timeout": -1}, "timeout"),
    ],
)
def test_retry_policy_rejects_bad_values(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RetryPolicy(**kwargs)


@given(failures=st.integers(1, 100), u=unit, usable_for=st.floats(0.001, 10_000, allow_nan=False))
def test_backoff_retries_before_a_usable_token_goes_stale(failures: int, u: float, usable_for: float) -> None:
    policy = RetryPolicy(initial_delay=0.5, max_delay=30)
    delay = backoff_delay(failures, policy, u, usable_for=usable_for)
    assert delay <= max(0.5, usable_for / 2)


def test_retry_after_wins_over_the_usable_token_cap() -> None:
    policy = RetryPolicy()
    assert backoff_delay(1, policy, 0.5, retry_after=60, usable_for=10) == 60


REFRESH_FIELDS = ["refresh_fraction", "jitter_fraction", "expiry_margin", "expiry_margin_fraction"]
RETRY_FIELDS = ["initial_delay", "max_delay", "multiplier", "timeout", "request_timeout", "max_retry_after"]


def _policy(cls: type[RefreshPolicy | RetryPolicy], name: str, value: object) -> object:
    return cls(**{name: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["0.5", None, True, False, [1], b"1"], ids=repr)
@pytest.mark.parametrize(
    ("cls", "name"),
    [(RefreshPolicy, name) for name in REFRESH_FIELDS] + [(RetryPolicy, name) for name in RETRY_FIELDS],
)
def test_policy_fields_of_the_wrong_type_raise_type_error_naming_the_field(
    cls: type[RefreshPolicy | RetryPolicy], name: str, value: object
) -> None:
    with pytest.raises(TypeError, match=f"^{name} must be a number"):
        _policy(cls, name, value)


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), float("-inf"), 10**400], ids=["nan", "inf", "-inf", "10**400"]
)
@pytest.mark.parametrize(
    ("cls", "name"),
    [(RefreshPolicy, name) for name in REFRESH_FIELDS] + [(RetryPolicy, name) for name in RETRY_FIELDS],
)
def test_policy_fields_that_are_not_finite_raise_value_error_naming_the_field(
    cls: type[RefreshPolicy | RetryPolicy], name: str, value: object
) -> None:
    with pytest.raises(ValueError, match=f"^{name} must be finite"):
        _policy(cls, name, value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"multiplier": 0.999}, "multiplier must be at least 1"),
        ({"timeout": 0}, "timeout must be positive"),
        ({"timeout": timedelta(0)}, "timeout must be positive"),
        ({"request_timeout": timedelta(0)}, "request_timeout must be positive"),
        ({"request_timeout": -0.0}, "request_timeout must be positive"),
        ({"max_retry_after": -1}, "max_retry_after must be non-negative"),
    ],
)
def test_retry_policy_rejects_a_timeout_that_would_allow_no_request(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_policies_accept_other_real_numbers_and_store_floats() -> None:
    from fractions import Fraction

    retry = RetryPolicy(multiplier=Fraction(3, 2), initial_delay=0, timeout=1)  # type: ignore[arg-type]
    assert (retry.multiplier, retry.initial_delay, retry.timeout) == (1.5, 0.0, 1.0)
    assert all(type(getattr(retry, name)) is float for name in RETRY_FIELDS)
    refresh = RefreshPolicy(refresh_fraction=1, jitter_fraction=0, expiry_margin=timedelta(seconds=5))  # type: ignore[arg-type]
    assert all(type(getattr(refresh, name)) is float for name in REFRESH_FIELDS)
    assert RetryPolicy(max_retry_after=0, initial_delay=0, max_delay=0).max_delay == 0


@pytest.mark.parametrize("multiplier", [1e6, 1e300])
def test_backoff_with_a_huge_multiplier_reaches_the_cap_without_overflowing(multiplier: float) -> None:
    policy = RetryPolicy(initial_delay=0.5, max_delay=30, multiplier=multiplier)
    assert backoff_delay(1, policy, 1.0) == 0.5
    assert backoff_delay(100, policy, 0.5) == 15.0
    assert backoff_delay(100, RetryPolicy(initial_delay=0, max_delay=30, multiplier=multiplier), 1.0) == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [{"refresh_fraction": 1e-9}, {"refresh_fraction": 0.49}, {"jitter_fraction": 0.3}, {"refresh_fraction": 1.01}],
)
def test_refresh_policies_that_would_make_the_refresher_a_request_loop_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be in"):
        RefreshPolicy(**kwargs)


def test_nan_expires_in_from_iam_is_refused() -> None:
    with pytest.raises(InvalidResponseError, match="'expires_in' is missing or not a number"):
        parse_token_response(b'{"access_token": "a.b.c", "token_type": "Bearer", "expires_in": NaN}')
