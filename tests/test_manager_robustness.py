"""Misuse and broken parts around TokenManager: nothing hangs, nothing is lost, errors are typed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections.abc import Callable, Iterator, Sequence

import anyio
import httpx
import pytest

import aioiam._decisions
from aioiam import (
    IAMError,
    IAMUnavailableError,
    InvalidCredentialsError,
    InvalidResponseError,
    ManagerClosedError,
    RetryPolicy,
    TokenManager,
    TokenResponse,
)
from aioiam.testing import FakeIAM, Fault
from tests._virtual_time import new_virtual_loop
from tests.helpers import KEY, make_manager

pytestmark = pytest.mark.anyio


class _BrokenSource:
    """A custom source whose ``fetch`` returns something that is not a TokenResponse."""

    def __init__(self, answer: object) -> None:
        self.answer = answer
        self.calls = 0

    @property
    def secrets(self) -> Sequence[str]:
        return ()

    async def fetch(self, client: httpx.AsyncClient) -> TokenResponse:
        self.calls += 1
        await anyio.sleep(0.01)
        return self.answer  # type: ignore[return-value]


async def _invalid_response_errors(tm: TokenManager, callers: int, *, background: bool) -> list[BaseException]:
    """Run ``callers`` concurrent ``get_token()`` calls (inside ``async with`` if ``background``);
    the ``InvalidResponseError`` each of them got. Any other outcome fails the test."""
    errors: list[BaseException] = []

    async def caller() -> None:
        try:
            await tm.get_token()
        except InvalidResponseError as exc:
            errors.append(exc)

    async with contextlib.AsyncExitStack() as stack:
        if background:
            await stack.enter_async_context(tm)
        async with anyio.create_task_group() as tg:
            for _ in range(callers):
                tg.start_soon(caller)
    return errors


@pytest.mark.parametrize("background", [True, False], ids=["background", "on_demand"])
async def test_a_source_returning_the_wrong_type_gives_every_waiter_invalid_response(background: bool) -> None:
    source = _BrokenSource({"access_token": "x"})
    tm = TokenManager(source=source, clock=anyio.current_time)
    errors = await _invalid_response_errors(tm, 20, background=background)
    assert len(errors) == 20
    assert "returned dict, not an aioiam.TokenResponse" in str(errors[0])
    assert source.calls == 1
    await tm.aclose()


@pytest.mark.parametrize("background", [True, False], ids=["background", "on_demand"])
async def test_a_bug_after_the_answer_never_leaves_waiters_hanging(
    background: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_schedule(*args: object, **kwargs: object) -> object:
        raise ZeroDivisionError("a bug in the bookkeeping")

    monkeypatch.setattr(aioiam._decisions, "schedule", broken_schedule)
    fake = FakeIAM(latency=0.05)
    tm = make_manager(fake)
    with anyio.fail_after(5):  # a hang fails the test instead of stalling the suite
        errors = await _invalid_response_errors(tm, 10, background=background)
    assert len(errors) == 10
    assert "ZeroDivisionError" in str(errors[0])
    assert tm._flight is None
    await tm.aclose()


async def test_entering_async_with_twice_is_refused() -> None:
    tm = make_manager()
    async with tm:
        with pytest.raises(RuntimeError, match="already been entered"):
            async with tm:
                pass  # pragma: no cover - never entered
        assert await tm.get_token()  # the first entry is unharmed


async def test_two_tasks_entering_at_once_get_one_refresher_and_one_error() -> None:
    tm = make_manager()
    outcomes: list[str] = []
    release = anyio.Event()

    async def enter() -> None:
        try:
            async with tm:
                outcomes.append("entered")
                await release.wait()
        except RuntimeError:
            outcomes.append("refused")
            release.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(enter)
        tg.start_soon(enter)
    assert sorted(outcomes) == ["entered", "refused"]


async def test_refused_key_is_not_retried_in_the_background_while_no_token_is_held() -> None:
    fake = FakeIAM(api_keys=["another-key"], lifetime=600)
    tm = make_manager(fake, retry=RetryPolicy(initial_delay=0.5, max_delay=30))
    async with tm:
        with pytest.raises(InvalidCredentialsError):
            await tm.get_token()
        await anyio.sleep(3600)  # an hour: far past every cooldown
        assert fake.requests == 1  # the refresher did not re-send a refused key
        # The key is fixed on IAM's side; the next caller asks again and gets a token.
        fake.api_keys = frozenset([KEY])
        token = await tm.get_token()
        assert fake.requests == 2
        # And the refresher is back at work: it refreshes ahead of expiry with nobody waiting.
        await anyio.sleep(600)
        assert fake.requests >= 3
        assert tm.token is not None
        assert tm.token.access_token != token
        assert await tm.get_token() == fake.issued[-1]


async def test_refused_refresh_is_retried_while_the_token_is_usable_then_stops() -> None:
    fake = FakeIAM(lifetime=100)
    tm = make_manager(fake, retry=RetryPolicy(initial_delay=1, max_delay=10))
    async with tm:
        await tm.get_token()
        fake.api_keys = frozenset(["revoked"])  # the key is revoked
        await anyio.sleep(100)  # past the token's end
        during = fake.requests
        assert during > 2  # refresh attempts while the token was still usable
        await anyio.sleep(3600)
        assert fake.requests == during  # none once no usable token was left to protect
        with pytest.raises(InvalidCredentialsError):
            await tm.get_token()


async def test_a_token_that_arrives_already_stale_is_a_transient_failure_with_a_cause() -> None:
    fake = FakeIAM(lifetime=1, latency=1)  # the 1 s token takes 1 s to arrive
    tm = make_manager(fake, retry=RetryPolicy(timeout=5, initial_delay=0.5, max_delay=1))
    with pytest.raises(IAMUnavailableError, match="arrived inside its expiry margin") as caught:
        await tm.get_token()
    assert caught.value.cause is not None
    assert 2 <= fake.requests <= 6  # retried with backoff, not in a tight loop
    await tm.aclose()


async def test_fault_answer_with_a_bad_token_type_is_invalid_response() -> None:
    fake = FakeIAM()
    fake.fail_next(1, Fault.token(token_type="MAC"))
    tm = make_manager(fake)
    with pytest.raises(InvalidResponseError):
        await tm.get_token()
    await tm.aclose()


def test_managers_share_one_verifying_tls_context() -> None:
    first = TokenManager(KEY)
    second = TokenManager(KEY)
    contexts = [tm._client._transport._pool._ssl_context for tm in (first, second)]  # type: ignore[attr-defined]
    assert contexts[0] is contexts[1]


def test_a_tls_context_passed_in_is_used_as_is() -> None:
    import ssl

    context = ssl.create_default_context()
    tm = TokenManager(KEY, verify=context)
    assert tm._client._transport._pool._ssl_context is context  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- asyncio only


@pytest.mark.parametrize("anyio_backend", [("asyncio", {"loop_factory": new_virtual_loop})], ids=["asyncio"])
async def test_asyncio_cancel_of_the_on_demand_caller_running_the_request_spares_the_others() -> None:
    # asyncio.wait_for cancels with Task.cancel(), which goes through anyio's shield and cuts
    # off the request this caller runs. The others must not see ManagerClosedError: one of them
    # asks again.
    fake = FakeIAM(latency=1)
    tm = make_manager(fake, clock=asyncio.get_running_loop().time)
    starter = asyncio.ensure_future(tm.get_token())
    await asyncio.sleep(0)  # the starter is now running the request
    others = [asyncio.ensure_future(tm.get_token()) for _ in range(5)]
    await asyncio.sleep(0.5)
    starter.cancel()
    tokens = await asyncio.gather(*others)
    assert starter.cancelled()
    assert len(set(tokens)) == 1
    assert tokens[0] == fake.issued[-1]
    assert fake.requests == 1  # the request ran on in its own task
    assert not tm.closed
    await tm.aclose()


@pytest.mark.parametrize("anyio_backend", [("asyncio", {"loop_factory": new_virtual_loop})], ids=["asyncio"])
async def test_on_demand_callers_with_asyncio_timeouts_shorter_than_iam_still_get_tokens() -> None:
    # Every caller gives up (asyncio.wait_for) before IAM answers. The request outlives them, so
    # the callers who come next find the token: no request is abandoned, none is repeated.
    fake = FakeIAM(latency=0.5)
    tm = make_manager(fake, clock=asyncio.get_running_loop().time)
    got: list[str] = []
    timeouts = 0

    async def caller() -> None:
        nonlocal timeouts
        for _ in range(10):
            try:
                got.append(await asyncio.wait_for(tm.get_token(), 0.3))
            except asyncio.TimeoutError:
                timeouts += 1
            await asyncio.sleep(0.1)

    await asyncio.gather(*(caller() for _ in range(10)))
    assert fake.requests == 1
    assert timeouts == 10  # each caller's first call only
    assert len(got) == 90
    assert set(got) == {fake.issued[0]}
    await tm.aclose()


async def test_closing_releases_the_on_demand_caller_running_the_request_at_once() -> None:
    fake = FakeIAM(latency=10)
    tm = make_manager(fake)
    outcomes: list[tuple[str, float]] = []

    async def caller() -> None:
        start = anyio.current_time()
        try:
            await tm.get_token()
        except ManagerClosedError:
            outcomes.append(("closed", anyio.current_time() - start))

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(caller)  # the first runs the request (trio) or started its task (asyncio)
        await anyio.sleep(1)
        await tm.aclose()
    assert [kind for kind, _ in outcomes] == ["closed"] * 3
    assert all(waited == pytest.approx(1, abs=0.01) for _, waited in outcomes), outcomes


@contextlib.contextmanager
def _running_in_another_thread(
    tm: TokenManager, after_first_token: Callable[[], None] = lambda: None
) -> Iterator[None]:
    """Hold ``tm`` inside ``async with`` on an asyncio loop in another thread, for the block.

    The manager gets its first token there, ``after_first_token`` runs on that loop, then the
    block runs; leaving it lets the other loop leave ``async with`` (closing the manager).
    """
    entered = threading.Event()
    leave = threading.Event()

    async def hold() -> None:
        async with tm:
            await tm.get_token()
            after_first_token()
            entered.set()
            await anyio.to_thread.run_sync(leave.wait)

    thread = threading.Thread(target=asyncio.run, args=(hold(),))
    thread.start()
    try:
        assert entered.wait(10)
        yield
    finally:
        leave.set()
        thread.join(10)


def test_closing_a_running_manager_from_another_event_loop_says_what_to_do() -> None:
    fake = FakeIAM()
    tm = TokenManager(KEY, url="http://127.0.0.1:1", transport=fake.transport)
    with _running_in_another_thread(tm):
        with pytest.raises(RuntimeError, match="close it from that loop"):
            asyncio.run(tm.aclose())
        assert not tm.closed
    assert tm.closed


def test_a_running_manager_used_from_another_event_loop_says_what_to_do() -> None:
    fake = FakeIAM()
    tm = TokenManager(KEY, url="http://127.0.0.1:1", transport=fake.transport)

    def no_token_left() -> None:
        fake.down = True  # no new token comes: the next caller takes the slow path
        tm.invalidate(tm.token.access_token)  # type: ignore[union-attr]

    with _running_in_another_thread(tm, no_token_left), pytest.raises(RuntimeError, match="another event loop"):
        asyncio.run(tm.get_token())


async def test_a_timeout_shorter_than_iams_answer_still_gets_the_token_to_the_next_caller() -> None:
    """However short a caller's timeout, the request it starts is made and completes."""
    fake = FakeIAM(latency=1.0)
    tm = make_manager(fake, retry=RetryPolicy(timeout=0.5))
    with pytest.raises(IAMUnavailableError, match=r"within 0\.5s"):
        await tm.get_token()
    assert fake.requests == 1
    await anyio.sleep(0.5)
    assert await tm.get_token() == fake.issued[0]
    assert fake.requests == 1
    await tm.aclose()


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"expires_in": float("nan")}, "'expires_in' is missing or not a number"),
        ({"expires_in": float("inf")}, "'expires_in' is missing or not a number"),
        ({"expires_in": 0}, "'expires_in' is not in"),
        ({"expires_in": 10**9}, "'expires_in' is not in"),
        ({"access_token": None}, "'access_token' is missing"),
        ({"access_token": ""}, "'access_token' is missing"),
        ({"access_token": "a\r\nX-Injected: 1"}, "not allowed in a header"),
        ({"token_type": "MAC"}, "'token_type' is not 'Bearer'"),
    ],
)
@pytest.mark.parametrize("background", [True, False], ids=["background", "on_demand"])
async def test_a_custom_sources_unusable_answer_is_invalid_response(
    fields: dict[str, object], reason: str, background: bool
) -> None:
    answer = TokenResponse(**{"access_token": "a.b.c", "token_type": "Bearer", "expires_in": 3600.0, **fields})  # type: ignore[arg-type]
    source = _BrokenSource(answer)
    tm = TokenManager(source=source, clock=anyio.current_time)
    async with contextlib.AsyncExitStack() as stack:
        if background:
            await stack.enter_async_context(tm)
        with pytest.raises(InvalidResponseError, match=re.escape(reason)):
            await tm.get_token()
        await anyio.sleep(60)  # the refresher does not loop on it either
    assert source.calls == 1
    await tm.aclose()


class _LeakySource:
    """A custom source whose errors quote its own secret."""

    SECRET = "SECRET-profile-token-0123456789"

    def __init__(self, error: Exception) -> None:
        self.error = error

    @property
    def secrets(self) -> Sequence[str]:
        return (self.SECRET,)

    async def fetch(self, client: httpx.AsyncClient) -> TokenResponse:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        InvalidCredentialsError(f"refused {_LeakySource.SECRET}", error_message=f"bad {_LeakySource.SECRET}"),
        ValueError(f"could not use {_LeakySource.SECRET}"),
    ],
    ids=["iam_error", "other_error"],
)
async def test_a_custom_sources_secrets_are_scrubbed_from_its_errors(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    tm = TokenManager(source=_LeakySource(error), clock=anyio.current_time)
    with caplog.at_level(logging.DEBUG, logger="aioiam"), pytest.raises(IAMError) as caught:
        await tm.get_token()
    await tm.aclose()
    seen = [str(caught.value), repr(caught.value), str(caught.value.__cause__)]
    seen += [str(value) for value in vars(caught.value).values()]
    seen += [record.getMessage() for record in caplog.records]
    assert not any(_LeakySource.SECRET in text for text in seen)
    assert "[redacted]" in str(caught.value) or isinstance(error, ValueError)


@pytest.mark.parametrize(
    "fields",
    [{"expiration": "soon"}, {"expiration": 10**400}, {"refresh_token": 42}, {"scope": b"x"}, {"claims": [1]}],
)
async def test_a_custom_sources_malformed_extra_field_is_refused_not_a_request_storm(
    fields: dict[str, object],
) -> None:
    """Found by review: a bad ``expiration`` broke the bookkeeping after the answer was accepted,
    with no backoff recorded, and the refresher asked again at once (8,000 requests a second)."""
    answer = TokenResponse(**{"access_token": "a.b.c", "token_type": "Bearer", "expires_in": 3600.0, **fields})  # type: ignore[arg-type]
    source = _BrokenSource(answer)
    async with TokenManager(source=source, clock=anyio.current_time) as tm:
        with pytest.raises(InvalidResponseError, match="the token source's answer is unusable"):
            await tm.get_token()
        await anyio.sleep(60)  # the refresher does not re-send an unusable answer's request
    assert source.calls == 1


async def test_a_bug_after_the_answer_is_recorded_with_its_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever breaks after the answer, the failure is recorded: the refresher keeps to the backoff."""

    def broken_schedule(*args: object, **kwargs: object) -> object:
        raise ZeroDivisionError("a bug in the bookkeeping")

    monkeypatch.setattr(aioiam._decisions, "schedule", broken_schedule)
    fake = FakeIAM()
    async with make_manager(fake, retry=RetryPolicy(initial_delay=1, max_delay=8)) as tm:
        with pytest.raises(InvalidResponseError, match="ZeroDivisionError"):
            await tm.get_token()
        await anyio.sleep(10)
    assert fake.requests == 1  # an unusable answer: not re-sent in the background


def test_repr_does_not_raise_when_the_clock_needs_a_running_loop() -> None:
    fake = FakeIAM()

    async def fetch() -> TokenManager:
        tm = make_manager(fake)
        await tm.get_token()
        return tm

    tm = anyio.run(fetch)
    assert "token_valid_for=unknown" in repr(tm)  # anyio.current_time outside its loop
