"""FakeIAM's VPC instance metadata service: instance identity tokens, and IAM tokens for trusted profiles.

Pure decisions, as in ``_grants``: :func:`decide` reads a request and the emulator's configuration
and returns a :class:`~._grants.Refusal`, an :class:`IdentityGrant` (issue an instance identity
token) or a :class:`~._grants.Subject` (issue an IAM token for a trusted profile). The answers'
JSON shapes are built here too; issuing, faults and counting live in ``_fake_iam``.

- ``PUT /instance_identity/v1/token?version=<date>`` with ``Metadata-Flavor: ibm`` and an optional
  JSON body ``{"expires_in": N}`` (5 to 3600 seconds, default 300) answers
  ``{"access_token", "created_at", "expires_at", "expires_in"}`` with an instance identity token.
- ``POST /instance_identity/v1/iam_token?version=<date>`` with ``Authorization: Bearer <identity
  token>`` and an optional JSON body ``{"trusted_profile": {"id": ...}}`` or
  ``{"trusted_profile": {"crn": ...}}`` answers ``{"access_token", "created_at", "expires_at",
  "expires_in"}`` with an IAM token for that profile (or the instance's default profile): no
  ``token_type``, no ``refresh_token``, as the real service.

Errors take the metadata service's shape, ``{"errors": [{"code", "message"}], "trace"}``, with
the request id (also in the ``X-Request-Id`` header) as the trace. The codes below are made up in
the service's style (only ``invalid_value`` is one it is documented to use):

====== ============================= =========================================================
status code                          when
====== ============================= =========================================================
404    ``not_found``                 another path or method under ``/instance_identity/``
400    ``invalid_version``           ``version`` missing, not a date, or before 2022-03-01
400    ``missing_metadata_flavor``   the PUT without ``Metadata-Flavor: ibm``
400    ``invalid_body``              not a JSON object; ``trusted_profile`` not an object with
                                     exactly one of ``id`` and ``crn``, as a non-blank string
400    ``invalid_value``             ``expires_in`` not a whole number from 5 to 3600
401    ``invalid_token``             no bearer token, or one not issued by the PUT, or expired
400    ``no_trusted_profile``        no profile named and no default (``vpc_default_profile``)
400    ``trusted_profile_not_found`` no such profile (unknown id or CRN, or an unknown default)
====== ============================= =========================================================
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import httpx

from ._grants import CR_TOKEN_GRANT, Refusal, Subject, find_profile, profile_subject

if TYPE_CHECKING:
    from ._fake_iam import FakeIAM

__all__ = [
    "IAM_TOKEN_PATH",
    "IDENTITY_TOKEN_PATH",
    "IdentityGrant",
    "decide",
    "error_body",
    "iam_token_answer",
    "identity_token_answer",
    "is_metadata_path",
    "outage",
]

IDENTITY_TOKEN_PATH: Final = "/instance_identity/v1/token"
IAM_TOKEN_PATH: Final = "/instance_identity/v1/iam_token"
_PREFIX: Final = "/instance_identity/"
_MIN_VERSION: Final = "2022-03-01"
_VERSION_FORMAT: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_DEFAULT_IDENTITY_LIFETIME: Final = 300
_MIN_IDENTITY_LIFETIME: Final = 5
_MAX_IDENTITY_LIFETIME: Final = 3600


@dataclass(frozen=True)
class IdentityGrant:
    """Issue an instance identity token that lives ``expires_in`` seconds."""

    expires_in: int


def is_metadata_path(path: str) -> bool:
    """Whether a path belongs to the metadata service (and its answers take that service's shape)."""
    return path.startswith(_PREFIX)


def decide(fake: FakeIAM, request: httpx.Request) -> IdentityGrant | Subject | Refusal:
    """What the metadata service answers to ``request``.

    Args:
        fake: The emulator whose identity tokens and trusted profiles decide.
        request: A request on a metadata service path (:func:`is_metadata_path`).
    """
    path, method = request.url.path, request.method
    if path == IDENTITY_TOKEN_PATH and method == "PUT":
        return _identity_token(request)
    if path == IAM_TOKEN_PATH and method == "POST":
        return _iam_token(fake, request)
    return Refusal(404, "not_found", f"No such operation: {method} {path}")


def error_body(refusal: Refusal, trace: str) -> dict[str, Any]:
    """The metadata service's JSON error body."""
    return {"errors": [{"code": refusal.code, "message": refusal.message}], "trace": trace}


def outage(status: int) -> Refusal:
    """What the metadata service answers while the emulator is ``down``."""
    return Refusal(status, "service_unavailable", "The metadata service is down (simulated outage)")


def identity_token_answer(access_token: str, created_at: float, expires_in: int) -> dict[str, Any]:
    """The PUT's answer (times with milliseconds, as the real service writes them)."""
    return {
        "access_token": access_token,
        "created_at": _iso(created_at, millis=True),
        "expires_at": _iso(created_at + expires_in, millis=True),
        "expires_in": expires_in,
    }


def iam_token_answer(access_token: str, created_at: int, expires_in: float) -> dict[str, Any]:
    """The POST's answer: no ``token_type``, no ``refresh_token``; times in whole seconds."""
    return {
        "access_token": access_token,
        "created_at": _iso(created_at, millis=False),
        "expires_at": _iso(created_at + int(expires_in), millis=False),
        "expires_in": expires_in,
    }


def _iso(unix_time: float, *, millis: bool) -> str:
    moment = dt.datetime.fromtimestamp(unix_time, tz=dt.timezone.utc)
    if millis:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _version_refusal(request: httpx.Request) -> Refusal | None:
    version = request.url.params.get("version")
    if version is None:
        return Refusal(400, "invalid_version", "The version query parameter is required.")
    if not _is_date(version):
        return Refusal(400, "invalid_version", "The version query parameter must be a date: YYYY-MM-DD.")
    if version < _MIN_VERSION:
        return Refusal(400, "invalid_version", f"Instance identity needs version {_MIN_VERSION} or later.")
    return None


def _is_date(text: str) -> bool:
    if _VERSION_FORMAT.fullmatch(text) is None:
        return False
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _json_object(request: httpx.Request) -> dict[str, Any] | Refusal:
    if not request.content.strip():
        return {}
    try:
        body = json.loads(request.content)
    except ValueError:  # UnicodeDecodeError included
        return Refusal(400, "invalid_body", "The request body is not valid JSON.")
    if not isinstance(body, dict):
        return Refusal(400, "invalid_body", "The request body must be a JSON object.")
    return body


def _identity_token(request: httpx.Request) -> IdentityGrant | Refusal:
    refusal = _version_refusal(request)
    if refusal is not None:
        return refusal
    if request.headers.get("metadata-flavor") != "ibm":
        return Refusal(400, "missing_metadata_flavor", "The header Metadata-Flavor: ibm is required.")
    body = _json_object(request)
    if isinstance(body, Refusal):
        return body
    expires_in = body.get("expires_in", _DEFAULT_IDENTITY_LIFETIME)
    if type(expires_in) is not int or not _MIN_IDENTITY_LIFETIME <= expires_in <= _MAX_IDENTITY_LIFETIME:
        return Refusal(
            400,
            "invalid_value",
            f"The value provided for the expires_in field must be between {_MIN_IDENTITY_LIFETIME} "
            f"and {_MAX_IDENTITY_LIFETIME}.",
        )
    return IdentityGrant(expires_in)


def _iam_token(fake: FakeIAM, request: httpx.Request) -> Subject | Refusal:
    refusal = _version_refusal(request)
    if refusal is not None:
        return refusal
    scheme, _, identity_token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not fake.is_valid_identity_token(identity_token.strip()):
        return Refusal(401, "invalid_token", "The instance identity token is missing, not valid or expired.")
    body = _json_object(request)
    if isinstance(body, Refusal):
        return body
    if "trusted_profile" not in body:
        if fake.vpc_default_profile is None:
            return Refusal(
                400, "no_trusted_profile", "No trusted profile is linked to this instance; name one in trusted_profile."
            )
        found = find_profile(fake, by_id=fake.vpc_default_profile)
    else:
        selector = body["trusted_profile"]
        if (
            not isinstance(selector, dict)
            or len(selector) != 1
            or not set(selector) <= {"id", "crn"}
            or not isinstance(value := next(iter(selector.values())), str)
            or not value.strip()
        ):
            return Refusal(400, "invalid_body", "trusted_profile takes exactly one of id or crn.")
        found = find_profile(fake, by_id=selector.get("id"), by_crn=selector.get("crn"))
    if found is None:
        return Refusal(400, "trusted_profile_not_found", "Trusted profile could not be found.")
    return profile_subject(fake, found, "vpc-iam", CR_TOKEN_GRANT)
