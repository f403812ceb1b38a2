"""The grants FakeIAM answers on ``POST /identity/token``: what each checks, and whom it issues a token to.

Pure decisions: :func:`decide` reads a request's form and the emulator's configuration and
returns either a :class:`Refusal` (the IAM-style error to answer with) or a :class:`Subject`
(whom to issue a token to, through which grant). Issuing, faults and counting live in
``_fake_iam``; the VPC metadata service's decisions in ``_vpc``.

The grants:

- API key: ``grant_type=urn:ibm:params:oauth:grant-type:apikey``, ``apikey``.
- Trusted profile from a compute resource: ``grant_type=urn:ibm:params:oauth:grant-type:cr-token``,
  ``cr_token``, and ``profile_id`` and/or ``profile_name`` (both must then name the same profile).
- Assume a trusted profile: ``grant_type=urn:ibm:params:oauth:grant-type:assume``,
  ``access_token`` (one this emulator issued, still valid), and exactly one of ``profile_id``,
  ``profile_crn``, or ``profile_name`` with ``account``.

With ``client_id``/``client_secret`` configured, every grant needs the Basic credentials and
then also gets a refresh token.

Refusals, in the order they are checked (``BXNIM0109E``, ``BXNIM0308E``, ``BXNIM0415E``,
``BXNIM0407E`` and ``BXNIM0310E`` are codes IAM uses; ``BXNIM0102E`` and ``BXNIM0461E`` are made
up to look like IAM's):

====== ============== ================================================================
status code           when
====== ============== ================================================================
404    ``BXNIM0404E`` not ``POST /identity/token``
400    ``BXNIM0109E`` the body is not ``application/x-www-form-urlencoded``
400    ``BXNIM0308E`` a grant type it does not answer (refresh tokens included)
400    ``BXNIM0102E`` parameters missing or conflicting (no profile named; not exactly
                      one of ``profile_id``/``profile_crn``/``profile_name``; ``profile_name``
                      without ``account`` or ``account`` without ``profile_name``)
400    ``BXNIM0415E`` API key missing, blank or not accepted
400    ``BXNIM0407E`` compute-resource token missing, blank or not accepted; access token to
                      assume with missing, not issued here, or expired
400    ``BXNIM0461E`` no such trusted profile (unknown id, name or CRN; ``account`` not the
                      emulator's; ``profile_id`` and ``profile_name`` naming different profiles)
401    ``BXNIM0310E`` Basic client credentials missing or wrong (when configured)
====== ============== ================================================================
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs

import httpx

if TYPE_CHECKING:
    from ._fake_iam import FakeIAM

__all__ = [
    "APIKEY_GRANT",
    "ASSUME_GRANT",
    "CR_TOKEN_GRANT",
    "GRANT_KEYS",
    "TOKEN_PATH",
    "Refusal",
    "Subject",
    "decide",
    "error_body",
    "find_profile",
    "outage",
    "profile_crn",
    "profile_subject",
    "read_form",
]

TOKEN_PATH: Final = "/identity/token"
APIKEY_GRANT: Final = "urn:ibm:params:oauth:grant-type:apikey"
CR_TOKEN_GRANT: Final = "urn:ibm:params:oauth:grant-type:cr-token"
ASSUME_GRANT: Final = "urn:ibm:params:oauth:grant-type:assume"

#: The key each grant type is counted under in ``FakeIAM.requests_by_grant``.
GRANT_KEYS: Final[Mapping[str, str]] = {APIKEY_GRANT: "apikey", CR_TOKEN_GRANT: "cr-token", ASSUME_GRANT: "assume"}

_BAD_PARAMETERS: Final = "BXNIM0102E"
_INVALID_TOKEN: Final = "BXNIM0407E"
_NO_SUCH_PROFILE: Final = "BXNIM0461E"

#: Whom API-key tokens are issued to (the same for every accepted key).
_API_KEY_IDENTITY: Final[Mapping[str, Any]] = {
    "iam_id": "IBMid-fake0001",
    "id": "IBMid-fake0001",
    "sub": "fake@example.com",
}
_API_KEY_ACCOUNT: Final = "fakeaccount0001"


@dataclass(frozen=True)
class Refusal:
    """An error answer: the HTTP status, the error code and the message."""

    status: int
    code: str
    message: str


@dataclass(frozen=True)
class Subject:
    """Whom a token is issued to, and through which grant.

    Attributes:
        grant: The key of the grant in ``FakeIAM.requests_by_grant`` (``"apikey"``,
            ``"cr-token"``, ``"assume"``, ``"vpc-iam"``).
        grant_type: The JWT's ``grant_type`` claim.
        identity: The JWT's identity claims (``iam_id``, ``id``, ``sub``, and for a trusted
            profile ``sub_type``, ``name``, ``realmid``).
        account_id: The JWT's ``account.bss``.
        scope: The ``scope`` asked for, if any.
        with_refresh: Whether the answer carries a real refresh token.
    """

    grant: str
    grant_type: str
    identity: Mapping[str, Any]
    account_id: str
    scope: str | None = None
    with_refresh: bool = False


def error_body(refusal: Refusal, request_id: str) -> dict[str, Any]:
    """IAM's JSON error body."""
    return {
        "errorCode": refusal.code,
        "errorMessage": refusal.message,
        "context": {"requestId": request_id, "requestType": "incoming.Identity_Token"},
    }


def outage(status: int) -> Refusal:
    """What IAM answers while the emulator is ``down``."""
    return Refusal(status, "BXNIM0001E", "IAM is down (simulated outage)")


def read_form(request: httpx.Request) -> dict[str, str]:
    """The form fields of a request body (the first value of each; blank values dropped)."""
    return {k: v[0] for k, v in parse_qs(request.content.decode("utf-8", "replace")).items()}


def profile_crn(account_id: str, profile_id: str) -> str:
    """The CRN of a trusted profile in an account."""
    return f"crn:v1:bluemix:public:iam-identity::a/{account_id}::profile:{profile_id}"


def find_profile(
    fake: FakeIAM,
    *,
    by_id: str | None = None,
    by_name: str | None = None,
    by_crn: str | None = None,
) -> str | None:
    """The id of the one trusted profile matching every selector given, or ``None``.

    A name matches the first profile (in ``fake.profiles`` order) with that name; a CRN matches
    a profile whose :func:`profile_crn` in ``fake.account_id`` it is.
    """
    candidates = list(fake.profiles)
    if by_id is not None:
        candidates = [pid for pid in candidates if pid == by_id]
    if by_name is not None:
        candidates = [pid for pid in candidates if fake.profiles[pid] == by_name][:1]
    if by_crn is not None:
        candidates = [pid for pid in candidates if profile_crn(fake.account_id, pid) == by_crn]
    return candidates[0] if candidates else None


def profile_subject(fake: FakeIAM, profile_id: str, grant: str, grant_type: str) -> Subject:
    """A trusted profile as a token's subject."""
    identity = {
        "iam_id": f"iam-{profile_id}",
        "id": f"iam-{profile_id}",
        "realmid": "iam",
        "sub": profile_id,
        "sub_type": "Profile",
        "name": fake.profiles[profile_id],
    }
    return Subject(grant=grant, grant_type=grant_type, identity=identity, account_id=fake.account_id)


def decide(fake: FakeIAM, request: httpx.Request, form: Mapping[str, str]) -> Subject | Refusal:
    """Whom ``POST /identity/token`` issues a token to, or why it refuses.

    Args:
        fake: The emulator whose keys, tokens, profiles and client credentials decide.
        request: The request (its method, path and headers).
        form: The request's form fields (:func:`read_form`).
    """
    if request.method != "POST" or request.url.path != TOKEN_PATH:
        return Refusal(404, "BXNIM0404E", "Not found")
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return Refusal(400, "BXNIM0109E", "Content type not supported")
    check = _GRANTS.get(form.get("grant_type", ""))
    if check is None:
        return Refusal(400, "BXNIM0308E", "Grant type not supported")
    outcome = check(fake, form)
    if isinstance(outcome, Refusal):
        return outcome
    outcome = replace(outcome, scope=form.get("scope"))
    if fake.client_id is not None:
        if not _basic_ok(request.headers.get("authorization"), fake.client_id, fake.client_secret):
            return Refusal(401, "BXNIM0310E", "Client credentials are invalid")
        outcome = replace(outcome, with_refresh=True)
    return outcome


def _param(form: Mapping[str, str], name: str) -> str | None:
    value = form.get(name, "")
    return value if value.strip() else None


def _apikey(fake: FakeIAM, form: Mapping[str, str]) -> Subject | Refusal:
    key = _param(form, "apikey")
    if key is None or (fake.api_keys is not None and key not in fake.api_keys):
        return Refusal(400, "BXNIM0415E", "Provided API key could not be found.")
    return Subject(grant="apikey", grant_type=APIKEY_GRANT, identity=_API_KEY_IDENTITY, account_id=_API_KEY_ACCOUNT)


def _cr_token(fake: FakeIAM, form: Mapping[str, str]) -> Subject | Refusal:
    profile_id, profile_name = _param(form, "profile_id"), _param(form, "profile_name")
    if profile_id is None and profile_name is None:
        return Refusal(400, _BAD_PARAMETERS, "Provide profile_id or profile_name (or both).")
    token = _param(form, "cr_token")
    if token is None or (fake.cr_tokens is not None and token not in fake.cr_tokens):
        return Refusal(400, _INVALID_TOKEN, "Provided compute resource token is not valid.")
    found = find_profile(fake, by_id=profile_id, by_name=profile_name)
    if found is None:
        return Refusal(400, _NO_SUCH_PROFILE, "Trusted profile could not be found.")
    return profile_subject(fake, found, "cr-token", CR_TOKEN_GRANT)


def _assume(fake: FakeIAM, form: Mapping[str, str]) -> Subject | Refusal:
    profile_id, crn = _param(form, "profile_id"), _param(form, "profile_crn")
    profile_name, account = _param(form, "profile_name"), _param(form, "account")
    if sum(selector is not None for selector in (profile_id, crn, profile_name)) != 1:
        return Refusal(400, _BAD_PARAMETERS, "Provide exactly one of profile_id, profile_crn, or profile_name.")
    if (profile_name is None) != (account is None):
        return Refusal(400, _BAD_PARAMETERS, "profile_name and account go together.")
    token = _param(form, "access_token")
    if token is None or not fake.is_valid(token):
        return Refusal(400, _INVALID_TOKEN, "Provided access token is not valid or has expired.")
    if account is not None and account != fake.account_id:
        return Refusal(400, _NO_SUCH_PROFILE, "Trusted profile could not be found in that account.")
    found = find_profile(fake, by_id=profile_id, by_name=profile_name, by_crn=crn)
    if found is None:
        return Refusal(400, _NO_SUCH_PROFILE, "Trusted profile could not be found.")
    return profile_subject(fake, found, "assume", ASSUME_GRANT)


def _basic_ok(header: str | None, client_id: str, client_secret: str | None) -> bool:
    if not header or not header.startswith("Basic "):
        return False
    try:
        pair = base64.b64decode(header[6:], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return False
    return pair == f"{client_id}:{client_secret}"


_GRANTS: Final[Mapping[str, Callable[[FakeIAM, Mapping[str, str]], Subject | Refusal]]] = {
    APIKEY_GRANT: _apikey,
    CR_TOKEN_GRANT: _cr_token,
    ASSUME_GRANT: _assume,
}
