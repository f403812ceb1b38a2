"""The compute-resource token grant: a trusted profile for a workload on Kubernetes, OpenShift or
Code Engine, proven by the token file the platform mounts (and rotates) in the container."""

from __future__ import annotations

import os
from collections.abc import Sequence

import anyio
import httpx

from .._exceptions import ConfigurationError
from .._redaction import redactable
from .._token import TokenResponse
from .base import IAM_URL, FormGrant, optional_str

__all__ = ["CR_TOKEN_GRANT", "DEFAULT_CR_TOKEN_FILES", "ContainerSource"]

CR_TOKEN_GRANT = "urn:ibm:params:oauth:grant-type:cr-token"
#: Where IBM's platforms mount the compute-resource token, tried in this order when no file is given.
DEFAULT_CR_TOKEN_FILES: tuple[str, ...] = (
    "/var/run/secrets/tokens/vault-token",
    "/var/run/secrets/tokens/sa-token",
    "/var/run/secrets/codeengine.cloud.ibm.com/compute-resource-token/token",
)


class ContainerSource(FormGrant):
    """A trusted profile's token for a compute resource: ``grant_type=...:cr-token``.

    The compute-resource token is read from its file at every fetch, since the platform rotates
    it; with no file given, IBM's default locations are tried in order
    (:data:`DEFAULT_CR_TOKEN_FILES`). The token read is a secret like an API key: it is scrubbed
    from everything IAM sends back.

    Args:
        cr_token_file: The file holding the compute-resource token.
        profile_id: The trusted profile's id (``Profile-...``).
        profile_name: The trusted profile's name. At least one of the two.
        url: IAM's base URL.
        client_id: With ``client_secret``, sent as HTTP Basic auth.
        client_secret: See ``client_id``.
        scope: Sent as ``scope`` when given.

    Raises:
        ValueError: Neither ``profile_id`` nor ``profile_name``; only one of the client id and
            secret; a bad URL.
        TypeError: An argument of the wrong type.

    A fetch whose token file is missing, unreadable or empty raises
    :class:`~aioiam.ConfigurationError` naming every path tried, and sends nothing to IAM.
    """

    __slots__ = ("_files", "_last", "_profile", "_secrets")

    def __init__(
        self,
        *,
        cr_token_file: str | os.PathLike[str] | None = None,
        profile_id: str | None = None,
        profile_name: str | None = None,
        url: str = IAM_URL,
        client_id: str | None = None,
        client_secret: str | None = None,
        scope: str | None = None,
    ) -> None:
        profile = {"profile_id": optional_str("profile_id", profile_id)}
        profile["profile_name"] = optional_str("profile_name", profile_name)
        if not any(profile.values()):
            raise ValueError("ContainerSource needs profile_id or profile_name: the trusted profile to act as")
        if cr_token_file is not None and not isinstance(cr_token_file, (str, os.PathLike)):
            raise TypeError(f"cr_token_file must be a path, not {type(cr_token_file).__name__}")
        super().__init__(url=url, client_id=client_id, client_secret=client_secret, scope=scope)
        self._profile = {name: value for name, value in profile.items() if value}
        self._files = DEFAULT_CR_TOKEN_FILES if cr_token_file is None else (os.fspath(cr_token_file),)
        self._last: str | None = None
        self._secrets = self._static_secrets

    def __repr__(self) -> str:
        selector = ", ".join(f"{name}={value!r}" for name, value in self._profile.items())
        return f"ContainerSource({selector}, endpoint={self.endpoint!r}, cr_token_files={list(self._files)!r})"

    def cache_identity(self) -> tuple[str, str | None]:
        """For a shared cache: the profile's token (no secret), and no stable secret: the
        compute-resource token rotates, so a cache needs ``secret=``."""
        return self._identity(CR_TOKEN_GRANT, **self._profile), None

    @property
    def secrets(self) -> Sequence[str]:
        """The client secret (when configured) and the compute-resource token last read."""
        return self._secrets

    async def read_cr_token(self) -> str:
        """The compute-resource token: the first of the files that holds one, stripped.

        Raises:
            ConfigurationError: No file holds one; the message lists each path with why.
        """
        tried: list[str] = []
        for path in self._files:
            try:
                text = (await anyio.Path(path).read_text()).strip()
            except FileNotFoundError:
                tried.append(f"{path} (missing)")
                continue
            except (OSError, UnicodeDecodeError) as exc:
                tried.append(f"{path} (unreadable: {type(exc).__name__})")
                continue
            if text:
                return text
            tried.append(f"{path} (empty)")
        raise ConfigurationError(
            "no compute-resource token to send: tried "
            + ", ".join(tried)
            + "; pass cr_token_file= (CR_TOKEN_FILENAME) naming the file your platform mounts"
        )

    async def fetch(self, client: httpx.AsyncClient) -> TokenResponse:
        """Read the token file, then send one token request. No retry, no timing."""
        cr_token = await self.read_cr_token()
        if cr_token != self._last:
            self._last = cr_token
            self._secrets = redactable((*self._static_secrets, cr_token))
        return await self._post(client, {"grant_type": CR_TOKEN_GRANT, "cr_token": cr_token, **self._profile})
