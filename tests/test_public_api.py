"""The public surface: __all__ is sorted, complete and importable; the version is consistent."""

from __future__ import annotations

import importlib.metadata
import inspect

import aioiam
import aioiam.testing


def _isort_key(name: str) -> tuple[int, str]:
    """Constants, then classes, then the rest (ruff's RUF022 order)."""
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


def test_all_is_sorted_and_every_name_exists() -> None:
    for module in (aioiam, aioiam.testing):
        assert list(module.__all__) == sorted(module.__all__, key=_isort_key)
        for name in module.__all__:
            assert hasattr(module, name), name


def test_every_public_class_and_function_is_in_all() -> None:
    public = {
        name
        for name, value in vars(aioiam).items()
        if not name.startswith("_") and (inspect.isclass(value) or inspect.isfunction(value))
    }
    assert public <= set(aioiam.__all__)


def test_exceptions_share_one_base() -> None:
    for name in ("IAMUnavailableError", "InvalidCredentialsError", "InvalidResponseError", "ManagerClosedError"):
        assert issubclass(getattr(aioiam, name), aioiam.IAMError)


def test_version_matches_the_installed_metadata() -> None:
    assert importlib.metadata.version("aioiam") == aioiam.__version__
