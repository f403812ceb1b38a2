"""What machine, software and commit the figures came from."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["describe"]

_PACKAGES = ("aioiam", "anyio", "httpx", "httpcore", "h11", "ibm-cloud-sdk-core", "requests", "matplotlib")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _os_name() -> str:
    try:
        with open("/etc/os-release") as release:
            for line in release:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def _git(*args: str) -> str:
    root = Path(__file__).resolve().parent.parent
    git = shutil.which("git")
    if git is None:
        return ""
    try:
        result = subprocess.run([git, *args], cwd=root, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return result.stdout.strip()


def describe() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        load: float | None = round(os.getloadavg()[0], 2)  # other work on the machine, at the start
    except OSError:
        load = None
    return {
        "cpu": _cpu_model(),
        "cores": affinity,
        "memory_gib": _memory_gib(),
        "load_average": load,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": _os_name(),
        "kernel": platform.release(),
        "packages": versions,
        "commit": _git("rev-parse", "--short", "HEAD"),
        "library_changes_uncommitted": bool(_git("status", "--porcelain", "--", "aioiam")),
    }
