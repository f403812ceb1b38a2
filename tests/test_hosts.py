"""The host rules shared by IAMAuth and IAMMiddleware: patterns, https/loopback, the verdict cache."""

from __future__ import annotations

import logging

import pytest

from aioiam._hosts import DEFAULT_ALLOWED_HOSTS, MAX_VERDICTS, HostPolicy, check_pattern, host_allowed, may_send


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("cloud.ibm.com", True),
        ("api.cloud.ibm.com", True),
        ("API.Cloud.IBM.com.", True),
        ("evilcloud.ibm.com", False),
        ("cloud.ibm.com.evil.example", False),
        ("s3.eu-de.cloud-object-storage.appdomain.cloud", True),
        ("appdomain.cloud.example", False),
    ],
)
def test_default_patterns_match_ibm_cloud_domains_only(host: str, allowed: bool) -> None:
    assert host_allowed(host, DEFAULT_ALLOWED_HOSTS) is allowed


def test_a_wildcard_matches_subdomains_but_not_the_domain_itself() -> None:
    patterns = [check_pattern("*.example.com")]
    assert host_allowed("a.b.example.com", patterns)
    assert not host_allowed("example.com", patterns)


def test_patterns_are_normalised() -> None:
    assert check_pattern(" API.Example.COM. ") == "api.example.com"
    assert check_pattern("[::1]") == "::1"


@pytest.mark.parametrize(
    ("scheme", "host", "allow_loopback", "sent"),
    [
        ("https", "api.cloud.ibm.com", True, True),
        ("http", "api.cloud.ibm.com", True, False),
        ("wss", "api.cloud.ibm.com", True, False),
        ("http", "127.0.0.1", True, True),
        ("https", "::1", True, True),
        ("ws", "localhost", True, False),
        ("http", "127.0.0.1", False, False),
        ("https", "localhost", False, False),
    ],
)
def test_https_only_except_loopback(scheme: str, host: str, allow_loopback: bool, sent: bool) -> None:
    assert may_send(scheme, host, DEFAULT_ALLOWED_HOSTS, allow_loopback=allow_loopback) is sent


def test_an_allowed_loopback_pattern_does_not_override_allow_loopback() -> None:
    assert not may_send("https", "127.0.0.1", ["127.0.0.1"], allow_loopback=False)


def test_policy_warns_once_per_scheme_and_host(caplog: pytest.LogCaptureFixture) -> None:
    policy = HostPolicy(DEFAULT_ALLOWED_HOSTS, allow_loopback=True)
    with caplog.at_level(logging.WARNING, logger="aioiam"):
        for _ in range(3):
            assert not policy.may_send("https", "crawled.example")
            assert not policy.may_send("http", "api.cloud.ibm.com")
            assert not policy.may_send("wss", "api.cloud.ibm.com")
            assert policy.may_send("https", "api.cloud.ibm.com")
    assert [r.getMessage() for r in caplog.records] == [
        "aioiam: not sending the IAM token to https://crawled.example (not an allowed host); "
        "the request goes out without it",
        "aioiam: not sending the IAM token to http://api.cloud.ibm.com (plain http); the request goes out without it",
        "aioiam: not sending the IAM token to wss://api.cloud.ibm.com (neither http nor https); "
        "the request goes out without it",
    ]


def test_policy_memory_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    """Past MAX_VERDICTS hosts, new hosts are judged (and warned about) afresh, not remembered."""
    policy = HostPolicy(DEFAULT_ALLOWED_HOSTS, allow_loopback=True)
    with caplog.at_level(logging.ERROR, logger="aioiam"):
        for i in range(MAX_VERDICTS):
            policy.may_send("https", f"h{i}.example")
    with caplog.at_level(logging.WARNING, logger="aioiam"):
        policy.may_send("https", "h0.example")  # remembered: no second warning
        policy.may_send("https", "late.example")
        policy.may_send("https", "late.example")
    assert [r.getMessage().split()[7] for r in caplog.records] == ["https://late.example", "https://late.example"]


def test_policy_rejects_one_string_and_bad_patterns() -> None:
    with pytest.raises(TypeError, match="list"):
        HostPolicy("api.example.com", allow_loopback=True)
    with pytest.raises(TypeError, match="strings"):
        HostPolicy([b"api.example.com"], allow_loopback=True)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="host pattern"):
        HostPolicy(["api.example.com:443"], allow_loopback=True)
