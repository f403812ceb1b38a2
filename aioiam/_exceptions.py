"""Every error aioiam raises, under one base.

The tree::

    IAMError
    ├── InvalidCredentialsError   IAM refused the credentials (400/401/403); never retried
    ├── IAMUnavailableError       IAM unreachable or failing transiently, and no usable token left
    ├── InvalidResponseError      IAM answered, but not with something aioiam can use
    ├── TransientIAMError         one failed attempt worth retrying (5xx, 429, timeout, network)
    ├── ManagerClosedError        the manager was used after ``aclose()``
    └── ConfigurationError        credentials that cannot be found or used as configured (also a
                                  ``ValueError``)

Messages and attributes carry what a support case needs (status, IAM error code, request id) and
never a secret: text that comes from IAM is passed through the manager's redactor before it is
stored here, and no exception keeps the request (whose body holds the API key).
"""

from __future__ import annotations

import copy

__all__ = [
    "ConfigurationError",
    "IAMError",
    "IAMUnavailableError",
    "InvalidCredentialsError",
    "InvalidResponseError",
    "ManagerClosedError",
    "TransientIAMError",
    "fresh_copy",
]


class IAMError(Exception):
    """Base class of every error aioiam raises.

    Attributes:
        status_code: The HTTP status IAM answered with, if an answer was received.
        error_code: IAM's own error code (such as ``BXNIM0415E``), if IAM sent one.
        error_message: IAM's own error message (redacted), if IAM sent one.
        request_id: IAM's request or transaction id, if IAM sent one; quote it to IBM support.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.error_code = error_code
        self.error_message = error_message
        self.request_id = request_id

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        fields = [repr(self.message)]
        for name in ("status_code", "error_code", "request_id"):
            value = getattr(self, name)
            if value is not None:
                fields.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(fields)})"

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only attributes survive pickling and copying.
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))


def fresh_copy(error: IAMError) -> IAMError:
    """A copy of ``error`` to raise in another task, so tracebacks of different callers don't pile up.

    The copy keeps the cause and every attribute; it does not scrub anything (see
    ``_redaction.scrub_error`` for that).
    """
    clone = copy.copy(error)
    clone.__cause__ = error.__cause__
    clone.__suppress_context__ = True
    return clone


def _rebuild(cls: type[IAMError], message: str, state: dict[str, object]) -> IAMError:
    error = cls.__new__(cls, message)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class InvalidCredentialsError(IAMError):
    """IAM refused the credentials: a 400, 401 or 403 answer to a token request.

    Never retried by a caller that asked for a token: a key that IAM refuses is not sent again for
    every new caller (see the manager's cooldown).
    """


class TransientIAMError(IAMError):
    """One attempt failed in a way worth retrying: 5xx, 429, a timeout or a network error.

    Callers rarely see this directly: it is the ``cause`` of the :class:`IAMUnavailableError` they
    get once retries run out and no usable token is left.

    Attributes:
        retry_after: Seconds IAM asked us to wait (``Retry-After``), if it said.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class IAMUnavailableError(IAMError):
    """IAM could not be reached or kept failing transiently, and no usable token is left.

    Attributes:
        cause: The last failure seen (also the ``__cause__``), typically a
            :class:`TransientIAMError`.
    """

    def __init__(self, message: str, *, cause: BaseException | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.cause = cause
        self.__cause__ = cause


class InvalidResponseError(IAMError):
    """IAM (or something in its place) answered with something that is not a usable token response.

    Raised for a 200 whose body is not valid JSON or lacks a valid token, and for answers that say
    the endpoint is wrong (404, 405 and the like): check ``url``. Not retried by a waiting caller.
    """


class ManagerClosedError(IAMError):
    """The manager was used after it was closed, or closed while the caller was waiting."""


class ConfigurationError(IAMError, ValueError):
    """Credentials that cannot be found or used as configured.

    Raised by :meth:`~aioiam.TokenManager.from_env` when no source of configuration has the
    service, or a property its auth type needs is missing; and by a source at fetch time when what
    it was configured to read is not there (a compute-resource token file that is missing or
    empty), in which case nothing is sent to IAM. The message names what was looked for (files,
    variables, property names), never a secret. Not retried by a waiting caller.
    """
