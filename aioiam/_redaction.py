"""Keeping secrets out of text: what can be scrubbed, scrubbing, and scrubbed copies of errors.

Pure: no I/O. Every piece of text that comes from the other side (IAM's error bodies, its headers,
a network error's message, a custom source's exception) passes through :func:`scrub` with the
source's secrets before aioiam keeps it, logs it or raises it.

Matching ignores letter case, both when scrubbing text and when :func:`contains_secret` checks a
user's configuration; other spellings (encodings) are found only where the sources list them.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable

from ._exceptions import IAMError

__all__ = [
    "MIN_REDACTABLE_LENGTH",
    "Redactor",
    "clip",
    "contains_secret",
    "no_redaction",
    "redactable",
    "scrub",
    "scrub_error",
]

#: A function that returns its text with every secret it knows replaced.
Redactor = Callable[[str], str]

#: Secrets shorter than this are not scrubbed from text: replacing a string of a few characters
#: wherever it occurs mangles unrelated words (a key ``"e"`` turns ``"fake-1"`` into
#: ``"fak[redacted]-1"``) and hides nothing. Real IBM Cloud API keys are 44 characters.
MIN_REDACTABLE_LENGTH = 8


def redactable(secrets: Iterable[str]) -> tuple[str, ...]:
    """The secrets worth scrubbing, longest first, without duplicates.

    Drops strings shorter than :data:`MIN_REDACTABLE_LENGTH` (they cannot be scrubbed without
    mangling unrelated text) and non-strings. Longest first, so a secret that contains another is
    scrubbed whole. Does not look at any text.
    """
    kept = {s for s in secrets if isinstance(s, str) and len(s) >= MIN_REDACTABLE_LENGTH}
    return tuple(sorted(kept, key=lambda s: (-len(s), s)))


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each redactable secret replaced by ``[redacted]``.

    Only secrets of at least :data:`MIN_REDACTABLE_LENGTH` characters are replaced (see
    :func:`redactable`); shorter ones are left in place. Matching ignores letter case (a service
    that echoes a key upper-cased still leaks it), but not other spellings: encodings other than
    the ones listed are not found.
    """
    for secret in redactable(secrets):
        if secret.casefold() in text.casefold():
            text = re.sub(re.escape(secret), "[redacted]", text, flags=re.IGNORECASE)
    return text


def contains_secret(text: str, secrets: Iterable[str]) -> bool:
    """Whether ``text`` holds one of the redactable ``secrets`` in any letter case.

    For checking configuration (a URL must not carry the key, however it was cased: hosts are
    case-insensitive and a key upper-cased in a path is still the key). Does not change ``text``.
    """
    folded = text.casefold()
    return any(secret.casefold() in folded for secret in redactable(secrets))


def no_redaction(text: str) -> str:
    """The identity :data:`Redactor`, for parsing text that holds no secret of ours."""
    return text


def clip(text: str, limit: int = 300) -> str:
    """``text`` on one line (runs of whitespace made one space), cut to ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def scrub_error(error: IAMError, redact: Redactor) -> IAMError:
    """``error`` with ``redact`` applied to its message and every text attribute.

    Returns ``error`` itself when nothing changes. The copy keeps ``__cause__`` only if the
    cause's text is unchanged by ``redact`` too. Does not look inside the ``cause`` attribute of
    an ``IAMUnavailableError`` (the manager builds those from already scrubbed errors).
    """
    state = {name: redact(value) if isinstance(value, str) else value for name, value in vars(error).items()}
    cause = error.__cause__
    cause_clean = cause is None or redact(str(cause)) == str(cause)
    if state == vars(error) and cause_clean:
        return error
    clean = copy.copy(error)
    vars(clean).update(state)
    clean.args = (state["message"],)
    clean.__cause__ = cause if cause_clean else None
    clean.__suppress_context__ = True
    return clean
