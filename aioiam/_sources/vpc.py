"""The VPC instance metadata grant: a trusted profile's token for a virtual server, in two steps
through the instance's own metadata service (no credential to store anywhere)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import httpx

from .._redaction import Redactor, redactable, scrub
from .._token import TokenResponse
from .._urls import is_loopback_host
from .base import USER_AGENT, identity, one_chunk, optional_str, read_iam_answer

__all__ = ["DEFAULT_METADATA_URL", "METADATA_API_VERSION", "VPCInstanceSource", "metadata_base_url"]

DEFAULT_METADATA_URL = "http://169.254.169.254"
METADATA_API_VERSION = "2022-03-01"
#: Life asked for the instance identity token: it is used once, right away.
_IDENTITY_LIFETIME = 300


def _is_link_local(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_link_local
    except ValueError:
        return False


def metadata_base_url(url: str) -> str:
    """The metadata service's base URL, without a trailing slash.

    Plain http is what the service speaks, and is allowed for link-local addresses (the service's
    own ``169.254.169.254``) and loopback (an emulator); anywhere else only https is.

    Raises:
        TypeError: Not a string.
        ValueError: Not an absolute http(s) URL; credentials, a query or a fragment; plain http
            to a host that is neither link-local nor loopback.
    """
    if not isinstance(url, str):
        raise TypeError(f"metadata_url must be a str, not {type(url).__name__}")
    try:
        parsed = httpx.URL(url.strip())
    except httpx.InvalidURL:
        raise ValueError("metadata_url is not a valid URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"metadata_url must be an absolute URL such as {DEFAULT_METADATA_URL!r}, got {url!r}")
    if parsed.userinfo or parsed.query or parsed.fragment:
        raise ValueError("metadata_url must not carry credentials, a query or a fragment")
    if parsed.scheme == "http" and not (_is_link_local(parsed.host) or is_loopback_host(parsed.host)):
        raise ValueError(
            f"metadata_url may use plain http only for the link-local metadata address or loopback, got {url!r}"
        )
    return str(parsed.copy_with(path=parsed.path.rstrip("/")))


class VPCInstanceSource:
    """A trusted profile's token for a VPC virtual server instance, from its metadata service.

    Two requests per fetch: ``PUT {metadata_url}/instance_identity/v1/token`` (header
    ``Metadata-Flavor: ibm``) for an instance identity token, then ``POST
    .../instance_identity/v1/iam_token`` with it for the IAM token, for the profile named (or the
    instance's default profile when none is). The metadata service's answer carries no
    ``token_type``; that is accepted. The identity token is scrubbed like a secret.

    Args:
        profile_id: The trusted profile's id.
        profile_crn: The trusted profile's CRN. At most one of the two; neither means the
            instance's default profile.
        metadata_url: The metadata service (see :func:`metadata_base_url` for what is allowed).

    Raises:
        ValueError: Both selectors; a bad ``metadata_url``.
        TypeError: An argument of the wrong type.
    """

    __slots__ = ("_base", "_profile", "_secrets")

    def __init__(
        self,
        *,
        profile_id: str | None = None,
        profile_crn: str | None = None,
        metadata_url: str = DEFAULT_METADATA_URL,
    ) -> None:
        profile_id = optional_str("profile_id", profile_id)
        profile_crn = optional_str("profile_crn", profile_crn)
        if profile_id and profile_crn:
            raise ValueError("pass at most one of profile_id and profile_crn (neither: the instance's default profile)")
        self._base = metadata_base_url(metadata_url)
        self._profile: dict[str, str] = {}
        if profile_id:
            self._profile = {"id": profile_id}
        elif profile_crn:
            self._profile = {"crn": profile_crn}
        self._secrets: tuple[str, ...] = ()

    def __repr__(self) -> str:
        selector = f"{next(iter(self._profile))}={next(iter(self._profile.values()))!r}" if self._profile else "default"
        return f"VPCInstanceSource(profile={selector}, metadata_url={self._base!r})"

    def cache_identity(self) -> tuple[str, str | None]:
        """For a shared cache: the profile's token (no secret), and no stable secret: the
        instance proves itself afresh each time, so a cache needs ``secret=``."""
        return identity(grant="vpc-instance-identity", metadata_url=self._base, **self._profile), None

    @property
    def secrets(self) -> Sequence[str]:
        """The instance identity token last obtained."""
        return self._secrets

    def _redact(self, text: str) -> str:
        return scrub(text, self._secrets)

    async def _call(
        self, client: httpx.AsyncClient, method: str, path: str, headers: dict[str, str], body: object, redact: Redactor
    ) -> TokenResponse:
        url = f"{self._base}/instance_identity/v1/{path}"
        request = client.build_request(
            method,
            url,
            params={"version": METADATA_API_VERSION},
            headers={"Accept": "application/json", "User-Agent": USER_AGENT, **headers},
            json=body,
        )
        response = await client.send(one_chunk(request), auth=None, follow_redirects=False)
        try:
            return await read_iam_answer(response, url=url, redact=redact)
        finally:
            await response.aclose()

    async def fetch(self, client: httpx.AsyncClient) -> TokenResponse:
        """Get an instance identity token, then the IAM token for it. No retry, no timing."""
        identity = await self._call(
            client, "PUT", "token", {"Metadata-Flavor": "ibm"}, {"expires_in": _IDENTITY_LIFETIME}, self._redact
        )
        self._secrets = redactable([identity.access_token])
        body = {"trusted_profile": self._profile} if self._profile else None
        return await self._call(
            client, "POST", "iam_token", {"Authorization": f"Bearer {identity.access_token}"}, body, self._redact
        )
