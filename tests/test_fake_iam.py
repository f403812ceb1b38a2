"""FakeIAM's numbering: token serials count issued tokens only, request ids count every answer."""

from __future__ import annotations

import base64

import httpx
import pytest

from aioiam.testing import FakeIAM, Fault

KEY = "test-api-key"
FORM = {"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": KEY}


def serial_of(access_token: str) -> int:
    """The serial FakeIAM put in a token's signature part (``fake-signature-<serial>-<random>``)."""
    signature = access_token.split(".")[2]
    text = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)).decode()
    prefix, _, rest = text.partition("fake-signature-")
    assert prefix == ""
    return int(rest.split("-")[0])


@pytest.mark.anyio
async def test_errors_take_request_ids_but_not_token_serials() -> None:
    fake = FakeIAM(api_keys=[KEY], client_id="bx", client_secret="bx-secret")
    request_ids: list[str] = []
    error_bodies_checked = 0

    async with httpx.AsyncClient(
        transport=fake.transport, base_url="http://127.0.0.1", auth=("bx", "bx-secret")
    ) as client:

        async def ask(form: dict[str, str] = FORM) -> httpx.Response:
            response = await client.post("/identity/token", data=form)
            request_ids.append(response.headers["Transaction-Id"])
            nonlocal error_bodies_checked
            if response.status_code != 200 and response.content.startswith(b'{"errorCode"'):
                assert response.json()["context"]["requestId"] == response.headers["Transaction-Id"]
                error_bodies_checked += 1
            return response

        first = await ask()
        assert first.status_code == 200
        assert serial_of(first.json()["access_token"]) == 1

        errors = 0
        fake.fail_next(3, Fault.error(503))
        fake.fail_next(1, Fault.error(429, retry_after=2))
        fake.fail_next(1, Fault.html(502))
        fake.fail_next(1, Fault.invalid_json(500))
        for _ in range(6):
            assert (await ask()).status_code >= 400
            errors += 1
        assert (await ask({**FORM, "apikey": "a-wrong-key"})).status_code == 400  # refused credentials
        errors += 1
        fake.down = True
        for _ in range(2):
            assert (await ask()).status_code == 503
            errors += 1
        fake.down = False
        fake.fail_next(1, Fault.reset())  # no answer at all: neither a request id nor a serial
        with pytest.raises(httpx.ReadError):
            await client.post("/identity/token", data=FORM)

        second = await ask()
        assert second.status_code == 200
        assert errors == 9
        assert serial_of(second.json()["access_token"]) == 2  # the next serial, whatever came between
        assert second.json()["refresh_token"].startswith("fake-refresh-2-")

        third = await ask()  # a broken token answer still issues the next token
        fake.fail_next(1, Fault.token(expires_in=0))
        broken = await ask()
        assert serial_of(third.json()["access_token"]) == 3
        assert serial_of(broken.json()["access_token"]) == 4

    assert [serial_of(token) for token in fake.issued] == [1, 2, 3, 4]
    assert len(request_ids) == 1 + errors + 3 == fake.requests - 1  # every answer but the reset
    assert len(set(request_ids)) == len(request_ids), "request ids repeat"
    assert error_bodies_checked == 7  # the IAM-style JSON errors: 4 faults, 1 refused key, 2 while down
    assert all(rid.startswith("fake-") for rid in request_ids)


@pytest.mark.anyio
@pytest.mark.real_time
async def test_an_error_inside_serve_reaches_the_caller_as_itself() -> None:
    fake = FakeIAM()
    with pytest.raises(LookupError, match="from the test body"):
        async with fake.serve():
            raise LookupError("from the test body")
