"""Fuzz: whatever IAM (or a proxy in its place) answers, callers get a token or an IAMError."""

from __future__ import annotations

import anyio
import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aioiam import IAMError, RetryPolicy, TokenManager
from tests.helpers import run_virtual

header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
bodies = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda token, ttype, expires: (
            f'{{"access_token": {token}, "token_type": {ttype}, "expires_in": {expires}}}'.encode()
        ),
        st.sampled_from(['"a.b.c"', '""', "null", "1", '"x y"', '"\\u0000"']),
        st.sampled_from(['"Bearer"', '"bearer"', '"MAC"', "null", "3"]),
        st.sampled_from(["3600", "0", "-1", "1e400", '"60"', "null", "true", "1.5", "99999999999"]),
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    status=st.sampled_from([200, 200, 200, 201, 204, 301, 400, 401, 403, 404, 418, 429, 500, 502, 503]),
    body=bodies,
    retry_after=st.one_of(st.none(), header_values),
    content_type=st.sampled_from(["application/json", "text/html", "", "application/json; charset=utf-8"]),
    gzip_claimed=st.booleans(),
)
def test_any_answer_gives_a_token_or_an_iam_error(
    status: int, body: bytes, retry_after: str | None, content_type: str, gzip_claimed: bool
) -> None:
    headers = {"Content-Type": content_type}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    if gzip_claimed:
        headers["Content-Encoding"] = "gzip"  # a body that is not gzip: httpx fails to decode it

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers=headers)

    outcome: list[object] = []

    async def main() -> None:
        tm = TokenManager(
            "k",
            url="http://127.0.0.1",
            transport=httpx.MockTransport(answer),
            clock=anyio.current_time,
            retry=RetryPolicy(timeout=2, initial_delay=0.1, max_delay=0.5),
        )
        try:
            token = await tm.get_token_info()
        except IAMError as exc:
            outcome.append(exc)
        else:
            outcome.append(token)
            assert token.access_token
            assert token.expires_in > 0
        finally:
            await tm.aclose()

    run_virtual(main, "asyncio")
    assert len(outcome) == 1
