"""Where a bearer token may go: host patterns, the https/loopback rule, and a per-host verdict cache.

Shared by every integration that attaches the token to outgoing requests (``IAMAuth`` for httpx,
``IAMMiddleware`` for aiohttp), so both judge a URL the same way and warn about a refused host the
same way. The rules (:func:`check_pattern`, :func:`host_allowed`, :func:`may_send`) are pure;
:class:`HostPolicy` adds only the cache and the warning. Nothing here resolves a name: a host is
judged by its spelling, never by the address it resolves to.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from ._hooks import logger
from ._urls import is_loopback_host

__all__ = ["DEFAULT_ALLOWED_HOSTS", "HostPolicy", "check_pattern", "host_allowed", "may_send"]

#: IBM Cloud's service domains: ``cloud.ibm.com`` (IAM, resource controller, most service APIs)
#: and ``appdomain.cloud`` (Cloud Object Storage, Code Engine and other regional endpoints),
#: with every subdomain of each.
DEFAULT_ALLOWED_HOSTS: tuple[str, ...] = ("cloud.ibm.com", "*.cloud.ibm.com", "appdomain.cloud", "*.appdomain.cloud")

#: How many (scheme, host) verdicts a policy remembers: a crawler meets unbounded hosts.
MAX_VERDICTS = 10_000


def _normalise_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


def check_pattern(pattern: str) -> str:
    """``pattern`` checked and normalised (lower case, no trailing dot, no IPv6 brackets).

    Raises:
        TypeError: The pattern is not a string.
        ValueError: The pattern has a scheme, port, path, query or a ``*`` anywhere but a leading
            ``*.``.
    """
    if not isinstance(pattern, str):
        raise TypeError(f"allowed host patterns are strings, not {type(pattern).__name__}")
    cleaned = _normalise_host(pattern).strip("[]")
    bare = cleaned.removeprefix("*.")
    bad = not bare or any(c in bare for c in "*/@ \t?#")
    if not bad and ":" in bare:  # only an IPv6 address may have colons; a port may not
        try:
            ipaddress.IPv6Address(bare)
        except ValueError:
            bad = True
    if bad:
        raise ValueError(
            f"{pattern!r} is not a host pattern: use 'api.example.com' for one host or '*.example.com' "
            "for its subdomains (no scheme, port or path)"
        )
    return cleaned


def host_allowed(host: str, patterns: Iterable[str]) -> bool:
    """Whether ``host`` matches one of ``patterns`` (already checked by :func:`check_pattern`).

    ``"api.example.com"`` matches that host only; ``"*.example.com"`` matches every subdomain of
    ``example.com`` but not ``example.com`` itself. Matching ignores case and a trailing dot. It
    does no DNS lookup: a name is judged by its spelling, never by the address it resolves to.
    """
    host = _normalise_host(host)
    for pattern in patterns:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


def may_send(scheme: str, host: str, patterns: Iterable[str], *, allow_loopback: bool) -> bool:
    """Whether the token may go to ``scheme://host``.

    Loopback hosts (``localhost``, 127.0.0.0/8, ``::1``) take it over http or https when
    ``allow_loopback``, and never otherwise, whatever ``patterns`` say. Any other host takes it
    only over https, and only if it matches ``patterns``. Any other scheme (``ws``, ``wss``,
    ``ftp``) never takes it.
    """
    if is_loopback_host(host):
        return allow_loopback and scheme in ("http", "https")
    return scheme == "https" and host_allowed(host, patterns)


class HostPolicy:
    """The allow-list of one integration, with a cache of verdicts and a warning once per host.

    Args:
        allowed_hosts: Host patterns, see :func:`host_allowed`.
        allow_loopback: Whether loopback hosts may receive the token.

    Raises:
        TypeError: ``allowed_hosts`` is one string, or holds something that is not a string.
        ValueError: A pattern is malformed (see :func:`check_pattern`).
    """

    __slots__ = ("_verdicts", "allow_loopback", "allowed")

    def __init__(self, allowed_hosts: Iterable[str], *, allow_loopback: bool) -> None:
        if isinstance(allowed_hosts, str):
            raise TypeError("allowed_hosts is a list of host patterns, not one string")
        self.allowed = tuple(check_pattern(p) for p in allowed_hosts)
        self.allow_loopback = allow_loopback
        self._verdicts: dict[tuple[str, str], bool] = {}

    def may_send(self, scheme: str, host: str) -> bool:
        """Whether the token may go to ``scheme://host``; logs a warning the first time it may not.

        The warning names the scheme and host only (never a port, path or query, which may hold
        secrets of their own). Verdicts are remembered for up to :data:`MAX_VERDICTS` hosts;
        beyond that, hosts are judged afresh (and warned about) on every request.
        """
        key = (scheme, host)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = may_send(scheme, host, self.allowed, allow_loopback=self.allow_loopback)
            if len(self._verdicts) < MAX_VERDICTS:
                self._verdicts[key] = verdict
            if not verdict:
                logger.warning(
                    "aioiam: not sending the IAM token to %s://%s (%s); the request goes out without it",
                    scheme,
                    host,
                    _refusal_reason(scheme),
                )
        return verdict


def _refusal_reason(scheme: str) -> str:
    if scheme == "https":
        return "not an allowed host"
    if scheme == "http":
        return "plain http"
    return "neither http nor https"
