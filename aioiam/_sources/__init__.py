"""Where tokens come from: the :class:`TokenSource` seam and one module per grant.

- ``base``: the protocol, credential checks, reading IAM's answer, the form POST most grants are.
- ``apikey``: an API key (the default grant).
- ``container``: a trusted profile from a compute resource's token file (Kubernetes, Code Engine).
- ``vpc``: a trusted profile through a VPC instance's metadata service.
- ``assume``: an API key's token exchanged for a trusted profile's.
- ``static``: a bearer token the user already has.
"""

from .apikey import APIKEY_GRANT, ApiKeySource, check_api_key
from .assume import ASSUME_GRANT, AssumeProfileSource
from .base import (
    IAM_URL,
    USER_AGENT,
    FormGrant,
    TokenSource,
    check_credential,
    read_iam_answer,
    unverified_tls,
)
from .container import CR_TOKEN_GRANT, DEFAULT_CR_TOKEN_FILES, ContainerSource
from .static import StaticTokenSource
from .vpc import DEFAULT_METADATA_URL, VPCInstanceSource

__all__ = [
    "APIKEY_GRANT",
    "ASSUME_GRANT",
    "CR_TOKEN_GRANT",
    "DEFAULT_CR_TOKEN_FILES",
    "DEFAULT_METADATA_URL",
    "IAM_URL",
    "USER_AGENT",
    "ApiKeySource",
    "AssumeProfileSource",
    "ContainerSource",
    "FormGrant",
    "StaticTokenSource",
    "TokenSource",
    "VPCInstanceSource",
    "check_api_key",
    "check_credential",
    "read_iam_answer",
    "unverified_tls",
]
