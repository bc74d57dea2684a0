"""Schemathesis (PyPI) over a running worker's /openapi.json: the project's settings, a fixed seed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.worker import REPO


def run_schemathesis(url: str, tmp_path: Path, *options: str) -> None:
    """Run schemathesis on ``url``/openapi.json with tests/schemathesis.toml and ``options``
    (examples, checks, filters); fail with its report unless every check passed."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(REPO / "tests" / "schemathesis.toml"),
            "run",
            f"{url}/openapi.json",
            *options,
            "--seed",
            "20261122",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
