"""One short run per path through ``prunekit run`` decides what it recorded (tests/pinned).

A refactoring must leave every mask, sparsity and metric as recorded; an intended change of
behaviour records them again (``python tests/pinned/runs.py record``) in its own commit.
"""
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "pinned" / "runs.py"


def test_quick_runs_of_every_mode_are_unchanged():
    env = {**os.environ, "PRUNEKIT_DISABLE_PLUGIN_AUTOLOAD": "1"}
    env.pop("OMP_NUM_THREADS", None)
    result = subprocess.run([sys.executable, str(SCRIPT), "check"], capture_output=True,
                            text=True, env=env, timeout=900)
    last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, (
        result.stdout[-4000:] + result.stderr[-2000:] + "\n(differences on a machine of "
        "another kind, before any change: record there first, in its own commit)")
    assert last.startswith("unchanged: static, dense, pretrained, dynamic, iterative"), last
