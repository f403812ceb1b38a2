"""Configuration the IBM way: credentials from ``ibm-credentials.env``, the environment or
``VCAP_SERVICES``, as IBM's SDK cores find them, turned into a manager's arguments.

Reading is separate from building: :func:`find_service` reads (files and the environment, as
given) and :func:`manager_arguments` is pure. Neither logs or quotes a value: messages name files,
variables and properties only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._exceptions import ConfigurationError
from ._sources import (
    IAM_URL,
    ApiKeySource,
    AssumeProfileSource,
    ContainerSource,
    StaticTokenSource,
    VPCInstanceSource,
    check_api_key,
)
from ._sources.vpc import DEFAULT_METADATA_URL

__all__ = [
    "AUTH_TYPES",
    "CREDENTIALS_FILE_NAME",
    "PROPERTIES",
    "Found",
    "find_service",
    "manager_arguments",
    "parse_credentials_file",
    "service_prefix",
]

CREDENTIALS_FILE_NAME = "ibm-credentials.env"
#: The properties read for a service, as IBM's cores name them (after ``<SERVICE>_``).
PROPERTIES = (
    "AUTH_TYPE",
    "APIKEY",
    "AUTH_URL",
    "SCOPE",
    "CLIENT_ID",
    "CLIENT_SECRET",
    "AUTH_DISABLE_SSL",
    "CR_TOKEN_FILENAME",
    "IAM_PROFILE_ID",
    "IAM_PROFILE_NAME",
    "IAM_PROFILE_CRN",
    "IAM_ACCOUNT_ID",
    "BEARER_TOKEN",
)
#: ``AUTH_TYPE`` values (compared without case) and what aioiam builds for each.
AUTH_TYPES = {
    "iam": "the API-key grant",
    "container": "ContainerSource",
    "vpc": "VPCInstanceSource",
    "iamassume": "AssumeProfileSource",
    "bearertoken": "StaticTokenSource",
}
#: Keyword arguments of ``from_env`` that configure the source rather than the manager.
_SOURCE_OVERRIDES = {"url": "AUTH_URL", "client_id": "CLIENT_ID", "client_secret": "CLIENT_SECRET", "scope": "SCOPE"}


def service_prefix(service_name: str) -> str:
    """``my-service`` → ``MY_SERVICE``: the prefix of the service's property names.

    Raises:
        TypeError: Not a ``str``.
        ConfigurationError: Blank, or shaped like an API key (32 characters or more, upper and
            lower case letters and no other separator than ``-``/``_``): a key passed where the
            name goes. The message does not quote it.
    """
    if not isinstance(service_name, str):
        raise TypeError(f"service_name must be a str such as 'cloud-object-storage', not {type(service_name).__name__}")
    name = service_name.strip()
    if not name:
        raise ConfigurationError("service_name is blank; name the service, such as 'cloud-object-storage'")
    if len(name) >= 32 and any(c.islower() for c in name) and any(c.isupper() for c in name):
        raise ConfigurationError(
            "service_name looks like an API key, not a service's name (it is not shown); pass the key through "
            "IBMCLOUD_API_KEY or a credentials file, and the service's name here"
        )
    return name.upper().replace("-", "_")


def parse_credentials_file(text: str) -> dict[str, str]:
    """``NAME=value`` lines into a dict: blank lines and ``#`` comments skipped, spaces trimmed.

    Values are taken as written (a quoted value keeps its quotes, and a key checked later is then
    refused as quoted). A line without ``=`` is ignored, as IBM's cores ignore it.
    """
    result: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, value = line.split("=", 1)
        result[name.strip()] = value.strip()
    return result


@dataclass(frozen=True)
class Found:
    """A service's properties, and where they came from (for messages)."""

    properties: Mapping[str, str]
    origin: str
    searched: tuple[str, ...]


def _credentials_file(environ: Mapping[str, str], cwd: Path, home: Path) -> tuple[Path | None, list[str]]:
    """The credentials file to read, and the places looked at."""
    named = environ.get("IBM_CREDENTIALS_FILE")
    candidates = [Path(named)] if named else [cwd / CREDENTIALS_FILE_NAME, home / CREDENTIALS_FILE_NAME]
    looked: list[str] = []
    for path in candidates:
        if path.is_file():
            return path, looked
        looked.append(f"{path} (not found)")
    return None, looked


def _from_vcap(environ: Mapping[str, str], service: str) -> dict[str, str]:
    """The service's properties from ``VCAP_SERVICES`` (Cloud Foundry), by key or by ``name``."""
    raw = environ.get("VCAP_SERVICES")
    if not raw:
        return {}
    try:
        services = json.loads(raw)
    except ValueError:
        raise ConfigurationError("VCAP_SERVICES is set but is not JSON") from None
    if not isinstance(services, dict):
        return {}
    entries: list[Any] = []
    for key, value in services.items():
        if isinstance(value, list):
            entries += [(key, entry) for entry in value if isinstance(entry, dict)]
    match = next((e for k, e in entries if k == service), None) or next(
        (e for _, e in entries if e.get("name") == service), None
    )
    credentials = match.get("credentials") if match else None
    if not isinstance(credentials, dict):
        return {}
    found: dict[str, str] = {}
    for name, prop in (("apikey", "APIKEY"), ("iam_url", "AUTH_URL"), ("iam_apikey", "APIKEY")):
        value = credentials.get(name)
        if isinstance(value, str) and value and prop not in found:
            found[prop] = value
    return found


def find_service(
    service_name: str,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    home: Path | None = None,
) -> Found:
    """A service's properties from the first source that has any: the credentials file, then
    environment variables, then ``VCAP_SERVICES``. Sources are not merged (IBM's rule).

    Args:
        service_name: As the service is called (``cloud-object-storage``); upper-cased, ``-`` to ``_``.
        environ: The environment (``os.environ`` by default).
        cwd: Where ``./ibm-credentials.env`` is looked for (the working directory by default).
        home: Where ``~/ibm-credentials.env`` is looked for (the home directory by default).

    Raises:
        ConfigurationError: No source has any property of the service; the message lists every
            place searched.
    """
    environ = os.environ if environ is None else environ
    prefix = service_prefix(service_name) + "_"
    path, searched = _credentials_file(
        environ, Path.cwd() if cwd is None else cwd, Path.home() if home is None else home
    )
    if path is not None:
        try:
            entries = parse_credentials_file(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"the credentials file {path} cannot be read ({type(exc).__name__})") from None
        properties = {name[len(prefix) :]: value for name, value in entries.items() if name.startswith(prefix)}
        if properties:
            return Found(properties, f"the credentials file {path}", tuple(searched))
        searched.append(f"{path} (no {prefix}* entries)")
    properties = {name[len(prefix) :]: value for name, value in environ.items() if name.startswith(prefix)}
    if properties:
        return Found(properties, f"the environment variables {prefix}*", tuple(searched))
    searched.append(f"environment variables {prefix}* (none set)")
    properties = _from_vcap(environ, service_name.strip())
    if properties:
        return Found(properties, f"VCAP_SERVICES ({service_name})", tuple(searched))
    searched.append("VCAP_SERVICES (" + ("no such service" if environ.get("VCAP_SERVICES") else "not set") + ")")
    raise ConfigurationError(f"no credentials found for service {service_name!r}; searched: " + "; ".join(searched))


def _true(value: str) -> bool:
    return value.strip().lower() in ("true", "1", "yes")


def manager_arguments(found: Found, prefix: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``TokenManager`` keyword arguments for the properties found, with ``overrides`` on top.

    ``url``, ``client_id``, ``client_secret`` and ``scope`` in ``overrides`` replace the matching
    properties before the source is built; every other override is passed to the manager as is.

    Raises:
        ConfigurationError: An unknown ``AUTH_TYPE``, a property the auth type needs is missing, or
            a value the source refuses (the message says where it came from, never the value).
    """
    for keyword in ("api_key", "source"):
        if keyword in overrides:
            raise ConfigurationError(
                f"from_env reads the credentials itself and takes no {keyword}=; to pass them in code, use "
                f"TokenManager({keyword}=...) instead"
            )
    props = {name: value for name, value in found.properties.items() if value != ""}
    for keyword, prop in _SOURCE_OVERRIDES.items():
        if overrides.get(keyword) is not None:
            props[prop] = overrides[keyword]
    rest = {name: value for name, value in overrides.items() if name not in _SOURCE_OVERRIDES}
    auth_type = props.get("AUTH_TYPE", "iam" if "APIKEY" in props else "container")
    kind = auth_type.lower()
    if kind not in AUTH_TYPES:
        raise ConfigurationError(
            f"{prefix}AUTH_TYPE in {found.origin} is {auth_type!r}, which aioiam does not support; "
            "use one of: iam, container, vpc, iamAssume, bearerToken"
        )

    def need(*names: str) -> str:
        for name in names:
            if name in props:
                return props[name]
        wanted = " or ".join(prefix + name for name in names)
        if "AUTH_TYPE" in props:
            raise ConfigurationError(f"{found.origin} sets {prefix}AUTH_TYPE={auth_type} but not {wanted}")
        raise ConfigurationError(
            f"{found.origin} has {prefix}* settings but no {prefix}APIKEY, so the auth type is container "
            f"(a trusted profile), which needs {wanted}"
        )

    url = props.get("AUTH_URL")
    arguments: dict[str, Any] = {}
    try:
        if kind == "iam":
            arguments["source"] = ApiKeySource(
                need("APIKEY"),
                url=url or IAM_URL,
                client_id=props.get("CLIENT_ID"),
                client_secret=props.get("CLIENT_SECRET"),
                scope=props.get("SCOPE"),
            )
        elif kind == "container":
            need("IAM_PROFILE_ID", "IAM_PROFILE_NAME")
            arguments["source"] = ContainerSource(
                cr_token_file=props.get("CR_TOKEN_FILENAME"),
                profile_id=props.get("IAM_PROFILE_ID"),
                profile_name=props.get("IAM_PROFILE_NAME"),
                url=url or IAM_URL,
                client_id=props.get("CLIENT_ID"),
                client_secret=props.get("CLIENT_SECRET"),
                scope=props.get("SCOPE"),
            )
        elif kind == "vpc":
            arguments["source"] = VPCInstanceSource(
                profile_id=props.get("IAM_PROFILE_ID"),
                profile_crn=props.get("IAM_PROFILE_CRN"),
                metadata_url=url or DEFAULT_METADATA_URL,
            )
        elif kind == "iamassume":
            api_key = need("APIKEY")
            need("IAM_PROFILE_ID", "IAM_PROFILE_CRN", "IAM_PROFILE_NAME")
            if "IAM_PROFILE_NAME" in props:
                need("IAM_ACCOUNT_ID")
            arguments["source"] = AssumeProfileSource(
                api_key,
                profile_id=props.get("IAM_PROFILE_ID"),
                profile_crn=props.get("IAM_PROFILE_CRN"),
                profile_name=props.get("IAM_PROFILE_NAME"),
                account_id=props.get("IAM_ACCOUNT_ID"),
                url=url or IAM_URL,
            )
        else:
            arguments["source"] = StaticTokenSource(need("BEARER_TOKEN"))
    except ConfigurationError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"the {prefix}* settings in {found.origin} cannot be used: {exc}") from None
    if _true(props.get("AUTH_DISABLE_SSL", "")) and "verify" not in rest and "http_client" not in rest:
        arguments["verify"] = False
    arguments.update(rest)
    return arguments


def api_key_from_environment(environ: Mapping[str, str] | None = None) -> str:
    """``IBMCLOUD_API_KEY``, the ``ibmcloud`` CLI's variable.

    Raises:
        ConfigurationError: It is not set (or blank).
    """
    environ = os.environ if environ is None else environ
    value = environ.get("IBMCLOUD_API_KEY", "").strip()
    if not value:
        raise ConfigurationError(
            "no service name given and IBMCLOUD_API_KEY is not set; set it, or name the service whose "
            f"credentials to read (from {CREDENTIALS_FILE_NAME}, <SERVICE>_* variables or VCAP_SERVICES)"
        )
    try:
        return check_api_key(value)
    except ValueError as exc:
        raise ConfigurationError(f"IBMCLOUD_API_KEY cannot be used: {exc}") from None
