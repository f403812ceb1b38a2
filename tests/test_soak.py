"""The chaos soak's short version (``python -m benchmarks.soak --quick``, a third of its workers), and bugs it found.

The soak itself (workers, faults, outages, invariants) is described in ``benchmarks/soak.py``. In
memory it runs here on the test's virtual clock, with every invariant strict; over loopback sockets
on the real clock, where only what does not depend on the event loop keeping up is asserted.
"""

from __future__ import annotations

import dataclasses

import anyio
import pytest

from aioiam import InvalidCredentialsError, RetryPolicy, TokenManager
from aioiam.testing import FakeIAM, Fault
from benchmarks import soak

pytestmark = pytest.mark.anyio


#: ``--quick``'s in-memory run at a third of the workers (about 3,000 calls in five virtual
#: minutes), with more revocations so that some 401s happen whatever order the workers run in.
IN_MEMORY = dataclasses.replace(soak.QUICK, name="quick-test", workers=300, revoke_rate=0.01)


async def test_quick_soak_in_memory() -> None:
    report = await soak.run(IN_MEMORY)
    print(report.summary())
    assert report.virtual
    assert report.violations == []
    assert report.timing_violations == []
    # It did what it claims: many calls, refreshes, faults, outages and 401s.
    assert report.calls >= IN_MEMORY.workers * IN_MEMORY.duration / IN_MEMORY.think / 2
    assert report.calls_ok >= report.calls / 2
    assert report.tokens_issued >= 5
    assert report.iam_failures >= 3
    assert sum(report.faults_injected.values()) >= 3
    assert sum(report.outages.values()) >= 1
    assert report.revoked_401s >= 1
    assert report.max_in_flight == 1
    assert report.wait_max <= IN_MEMORY.retry.timeout + IN_MEMORY.retry.request_timeout


@pytest.mark.real_time
async def test_quick_soak_over_loopback() -> None:
    """The same invariants with resets, refusals and hangs on real sockets.

    How much happens in 1.5 s of real time depends on the machine, so no count is asserted beyond
    "something was served", and the two checks that need the event loop to keep up with the
    tokens' expiry margins (``timing_violations``) are printed, not asserted: virtual time pins them.
    """
    report = await soak.run(soak.QUICK_SOCKET)
    print(report.summary())
    assert not report.virtual
    assert report.violations == []
    assert report.calls_ok >= 1
    assert report.max_in_flight == 1


async def test_callers_woken_by_a_fetch_never_get_a_token_dropped_meanwhile() -> None:
    """Found by the soak: after ``invalidate(token)`` no caller may be handed that token.

    Five callers wait for the first token. The first of them to be woken gets it, is told by its
    service that the token was rejected (a 401, say after a revocation) and drops it, all before
    the other four run. Those four must not be handed the token that was just dropped: they must
    wait for a new one. (Since "the fetched token returned straight from the flight", waiters
    return ``flight.token`` without checking that it is still the manager's token.)
    """
    fake = FakeIAM(latency=1.0)
    dropped: list[str] = []
    later: list[str] = []
    async with TokenManager(
        "test-api-key", url="http://127.0.0.1:1", transport=fake.transport, clock=anyio.current_time
    ) as tm:

        async def caller() -> None:
            token = await tm.get_token()
            if not dropped:
                dropped.append(token)
                assert tm.invalidate(token)
            else:
                later.append(token)

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(caller)
    assert len(later) == 4
    assert dropped[0] not in later, "a caller was handed a token the manager had already dropped"
    assert fake.requests == 2
    assert len(set(later)) == 1


async def test_one_refusal_after_an_outage_is_not_held_for_the_outages_backoff() -> None:
    """Seen in the soak's figures: README guarantee 5 says the cooldown after refused credentials
    "grows with each refusal, up to retry.max_delay". After an outage it is the outage's backoff.

    Five 503s, then one 400 (say IAM refused the key once while recovering): the caller gets
    ``InvalidCredentialsError`` at once, as documented. That is the first refusal, so its cooldown
    is ``initial_delay`` (0.5 s), and a caller a second later must get a new answer from IAM. Today
    the cooldown is the sixth consecutive failure's cap (16 s): for 16 s every caller gets the
    refusal without a request, although IAM would answer. In the soak, single unusable answers
    after outages account for most ``InvalidResponseError``s callers saw (the same rule applies).
    """
    fake = FakeIAM()
    fake.fail_next(5, Fault.error(503))
    fake.fail_next(1, Fault.error(400))
    tm = TokenManager(
        "test-api-key",
        url="http://127.0.0.1:1",
        transport=fake.transport,
        clock=anyio.current_time,
        retry=RetryPolicy(timeout=120),
    )
    with pytest.raises(InvalidCredentialsError):
        await tm.get_token()
    assert fake.requests == 6
    await anyio.sleep(1.0)  # twice the first refusal's cooldown
    assert await tm.get_token() == fake.issued[0]
    assert fake.requests == 7
    await tm.aclose()
