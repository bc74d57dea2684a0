"""Debian tools the tests drive (prometheus, promtool, docker-compose, chromium): .ci/run installs them."""

from __future__ import annotations

import os
import shutil

import pytest

PACKAGES = {
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "docker-compose": "docker-compose",
    "chromium": "chromium",
}


def tool(name: str) -> str:
    """The tool's path. Missing in CI is a failure (.ci/run installs it); elsewhere a skip that
    says how to install it."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing: .ci/run installs it with apt-get")
        pytest.skip(f"{name} is not installed here (apt-get install -y {PACKAGES.get(name, name)})")
    return path
