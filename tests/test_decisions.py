"""The pure decisions: what a caller does next, the failure record, which failures are transient,
and whether an answer is a usable token. No I/O, no event loop, no clock."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aioiam import (
    IAMUnavailableError,
    InvalidCredentialsError,
    InvalidResponseError,
    RefreshPolicy,
    RetryPolicy,
    TokenResponse,
    TransientIAMError,
)
from aioiam._decisions import (
    NO_FAILURES,
    FailureRecord,
    Raise,
    Sleep,
    Take,
    Wait,
    after_failure,
    caller_step,
    check_answer,
    classify,
    describe,
    joins_at_once,
)
from aioiam._timing import schedule

POLICY = RefreshPolicy(jitter_fraction=0)
TOKEN = schedule(TokenResponse("a.b.c", "Bearer", 100.0), 0.0, POLICY, 0.0)  # refresh 80, stale 90
REFUSED = InvalidCredentialsError("IAM answered 400", status_code=400)
DOWN = TransientIAMError("IAM answered 503", status_code=503)
KEY = "the-api-key-0123456789"


def redact(text: str) -> str:
    return text.replace(KEY, "[redacted]")


def step(token: object = TOKEN, record: FailureRecord = NO_FAILURES, **kwargs: Any) -> object:
    arguments: dict[str, object] = {"now": 0.0, "deadline": 15.0, "timeout": 15.0, "refresher": False, "busy": False}
    arguments.update(kwargs)
    return caller_step(token, record, **arguments)  # type: ignore[arg-type]


# ------------------------------------------------------------------ caller_step


def test_a_fresh_token_is_taken_and_nothing_else_happens() -> None:
    assert step(now=79.9) == Take(TOKEN)


def test_a_due_token_is_taken_and_on_demand_the_caller_starts_the_refresh() -> None:
    assert step(now=85.0) == Take(TOKEN, refresh=True)


@pytest.mark.parametrize("kwargs", [{"refresher": True}, {"busy": True}])
def test_a_due_token_is_taken_without_a_refresh_when_one_is_handled(kwargs: dict[str, Any]) -> None:
    assert step(now=85.0, **kwargs) == Take(TOKEN)


def test_a_due_token_within_a_backoff_is_taken_without_a_refresh() -> None:
    record = FailureRecord(failures=1, streak=1, error=DOWN, not_before=86.0)
    assert step(now=85.0, record=record) == Take(TOKEN)
    assert step(now=86.0, record=record) == Take(TOKEN, refresh=True)


@pytest.mark.parametrize("token", [None, TOKEN])
def test_no_usable_token_means_wait_for_the_flight(token: object) -> None:
    assert step(token=token, now=90.0, deadline=105.0) == Wait()


def test_a_refusal_in_its_cooldown_is_raised_again_without_a_request() -> None:
    record = FailureRecord(failures=1, streak=1, error=REFUSED, not_before=10.0)
    result = step(token=None, record=record, now=5.0)
    assert isinstance(result, Raise)
    assert result.error is not REFUSED  # a copy per caller: tracebacks don't pile up
    assert type(result.error) is InvalidCredentialsError
    assert str(result.error) == str(REFUSED)
    assert step(token=None, record=record, now=10.0) == Wait()  # the cooldown is over: ask again


def test_the_refusal_of_the_flight_a_caller_waited_for_is_raised_even_after_its_cooldown() -> None:
    record = FailureRecord(failures=1, streak=1, error=REFUSED, not_before=0.0)  # no cooldown at all
    result = step(token=None, record=record, now=1.0, waited=REFUSED)
    assert isinstance(result, Raise)
    assert isinstance(result.error, InvalidCredentialsError)


def test_a_transient_failure_of_the_flight_waited_for_is_not_raised_by_itself() -> None:
    record = FailureRecord(failures=1, streak=1, error=DOWN, not_before=2.0)
    assert step(token=None, record=record, now=1.0, waited=DOWN) == Sleep(2.0)


def test_a_backoff_that_ends_after_the_deadline_gives_up_at_once() -> None:
    record = FailureRecord(failures=3, streak=3, error=DOWN, not_before=20.0)
    result = step(token=None, record=record, now=1.0, deadline=16.0)
    assert isinstance(result, Raise)
    assert isinstance(result.error, IAMUnavailableError)
    assert str(result.error) == "IAM is unavailable and no usable token is left; last failure: IAM answered 503"
    assert result.error.cause is DOWN
    assert result.error.status_code == 503


def test_a_caller_past_its_deadline_gives_up_saying_how_long_it_waited() -> None:
    result = step(token=None, now=15.0, deadline=15.0, timeout=15.0)
    assert isinstance(result, Raise)
    assert str(result.error) == "no token from IAM within 15s"


@given(
    now=st.floats(min_value=-10, max_value=200),
    elapsed=st.floats(min_value=0, max_value=30),
    not_before=st.floats(min_value=-10, max_value=200),
    kind=st.sampled_from([None, REFUSED, DOWN]),
    refresher=st.booleans(),
    busy=st.booleans(),
    has_token=st.booleans(),
)
def test_no_caller_is_ever_handed_an_unusable_token(
    now: float, elapsed: float, not_before: float, kind: object, refresher: bool, busy: bool, has_token: bool
) -> None:
    record = NO_FAILURES if kind is None else FailureRecord(1, 1, kind, not_before)  # type: ignore[arg-type]
    deadline = now + 15 - elapsed
    result = step(
        token=TOKEN if has_token else None,
        record=record,
        now=now,
        deadline=deadline,
        refresher=refresher,
        busy=busy,
    )
    if isinstance(result, Take):
        assert now < TOKEN.stale_at
        assert not result.refresh or (not refresher and not busy and now >= record.not_before)
    elif isinstance(result, Sleep):
        assert now < result.until <= deadline
    elif isinstance(result, Wait):
        assert now < deadline
        assert record.error is None or now >= record.not_before


@given(
    now=st.floats(min_value=-10, max_value=200),
    timeout=st.floats(min_value=1e-3, max_value=30),
    refresher=st.booleans(),
    has_token=st.booleans(),
    kind=st.sampled_from([None, REFUSED, DOWN]),
)
def test_joining_at_once_is_what_caller_step_says_to_a_caller_who_just_arrived(
    now: float, timeout: float, refresher: bool, has_token: bool, kind: object
) -> None:
    """The cold crowd's shortcut never disagrees with the full rule: whenever it applies, a caller
    who just arrived (its deadline ``timeout`` ahead) would be told to wait for the flight."""
    token = TOKEN if has_token else None
    record = NO_FAILURES if kind is None else FailureRecord(1, 1, kind, now + 1)  # type: ignore[arg-type]
    if joins_at_once(token, record):
        said = step(token=None, record=record, now=now, deadline=now + timeout, refresher=refresher, busy=True)
        assert said == Wait()
    else:
        assert token is not None or record is not NO_FAILURES


# ------------------------------------------------------------------ after_failure


def test_transient_failures_back_off_with_jitter_and_grow() -> None:
    retry = RetryPolicy(initial_delay=1.0, max_delay=30.0)
    first = after_failure(NO_FAILURES, DOWN, now=100.0, token=None, policy=retry, u=0.5)
    assert (first.failures, first.streak, first.error) == (1, 1, DOWN)
    assert first.not_before == pytest.approx(100.5)
    second = after_failure(first, DOWN, now=101.0, token=None, policy=retry, u=0.5)
    assert (second.failures, second.streak) == (2, 2)
    assert second.not_before == pytest.approx(102.0)
    assert not second.refused


def test_a_refusal_waits_the_whole_cap_and_starts_its_own_streak() -> None:
    retry = RetryPolicy(initial_delay=1.0, max_delay=30.0)
    outage = after_failure(NO_FAILURES, DOWN, now=0.0, token=None, policy=retry, u=0.0)
    outage = after_failure(outage, DOWN, now=1.0, token=None, policy=retry, u=0.0)
    refused = after_failure(outage, REFUSED, now=2.0, token=None, policy=retry, u=0.0)
    assert (refused.failures, refused.streak, refused.refused) == (3, 1, True)
    assert refused.not_before == pytest.approx(3.0)  # a first refusal's cooldown, no jitter


def test_retry_after_is_honoured_and_a_usable_token_shortens_the_wait() -> None:
    retry = RetryPolicy(initial_delay=1.0, max_delay=30.0)
    record = FailureRecord(failures=5, streak=5, error=DOWN, not_before=0.0)
    later = TransientIAMError("429", retry_after=7.0)
    assert after_failure(record, later, now=0.0, token=None, policy=retry, u=0.0).not_before == 7.0
    capped = after_failure(record, DOWN, now=84.0, token=TOKEN, policy=retry, u=0.99)
    assert capped.not_before == pytest.approx(84.0 + 3.0)  # half of the 6 s of life left


# ------------------------------------------------------------------ classify and check_answer


def test_network_errors_are_transient_and_scrubbed_with_the_error_under_them() -> None:
    inner = OSError(f"connection refused while sending apikey={KEY}")
    outer = httpx.ConnectError("")
    outer.__cause__ = inner
    error = classify(outer, redact)
    assert isinstance(error, TransientIAMError)
    assert KEY not in str(error)
    assert "ConnectError (OSError: connection refused while sending apikey=[redacted])" in str(error)


def test_an_iam_error_from_a_source_is_scrubbed() -> None:
    error = classify(InvalidCredentialsError(f"refused {KEY}", request_id=KEY), redact)
    assert isinstance(error, InvalidCredentialsError)
    assert (str(error), error.request_id) == ("refused [redacted]", "[redacted]")


def test_an_unreadable_body_and_a_sources_bug_are_unusable_answers() -> None:
    assert isinstance(classify(httpx.DecodingError("bad gzip"), redact), InvalidResponseError)
    bug = classify(KeyError("x"), redact)
    assert str(bug) == "the token source failed: KeyError"
    assert isinstance(bug.__cause__, KeyError)
    leaky = classify(RuntimeError(f"oops {KEY}"), redact)
    assert leaky.__cause__ is None  # a cause quoting a secret is dropped, not kept


def test_describe_follows_the_chain_to_the_first_text() -> None:
    outer = httpx.ReadError("")
    middle = RuntimeError("")
    middle.__context__ = ConnectionResetError(104, "Connection reset by peer")
    outer.__cause__ = middle
    assert describe(outer) == "ReadError (ConnectionResetError: [Errno 104] Connection reset by peer)"


def test_an_answer_that_is_not_a_token_response_is_unusable() -> None:
    result = check_answer({"access_token": "x"}, 0.0, 1.0, POLICY, 0.0)
    assert isinstance(result, InvalidResponseError)
    assert "returned dict" in str(result)


def test_a_token_that_arrives_inside_its_margin_is_a_transient_failure() -> None:
    answer = TokenResponse("a.b.c", "Bearer", 10.0)  # stale at 9 s
    assert isinstance(check_answer(answer, 0.0, 8.9, POLICY, 0.0), type(TOKEN))
    late = check_answer(answer, 0.0, 9.0, POLICY, 0.0)
    assert isinstance(late, TransientIAMError)
    assert "inside its expiry margin" in str(late)


def test_an_answer_with_a_bad_lifetime_is_unusable() -> None:
    result = check_answer(TokenResponse("a.b.c", "Bearer", math.inf), 0.0, 0.0, POLICY, 0.0)
    assert isinstance(result, InvalidResponseError)
