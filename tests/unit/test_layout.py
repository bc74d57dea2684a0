"""The state and model packages load without Faust, aiokafka or aiohttp (the import-linter contracts
in pyproject.toml say the same statically; this checks what an import really pulls in)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter: imports tables, app.engine (every submodule of both) and app.config.spec,
# then prints the loaded modules of the forbidden distributions, one per line.
PROBE = """
import importlib, pkgutil, sys
import tables, app.engine, app.config.spec
for package in (tables, app.engine):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)
for name in sorted(sys.modules):
    if name.split(".")[0] in ("faust", "aiokafka", "aiohttp"):
        print(name)
"""


def test_state_and_model_packages_import_no_faust_kafka_or_http(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYDRANT_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    offenders = done.stdout.split()
    print("\n".join(offenders))
    assert not offenders, f"{len(offenders)} modules of faust/aiokafka/aiohttp loaded: {', '.join(offenders)}"
