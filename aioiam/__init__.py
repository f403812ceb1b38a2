"""aioiam: asynchronous IBM Cloud IAM tokens, fetched once, shared, refreshed ahead of expiry.

The public surface is re-exported here; everything in ``aioiam._*`` modules is private.
"""

from ._auth import DEFAULT_ALLOWED_HOSTS, IAMAuth
from ._cache import CacheSession, TokenCache
from ._exceptions import (
    ConfigurationError,
    IAMError,
    IAMUnavailableError,
    InvalidCredentialsError,
    InvalidResponseError,
    ManagerClosedError,
    TransientIAMError,
)
from ._hooks import FetchAttempt, Hook
from ._manager import TokenManager
from ._redis import RedisTokenCache
from ._sources import (
    ApiKeySource,
    AssumeProfileSource,
    ContainerSource,
    StaticTokenSource,
    TokenSource,
    VPCInstanceSource,
)
from ._timing import RefreshPolicy, RetryPolicy, TokenState
from ._token import Token, TokenResponse
from ._version import __version__

__all__ = [
    "DEFAULT_ALLOWED_HOSTS",
    "ApiKeySource",
    "AssumeProfileSource",
    "CacheSession",
    "ConfigurationError",
    "ContainerSource",
    "FetchAttempt",
    "Hook",
    "IAMAuth",
    "IAMError",
    "IAMUnavailableError",
    "InvalidCredentialsError",
    "InvalidResponseError",
    "ManagerClosedError",
    "RedisTokenCache",
    "RefreshPolicy",
    "RetryPolicy",
    "StaticTokenSource",
    "Token",
    "TokenCache",
    "TokenManager",
    "TokenResponse",
    "TokenSource",
    "TokenState",
    "TransientIAMError",
    "VPCInstanceSource",
    "__version__",
]
