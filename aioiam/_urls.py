"""URL rules: which hosts count as loopback, and IAM's token endpoint from a base URL. Pure.

Shared by the token sources (where the token is asked for), ``IAMAuth`` (where the token may be
sent) and the test server (where it may listen). Nothing here resolves a name or opens a socket.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import unquote

import httpx

from ._redaction import contains_secret, scrub

__all__ = ["TOKEN_PATH", "is_loopback_host", "token_endpoint"]

TOKEN_PATH = "/identity/token"
_URL_EXAMPLE = "such as 'https://iam.cloud.ibm.com'"


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback address (127.0.0.0/8, ``::1``).

    ``localhost`` may end with a dot (``localhost.``); brackets around an IPv6 address and case are
    ignored. Subdomains such as ``app.localhost`` are not loopback here: many resolvers send them
    to DNS, where they can point anywhere. No name is resolved.
    """
    host = host.strip("[]").lower()
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_endpoint(url: str, *, secrets: Iterable[str] = (), path: str = TOKEN_PATH) -> str:
    """The token endpoint for an IAM base URL.

    ``path`` is appended; a URL that already ends with it (and a trailing slash) is accepted.
    Does not resolve or contact the host.

    Args:
        url: IAM's base URL.
        secrets: The API key and client secret (in every spelling sent). A URL that contains one,
            in any letter case or percent-encoded, is refused, and no message quotes one.
        path: The endpoint's path under the base URL.

    Raises:
        TypeError: The URL is not a string.
        ValueError: The URL is blank, not absolute, contains one of ``secrets``, carries
            credentials, a query or a fragment, or uses plain http for a host that is not loopback.
            The message quotes the URL only when it has a scheme and a host, and never with a
            query, a fragment, credentials or a secret in it: a string that is not even URL-shaped
            may be a key passed in the wrong place.
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str {_URL_EXAMPLE}, not {type(url).__name__}")
    url = url.strip()
    if not url:
        raise ValueError(f"url must be a non-empty string {_URL_EXAMPLE}")
    if contains_secret(url, secrets) or contains_secret(unquote(url), secrets):
        raise ValueError(
            f"url contains the API key or the client secret; pass IAM's base URL {_URL_EXAMPLE} "
            "(are two arguments swapped?)"
        )
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        detail = f": {scrub(str(exc), secrets)}" if "://" in url else ""
        raise ValueError(f"url is not a valid URL{detail}") from None
    if parsed.userinfo:
        raise ValueError("url must not carry a user name or password")
    if parsed.query or parsed.fragment:
        raise ValueError(f"url must not have a query or fragment; pass IAM's base URL {_URL_EXAMPLE}")
    if parsed.scheme and parsed.host:
        shown = f", got {url!r}"
    else:
        shown = " (the value is not shown: it has no scheme or host, so it may be a key passed as url)"
    if parsed.scheme not in ("https", "http") or not parsed.host:
        raise ValueError(f"url must be an absolute https URL {_URL_EXAMPLE}{shown}")
    if parsed.scheme == "http" and not is_loopback_host(parsed.host):
        raise ValueError(f"url must use https (plain http is allowed only for localhost and loopback addresses){shown}")
    base = parsed.path.rstrip("/")
    if base.endswith(path):
        base = base[: -len(path)]
    return str(parsed.copy_with(path=base + path))
