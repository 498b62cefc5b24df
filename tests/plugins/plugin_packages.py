"""Installing a plugin package the way its users do, and running prunekit beside it.

The package is copied to a temporary folder (so building leaves nothing in the repository),
installed there with ``pip install --target`` and put on PYTHONPATH of CLI subprocesses only.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# what the CLI subprocesses must not inherit from the test process or the user's shell
ISOLATED = ("PRUNEKIT_DISABLE_PLUGIN_AUTOLOAD", "PRUNEKIT_PLUGINS", "PRUNEKIT_DEBUG")


def install(package: Path, root: Path) -> Path:
    """``package`` pip-installed into ``root/site``; returns that folder."""
    source = root / package.name
    shutil.copytree(package, source, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    target = root / "site"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps",
                             "--no-build-isolation", "--disable-pip-version-check",
                             "--target", str(target), str(source)],
                            cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, f"pip failed:\n{result.stdout}\n{result.stderr}"
    return target


def prunekit(site: Path, cwd: Path, *args: str,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m prunekit ARGS`` with ``site`` on the path, autoloading on, plus ``env``."""
    environment = {k: v for k, v in os.environ.items() if k not in ISOLATED}
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(site), environment.get("PYTHONPATH")]))
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "prunekit", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=600)
