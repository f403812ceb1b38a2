"""Fleet mode's pure parts: the decisions (_fleet), key derivation and sealing (_sealing), what
each source says its token is for, and RedisTokenCache's construction. No I/O."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import aioiam
from aioiam import RefreshPolicy, TokenResponse
from aioiam._cache import CacheLink, cache_identity
from aioiam._fleet import (
    HEALTHY,
    MAX_FUTURE_SKEW,
    Adopt,
    AskAlone,
    AskHolding,
    Contend,
    Entry,
    WaitUntil,
    after_contending,
    after_read,
    after_store_failure,
    entry_ttl,
    flight_budget,
    lock_ttl,
    start_on_our_clock,
    start_on_store_clock,
    store_usable,
)
from aioiam._sealing import FORMAT, derive_keys, seal, unseal
from aioiam._timing import schedule
from tests.fleet_helpers import MemoryCache, MemoryStore

KEY = "a-perfectly-ordinary-api-key-0123456789abcd"
POLICY = RefreshPolicy()
NONCE = bytes(range(12))


def response(token: str = "header.payload.signature", lifetime: float = 3600.0) -> TokenResponse:  # noqa: S107
    return TokenResponse(access_token=token, token_type="Bearer", expires_in=lifetime, expiration=2_000_000_000)


# ------------------------------------------------------------------ times


@given(
    obtained=st.floats(0, 1e9),
    age=st.floats(0, 1e5),
    sent=st.floats(-1e6, 1e6),
)
def test_a_stored_token_never_looks_younger_on_our_clock(obtained: float, age: float, sent: float) -> None:
    start = start_on_our_clock(obtained, obtained + age, sent)
    assert start is not None
    assert start <= sent - age + 1e-6 * max(1.0, abs(sent), age)


def test_an_entry_from_the_stores_future_is_not_believed() -> None:
    assert start_on_our_clock(100.0 + MAX_FUTURE_SKEW + 0.5, 100.0, 5.0) is None
    assert start_on_our_clock(100.5, 100.0, 5.0) == 5.0  # within the allowance: age 0


def test_our_start_on_the_stores_clock_counts_the_time_since_the_read() -> None:
    # store said 1000.0; its answer reached us at 50 (our clock); we sent our request at 52
    assert start_on_store_clock(52.0, 1000.0, 50.0) == 1002.0


def test_entry_ttl_ends_when_the_token_goes_stale() -> None:
    token = response(lifetime=100.0)
    # margin: min(10, 10% of 100) = 10 -> stale 90 s after it was obtained
    assert entry_ttl(token, 1000.0, 1030.0, POLICY) == pytest.approx(60.0)
    assert entry_ttl(token, 1000.0, 1095.0, POLICY) < 0


def test_a_lock_outlives_one_request_and_a_flight_outlives_a_lock() -> None:
    assert lock_ttl(10.0, 0.5) == pytest.approx(12.0)
    assert flight_budget(10.0, 0.5) > lock_ttl(10.0, 0.5) + 10.0


# ------------------------------------------------------------------ decisions


def test_nothing_stored_means_contending_for_the_lock() -> None:
    assert after_read(None, 0.0, read_sent_at=0.0, now=0.0, avoid=None, policy=POLICY, u=0.5) == Contend()


def test_a_fresh_entry_is_adopted_with_its_start_on_our_clock() -> None:
    entry = Entry(response(lifetime=100.0), obtained_at=1000.0)
    step = after_read(entry, 1010.0, read_sent_at=50.0, now=50.1, avoid="other", policy=POLICY, u=0.0)
    assert step == Adopt(entry.response, 40.0)


def test_the_token_we_hold_or_a_refused_one_is_never_adopted() -> None:
    entry = Entry(response("tok-1", lifetime=100.0), obtained_at=1000.0)
    assert after_read(entry, 1001.0, read_sent_at=5.0, now=5.0, avoid="tok-1", policy=POLICY, u=0.0) == Contend()


def test_a_due_entry_is_refreshed_not_adopted() -> None:
    entry = Entry(response(lifetime=100.0), obtained_at=1000.0)
    assert after_read(entry, 1081.0, read_sent_at=5.0, now=5.0, avoid=None, policy=POLICY, u=0.0) == Contend()


@given(
    age=st.floats(0, 200),
    u=st.floats(0, 0.999),
    lifetime=st.floats(1, 3600),
    avoid=st.sampled_from([None, "tok", "other"]),
)
def test_only_a_fresh_token_that_is_not_avoided_is_ever_adopted(
    age: float, u: float, lifetime: float, avoid: str | None
) -> None:
    entry = Entry(response("tok", lifetime=lifetime), obtained_at=500.0)
    step = after_read(entry, 500.0 + age, read_sent_at=10.0, now=10.0, avoid=avoid, policy=POLICY, u=u)
    if isinstance(step, Adopt):
        token = schedule(step.response, step.started_at, POLICY, u)
        assert avoid != "tok"
        assert 10.0 < token.refresh_at <= token.stale_at
    else:
        assert step == Contend()


def test_after_contending_the_holder_asks_and_the_others_wait_out_the_lock() -> None:
    assert after_contending(True, now=5.0, waiting_since=None, lock_seconds=12.0) == AskHolding()
    assert after_contending(False, now=5.0, waiting_since=None, lock_seconds=12.0) == WaitUntil(17.0)
    assert after_contending(False, now=9.0, waiting_since=5.0, lock_seconds=12.0) == WaitUntil(17.0)
    assert after_contending(False, now=17.0, waiting_since=5.0, lock_seconds=12.0) == AskAlone()


def test_a_failed_store_is_left_alone_for_the_recheck_time() -> None:
    assert store_usable(HEALTHY, 0.0)
    health = after_store_failure(100.0, 5.0)
    assert health.failing
    assert not store_usable(health, 104.9)
    assert store_usable(health, 105.0)


# ------------------------------------------------------------------ keys and sealing


def test_key_names_are_keyed_hashes_in_one_cluster_slot() -> None:
    keys = derive_keys((KEY,), "grant=apikey\nscope=", "ns")
    for name in (keys.entry, keys.lock, keys.done):
        assert name.startswith("ns:{")
        assert KEY not in name
        assert "apikey" not in name
        assert "scope" not in name
    tags = {name.split("{")[1].split("}")[0] for name in (keys.entry, keys.lock, keys.done)}
    assert len(tags) == 1
    assert len(tags.pop()) == 32
    assert "aead" not in repr(keys) or repr(keys.aead) not in repr(keys)
    assert keys == derive_keys((KEY,), "grant=apikey\nscope=", "ns")  # every process agrees


def test_another_secret_or_identity_gets_other_names_and_another_key() -> None:
    base = derive_keys((KEY,), "scope=a", "ns")
    for other in (derive_keys((KEY + "x",), "scope=a", "ns"), derive_keys((KEY,), "scope=b", "ns")):
        assert other.entry != base.entry
        assert other.aead != base.aead
    assert derive_keys(("ab", "c"), "i", "ns") != derive_keys(("a", "bc"), "i", "ns")
    with pytest.raises(ValueError, match="stable secret"):
        derive_keys((), "i", "ns")


tokens = st.builds(
    TokenResponse,
    access_token=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=200),
    token_type=st.just("Bearer"),
    expires_in=st.floats(0.5, 86_400),
    refresh_token=st.one_of(st.none(), st.text(min_size=1, max_size=50)),
    expiration=st.one_of(st.none(), st.integers(0, 10**11)),
    scope=st.one_of(st.none(), st.text(max_size=30)),
)


@given(token=tokens, obtained=st.floats(0, 2e9))
def test_an_entry_survives_sealing(token: TokenResponse, obtained: float) -> None:
    keys = derive_keys((KEY,), "i", "ns")
    blob = seal(keys, Entry(token, obtained), NONCE)
    assert blob.startswith(FORMAT)
    assert token.access_token.encode() not in blob or len(token.access_token) < 4
    assert unseal(keys, blob) == Entry(token, obtained)
    assert unseal(keys, blob.decode()) == Entry(token, obtained)  # a client that decodes answers


@given(data=st.data())
def test_any_change_to_a_sealed_entry_makes_it_unreadable(data: st.DataObject) -> None:
    keys = derive_keys((KEY,), "i", "ns")
    blob = bytearray(seal(keys, Entry(response(), 1.0), NONCE))
    index = data.draw(st.integers(len(FORMAT), len(blob) - 1))
    blob[index] = data.draw(st.sampled_from(b"AZaz09-_").filter(lambda b: b != blob[index]))
    assert unseal(keys, bytes(blob)) is None


def test_an_entry_moved_to_another_name_or_read_with_another_key_is_unreadable() -> None:
    keys = derive_keys((KEY,), "i", "ns")
    blob = seal(keys, Entry(response(), 1.0), NONCE)
    moved = derive_keys((KEY,), "j", "ns")
    assert unseal(type(keys)(moved.entry, moved.lock, moved.done, keys.aead), blob) is None
    assert unseal(derive_keys((KEY + "x",), "i", "ns"), blob) is None


@pytest.mark.parametrize(
    "garbage",
    [None, b"", b"hello", FORMAT, FORMAT + b"!!!", FORMAT + b"AAAA", b"aioiam0:" + b"A" * 60, 42, "text"],
)
def test_garbage_is_never_a_token(garbage: object) -> None:
    assert unseal(derive_keys((KEY,), "i", "ns"), garbage) is None


@pytest.mark.parametrize(
    "document",
    [
        b"[]",
        b'{"access_token": "t", "token_type": "Bearer", "expires_in": 0, "obtained_at": 1}',
        b'{"access_token": "t", "token_type": "Bearer", "expires_in": 10, "obtained_at": "1"}',
        b'{"access_token": "", "token_type": "Bearer", "expires_in": 10, "obtained_at": 1}',
        b'{"access_token": "t", "token_type": "mac", "expires_in": 10, "obtained_at": 1}',
        b'{"access_token": "t", "token_type": "Bearer", "expires_in": 10, "obtained_at": 1, "expiration": 1.5}',
        b"\xff\xfe",
    ],
)
def test_a_well_sealed_entry_that_does_not_parse_is_ignored(document: bytes) -> None:
    import base64

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    keys = derive_keys((KEY,), "i", "ns")
    sealed = AESGCM(keys.aead).encrypt(NONCE, document, FORMAT + keys.entry.encode())
    assert unseal(keys, FORMAT + base64.urlsafe_b64encode(NONCE + sealed)) is None


# ------------------------------------------------------------------ sources


def sources(tmp_path: Path) -> list[object]:
    return [
        aioiam.ApiKeySource(KEY, client_id="cid", client_secret="client-secret-0123456789", scope="s"),
        aioiam.AssumeProfileSource(KEY, profile_id="Profile-1"),
        aioiam.ContainerSource(profile_id="Profile-2", cr_token_file=tmp_path / "token"),
        aioiam.VPCInstanceSource(profile_crn="crn:v1:profile"),
    ]


def test_every_source_says_what_its_token_is_for_without_a_secret(tmp_path: Path) -> None:
    identities = set()
    for source in sources(tmp_path):
        identity, _stable = cache_identity(source)  # type: ignore[arg-type]
        assert KEY not in identity
        assert "client-secret" not in identity
        identities.add(identity)
    assert len(identities) == 4
    assert cache_identity(aioiam.ApiKeySource(KEY))[1] == KEY
    assert cache_identity(aioiam.AssumeProfileSource(KEY, profile_id="P"))[1] == KEY
    assert cache_identity(aioiam.ContainerSource(profile_id="P"))[1] is None
    assert cache_identity(aioiam.VPCInstanceSource())[1] is None


def test_a_scope_or_client_id_names_another_token() -> None:
    plain = cache_identity(aioiam.ApiKeySource(KEY))[0]
    assert cache_identity(aioiam.ApiKeySource(KEY, scope="x"))[0] != plain
    assert cache_identity(aioiam.ApiKeySource(KEY, client_id="c", client_secret="s"))[0] != plain
    assert cache_identity(aioiam.ApiKeySource(KEY, url="https://iam.test.cloud.ibm.com"))[0] != plain


def test_a_rotating_credential_needs_the_caches_secret() -> None:
    store = MemoryStore()
    with pytest.raises(ValueError, match="secret="):
        aioiam.TokenManager(source=aioiam.ContainerSource(profile_id="P"), cache=MemoryCache(store))
    aioiam.TokenManager(source=aioiam.ContainerSource(profile_id="P"), cache=MemoryCache(store, secret="s" * 16))


def test_a_custom_source_without_cache_identity_is_refused_with_a_cache() -> None:
    class Custom:
        secrets = ()

        async def fetch(self, client: object) -> TokenResponse:
            return response()

    with pytest.raises(TypeError, match="cache_identity"):
        aioiam.TokenManager(source=Custom(), cache=MemoryCache(MemoryStore()))
    aioiam.TokenManager(source=Custom())  # without a cache nothing changes


def test_a_cache_that_is_not_one_is_refused() -> None:
    with pytest.raises(TypeError, match="TokenCache"):
        aioiam.TokenManager(KEY, cache="redis://localhost")  # type: ignore[arg-type]


def test_the_key_and_the_caches_secret_both_enter_the_keys() -> None:
    store = MemoryStore()
    plain = CacheLink(MemoryCache(store), aioiam.ApiKeySource(KEY))
    salted = CacheLink(MemoryCache(store, secret="fleet-secret-0123456789"), aioiam.ApiKeySource(KEY))
    other_key = CacheLink(MemoryCache(store, secret="fleet-secret-0123456789"), aioiam.ApiKeySource(KEY + "z"))
    assert len({plain.keys.entry, salted.keys.entry, other_key.keys.entry}) == 3


# ------------------------------------------------------------------ RedisTokenCache


def test_redis_cache_repr_shows_host_and_db_never_a_password() -> None:
    cache = aioiam.RedisTokenCache("redis://user:sup3r-s3cret-pass@redis.example:6380/3", secret="x" * 20)
    assert repr(cache) == "RedisTokenCache(redis://redis.example:6380/3, namespace='aioiam')"
    assert "sup3r-s3cret-pass" in cache.secrets
    assert "x" * 20 in cache.secrets
    assert "sup3r" not in repr(aioiam.TokenManager(KEY, cache=cache))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"url": "http://localhost"}, ValueError),
        ({"url": "redis://:6379"}, ValueError),
        ({"url": 6379}, TypeError),
        ({"namespace": "a{b}"}, ValueError),
        ({"namespace": " "}, ValueError),
        ({"secret": "short"}, ValueError),
        ({"secret": b"0123456789abcdef0"}, TypeError),
        ({"timeout": 0}, ValueError),
        ({"poll_interval": -1}, ValueError),
        ({"timeout": "1"}, TypeError),
    ],
)
def test_redis_cache_refuses_bad_arguments(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        aioiam.RedisTokenCache(**kwargs)  # type: ignore[arg-type]


def test_redis_cache_without_the_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "coredis", None)
    with pytest.raises(ImportError, match=r"pip install 'aioiam\[redis\]'"):
        aioiam.RedisTokenCache()


def test_importing_aioiam_imports_neither_coredis_nor_cryptography() -> None:
    import subprocess

    code = "import sys, aioiam; print(any(m.split('.')[0] in ('coredis', 'cryptography') for m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)  # noqa: S603
    assert result.stdout.strip() == "False"


def test_a_unix_socket_url_is_accepted() -> None:
    assert "unix:///tmp/redis.sock" in repr(aioiam.RedisTokenCache("unix:///tmp/redis.sock?db=1"))
    assert math.isfinite(aioiam.RedisTokenCache().timeout)


def test_from_env_passes_the_cache_to_the_manager(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("IBM_CREDENTIALS_FILE", raising=False)
    monkeypatch.setenv("IBMCLOUD_API_KEY", KEY)
    monkeypatch.setenv("MY_SERVICE_APIKEY", KEY)
    cache = MemoryCache(MemoryStore())
    for manager in (aioiam.TokenManager.from_env(cache=cache), aioiam.TokenManager.from_env("my-service", cache=cache)):
        assert manager._settings.cache is not None
        assert manager._settings.cache.cache is cache
