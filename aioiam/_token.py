"""Token values and the parsing of IAM's answers. Pure: no I/O, no clock.

``parse_token_response`` turns a 200 body into a :class:`TokenResponse`, and ``parse_error_response``
turns any other answer into the right :class:`~aioiam.IAMError`. Both take plain values (status,
headers, body bytes) so they can be fuzzed without a network.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeGuard

from ._exceptions import (
    IAMError,
    InvalidCredentialsError,
    InvalidResponseError,
    TransientIAMError,
)
from ._redaction import Redactor, clip, no_redaction

__all__ = [
    "MAX_EXPIRES_IN",
    "Token",
    "TokenResponse",
    "decode_jwt_claims",
    "parse_error_response",
    "parse_retry_after",
    "parse_token_response",
    "token_response_problem",
]

#: The longest lifetime accepted from IAM, in seconds. IAM documents at most one hour; a day leaves
#: room for change while still rejecting nonsense such as ``expires_in: 10**12``.
MAX_EXPIRES_IN = 86_400

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class TokenResponse:
    """What a token source got from IAM, before the manager schedules it.

    Attributes:
        access_token: The bearer token (secret; never in ``repr``).
        token_type: ``"Bearer"``.
        expires_in: Seconds of life IAM granted, from when the request was sent.
        refresh_token: Only usable when a client id and secret were sent (secret; never in ``repr``).
        expiration: IAM's Unix time of expiry, on IAM's clock (used only to warn about skew).
        scope: The scope IAM granted, if it said.
        claims: The JWT payload of ``access_token``, decoded without any signature check: for
            display, never for a security decision. Empty when the token is not a JWT.
    """

    access_token: str = field(repr=False)
    token_type: str
    expires_in: float
    refresh_token: str | None = field(default=None, repr=False)
    expiration: int | None = None
    scope: str | None = None
    claims: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Token:
    """A token the manager holds, with its schedule.

    The schedule fields are readings of the manager's monotonic clock (``TokenManager(clock=...)``,
    ``time.monotonic`` by default): compare them with that clock, never with ``time.time()``.

    Attributes:
        access_token: The bearer token (secret; never in ``repr``).
        token_type: ``"Bearer"``.
        expires_in: Seconds of life IAM granted.
        refresh_token: Present only with a client id and secret (secret; never in ``repr``).
        expiration: IAM's Unix time of expiry, on IAM's clock.
        scope: The scope IAM granted, if it said.
        claims: The decoded JWT payload (no signature check), or an empty mapping.
        obtained_at: When the request that got this token was sent.
        refresh_at: When a refresh is due (80% of the lifetime by default, minus jitter).
        stale_at: From here on the token is never handed out (the expiry margin before expiry).
        expires_at: When IAM stops accepting it: ``obtained_at + expires_in``.
    """

    access_token: str = field(repr=False)
    token_type: str
    expires_in: float
    refresh_token: str | None = field(default=None, repr=False)
    expiration: int | None = None
    scope: str | None = None
    claims: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, repr=False, compare=False)
    obtained_at: float = 0.0
    refresh_at: float = 0.0
    stale_at: float = 0.0
    expires_at: float = 0.0

    @property
    def iam_id(self) -> str | None:
        """The ``iam_id`` claim, if the token is a JWT that has one."""
        value = self.claims.get("iam_id")
        return value if isinstance(value, str) else None

    @property
    def account_id(self) -> str | None:
        """The account (``account.bss`` claim), if the token is a JWT that has one."""
        account = self.claims.get("account")
        if isinstance(account, Mapping):
            bss = account.get("bss")
            return bss if isinstance(bss, str) else None
        return None


def decode_jwt_claims(token: str) -> Mapping[str, Any]:
    """Decode a JWT's payload without verifying it.

    Returns:
        The payload as a read-only mapping, or an empty mapping when ``token`` is not a JWT with a
        JSON object payload. Never raises: claims are for display, not for security decisions.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return _EMPTY
    payload = parts[1]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        data = json.loads(raw)
    except (ValueError, binascii.Error):
        return _EMPTY
    if not isinstance(data, dict):
        return _EMPTY
    return MappingProxyType(data)


def _is_number(value: object) -> TypeGuard[int | float]:
    """A finite ``int`` or ``float`` (``bool`` excluded). Never raises, however large an ``int``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or math.isfinite(value)


#: The latest Unix time accepted as an ``expiration`` (the year 5138): beyond it, arithmetic with
#: a float clock loses meaning or overflows.
_LATEST_TIME = 10**11


def _is_unix_time(value: object) -> TypeGuard[int]:
    """A whole number of seconds since 1970, from 1970 to :data:`_LATEST_TIME` (``bool`` excluded)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _LATEST_TIME


def _bearer_problem(access_token: object, token_type: object) -> str | None:
    """What is wrong with an answer's ``access_token`` and ``token_type``, naming the field only.

    The token must be a non-empty string that can go in a header; the type must be ``Bearer``
    (any case). Shared by IAM's answers and custom sources' answers.
    """
    if not isinstance(access_token, str) or not access_token.strip():
        return "'access_token' is missing or not a non-empty string"
    if any(c.isspace() for c in access_token) or not access_token.isprintable():
        return "'access_token' contains characters not allowed in a header"
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        return "'token_type' is not 'Bearer'"
    return None


def parse_token_response(
    body: bytes,
    *,
    status_code: int = 200,
    request_id: str | None = None,
) -> TokenResponse:
    """Parse the body of a 200 answer to a token request.

    Args:
        body: The raw response body.
        status_code: The status it came with, for the error message.
        request_id: IAM's transaction id, for the error message.

    Returns:
        The parsed response. The lifetime is ``expires_in``; when the access token is a JWT whose
        ``exp - iat`` is shorter, the shorter one is taken.

    Raises:
        InvalidResponseError: The body is not JSON, not an object, or lacks a valid
            ``access_token``, a ``Bearer`` ``token_type`` or an ``expires_in`` in
            ``(0, MAX_EXPIRES_IN]``. The message names the field, never its value.
    """

    def invalid(reason: str) -> InvalidResponseError:
        return InvalidResponseError(
            f"IAM answered {status_code} but {reason}",
            status_code=status_code,
            request_id=request_id,
        )

    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise invalid("the body is not JSON") from None
    if not isinstance(data, dict):
        raise invalid("the body is not a JSON object")

    access_token = data.get("access_token")
    problem = _bearer_problem(access_token, data.get("token_type", "Bearer"))
    if problem is not None:
        raise invalid(problem)
    assert isinstance(access_token, str)

    expires_in = data.get("expires_in")
    if not _is_number(expires_in):
        raise invalid("'expires_in' is missing or not a number")
    if expires_in <= 0:
        raise invalid("'expires_in' is not positive")
    if expires_in > MAX_EXPIRES_IN:
        raise invalid(f"'expires_in' is longer than {MAX_EXPIRES_IN} seconds")

    expiration = data.get("expiration")
    if not _is_unix_time(expiration):
        expiration = None

    refresh_token = data.get("refresh_token")
    if not isinstance(refresh_token, str) or not refresh_token or refresh_token == "not_supported":
        refresh_token = None
    scope = data.get("scope")
    if not isinstance(scope, str):
        scope = None

    claims = decode_jwt_claims(access_token)
    lifetime = float(expires_in)
    exp, iat = claims.get("exp"), claims.get("iat")
    if _is_number(exp) and _is_number(iat) and 0 < exp - iat < lifetime:
        lifetime = float(exp - iat)

    return TokenResponse(
        access_token=access_token,
        token_type="Bearer",
        expires_in=lifetime,
        refresh_token=refresh_token,
        expiration=expiration,
        scope=scope,
        claims=claims,
    )


def token_response_problem(response: TokenResponse) -> str | None:
    """What makes a :class:`TokenResponse` unusable, or ``None`` if nothing does.

    The same rules :func:`parse_token_response` applies to IAM's JSON, for answers built by a
    custom :class:`~aioiam.TokenSource`: a non-empty ``access_token`` that can go in a header, a
    ``Bearer`` ``token_type``, a finite ``expires_in`` in ``(0, MAX_EXPIRES_IN]``. The reason names
    the field, never its value. Does not decode or verify the token.
    """
    problem = _bearer_problem(response.access_token, response.token_type)
    if problem is not None:
        return problem
    expires_in = response.expires_in
    if not _is_number(expires_in):
        return "'expires_in' is missing or not a number"
    if not 0 < expires_in <= MAX_EXPIRES_IN:
        return f"'expires_in' is not in (0, {MAX_EXPIRES_IN}] seconds"
    if response.expiration is not None and not _is_unix_time(response.expiration):
        return "'expiration' is not a Unix time in whole seconds, or None"
    for name in ("refresh_token", "scope"):
        if getattr(response, name) is not None and not isinstance(getattr(response, name), str):
            return f"'{name}' is not a string or None"
    claims: object = response.claims  # typed as a Mapping, but a custom source may break that
    if not isinstance(claims, Mapping):
        return "'claims' is not a mapping"
    return None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date).

    Args:
        value: The header value, or ``None``.
        now: The current Unix time, needed only for the HTTP-date form.

    Returns:
        A non-negative number of seconds, or ``None`` when the header is absent or unreadable.
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        if now is None:
            return None
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def parse_error_response(
    status_code: int,
    body: bytes,
    *,
    request_id: str | None = None,
    retry_after: float | None = None,
    url: str = "",
    redact: Redactor = no_redaction,
) -> IAMError:
    """Turn a non-200 answer into the matching error. Does not raise it.

    Args:
        status_code: The HTTP status.
        body: The raw body; IAM's JSON error body is read when present, anything else is ignored
            (an HTML page from a proxy is not copied into the message).
        request_id: The transaction id from the headers, used when the body has none.
        retry_after: Seconds from ``Retry-After``, kept on transient errors.
        url: The token endpoint (no secret in it), named when the status says the URL is wrong.
        redact: Applied to all text that came from IAM.

    Returns:
        :class:`InvalidCredentialsError` for 400/401/403, :class:`TransientIAMError` for 408, 429,
        5xx and IAM's rate-limit code ``BXNIM0436E``, :class:`InvalidResponseError` otherwise.
    """
    error_code: str | None = None
    error_message: str | None = None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict):
        code = data.get("errorCode")
        if isinstance(code, str) and code:
            error_code = clip(redact(code), 40)
        message = data.get("errorMessage")
        if isinstance(message, str) and message:
            error_message = clip(redact(message))
        context = data.get("context")
        if isinstance(context, dict):
            rid = context.get("requestId")
            if isinstance(rid, str) and rid:
                request_id = clip(redact(rid), 100)

    details = f"IAM answered {status_code}"
    if error_code:
        details += f" {error_code}"
    if error_message:
        details += f": {error_message}"
    if request_id:
        details += f" (request id {request_id})"
    common: dict[str, Any] = {
        "status_code": status_code,
        "error_code": error_code,
        "error_message": error_message,
        "request_id": request_id,
    }
    if status_code in (408, 429) or status_code >= 500 or error_code == "BXNIM0436E":
        return TransientIAMError(details, retry_after=retry_after, **common)
    if status_code in (400, 401, 403):
        return InvalidCredentialsError(details, **common)
    where = f" at {url}" if url else ""
    return InvalidResponseError(
        f"{details}{where}; is the IAM url right?",
        **common,
    )
