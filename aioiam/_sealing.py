"""What a shared cache sees: key names nobody can guess and tokens nobody can read. Pure, apart
from needing ``cryptography`` (the ``aioiam[redis]`` extra); the nonce is passed in.

- :func:`derive_keys`: from the credential's stable secret (and ``secret=``), with HKDF-SHA256,
  an AES-GCM key and the key names: HMAC-SHA256 over the token's non-secret identity (grant,
  endpoint, profile, scope, client id). Someone who reads the store but holds no credential
  learns neither the tokens nor which credentials exist.
- :func:`seal` and :func:`unseal`: an :class:`~aioiam._fleet.Entry` to bytes and back, encrypted
  with AES-GCM and bound to its key name (associated data), so an entry copied under another
  name does not decrypt. Anything that does not decrypt and parse is ``None``, never a token.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ._fleet import Entry
from ._token import MAX_EXPIRES_IN, TokenResponse, decode_jwt_claims, token_response_problem

__all__ = ["FORMAT", "NONCE_BYTES", "SealKeys", "derive_keys", "seal", "unseal"]

#: The first bytes of every sealed entry: its format. A new format gets a new prefix.
FORMAT = b"aioiam1:"
NONCE_BYTES = 12
_SALT = b"aioiam fleet cache v1"
#: Hex characters of the keyed hash in key names: 128 bits.
_NAME_HEX = 32


@dataclass(frozen=True, slots=True)
class SealKeys:
    """Where one credential's token is kept, and the key that seals it.

    Attributes:
        entry: The key name of the sealed token.
        lock: The key name of the lock that elects the fetcher.
        done: The prefix of the announcement lists: the flight that holds the lock announces its
            token (or that it stored none) on ``f"{done}:{owner}"``, its owner id appended.
        aead: The AES-256-GCM key (secret; never in ``repr``).
        cipher: AES-GCM with that key, made once: a process's first one costs about 0.4 ms
            (OpenSSL looks the cipher up), which would otherwise fall on the moment a waiting
            fleet wakes with a token to unseal. Derived from ``aead``; not compared.
    """

    entry: str
    lock: str
    done: str
    aead: bytes = field(repr=False)
    cipher: AESGCM = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cipher", AESGCM(self.aead))


def _hkdf(material: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=info).derive(material)


def derive_keys(secrets: tuple[str, ...], identity: str, namespace: str) -> SealKeys:
    """The key names and the sealing key for one credential.

    Args:
        secrets: The stable secrets to derive from (the credential's own, and ``secret=`` when
            given), at least one.
        identity: The token's non-secret identity (what it is for); it enters both keys, so
            the same secret with another scope or profile gets other names and another key.
        namespace: The prefix of every key name, in clear.

    Raises:
        ValueError: No secret.
    """
    if not secrets:
        raise ValueError("a shared cache needs a stable secret to derive its keys from")
    # Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
    material = b"".join(len(s.encode()).to_bytes(4, "big") + s.encode() for s in secrets)
    ident = identity.encode()
    aead = _hkdf(material, b"aioiam token sealing key\x00" + ident)
    mac = hmac.HMAC(_hkdf(material, b"aioiam key names"), hashes.SHA256())
    mac.update(ident)
    tag = mac.finalize().hex()[:_NAME_HEX]
    # The braces are a Redis Cluster hash tag: every key of the credential (the entry, the lock,
    # the announcement lists) lands on one slot, so one script may touch them together.
    base = f"{namespace}:{{{tag}}}"
    return SealKeys(entry=f"{base}:token", lock=f"{base}:lock", done=f"{base}:done", aead=aead)


def _payload(entry: Entry) -> bytes:
    response = entry.response
    document = {
        "access_token": response.access_token,
        "token_type": response.token_type,
        "expires_in": response.expires_in,
        "refresh_token": response.refresh_token,
        "expiration": response.expiration,
        "scope": response.scope,
        "obtained_at": entry.obtained_at,
    }
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()


def seal(keys: SealKeys, entry: Entry, nonce: bytes) -> bytes:
    """``entry`` encrypted under ``keys.aead``, bound to ``keys.entry``: :data:`FORMAT`, then the
    nonce and the ciphertext in URL-safe base64 (ASCII).

    Args:
        nonce: :data:`NONCE_BYTES` random bytes, never reused with the same key
            (``os.urandom(12)``).
    """
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"the nonce must be {NONCE_BYTES} bytes")
    sealed = keys.cipher.encrypt(nonce, _payload(entry), FORMAT + keys.entry.encode())
    # base64, so a store (or a Redis client set to decode answers) may treat it as text
    return FORMAT + base64.urlsafe_b64encode(nonce + sealed)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    result = float(value)
    return result if math.isfinite(result) else None


def _text(value: Any, *, optional: bool = True) -> str | bool | None:
    """The string, ``None`` when absent and allowed, ``False`` when wrong."""
    if value is None and optional:
        return None
    return value if isinstance(value, str) else False


def _entry(document: Any) -> Entry | None:
    if not isinstance(document, dict):
        return None
    access_token = _text(document.get("access_token"), optional=False)
    token_type = _text(document.get("token_type"), optional=False)
    refresh_token = _text(document.get("refresh_token"))
    scope = _text(document.get("scope"))
    expires_in = _number(document.get("expires_in"))
    obtained_at = _number(document.get("obtained_at"))
    expiration = document.get("expiration")
    if (
        not isinstance(access_token, str)
        or not isinstance(token_type, str)
        or refresh_token is False
        or scope is False
        or expires_in is None
        or not 0 < expires_in <= MAX_EXPIRES_IN
        or obtained_at is None
        or not (expiration is None or (isinstance(expiration, int) and not isinstance(expiration, bool)))
    ):
        return None
    response = TokenResponse(
        access_token=access_token,
        token_type=token_type,
        expires_in=expires_in,
        refresh_token=refresh_token if isinstance(refresh_token, str) else None,
        expiration=expiration,
        scope=scope if isinstance(scope, str) else None,
        claims=decode_jwt_claims(access_token),
    )
    if token_response_problem(response) is not None:
        return None
    return Entry(response, obtained_at)


def unseal(keys: SealKeys, blob: object) -> Entry | None:
    """The entry sealed in ``blob``, or ``None`` if it does not decrypt and parse as one.

    Never raises for what the store holds: garbage, another format, another key, an entry
    moved from another key name, a truncated value.
    """
    if isinstance(blob, str):
        blob = blob.encode("ascii", "replace")
    if not isinstance(blob, (bytes, bytearray)) or not blob.startswith(FORMAT):
        return None
    try:
        body = base64.urlsafe_b64decode(bytes(blob[len(FORMAT) :]))
    except (binascii.Error, ValueError):
        return None
    if len(body) <= NONCE_BYTES:
        return None
    try:
        plain = keys.cipher.decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], FORMAT + keys.entry.encode())
        document = json.loads(plain)
    except (InvalidTag, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return _entry(document)
