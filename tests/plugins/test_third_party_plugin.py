"""A third-party plugin package, installed with pip, is found, listed, checked, run and recorded.

The package in examples/prunekit-example-plugin is the template shown in docs/plugins.md,
installed as its users would (tests/plugin_packages.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from plugin_packages import install, prunekit as run_prunekit

PACKAGE = Path(__file__).parents[2] / "examples" / "prunekit-example-plugin"
DISTRIBUTION = "prunekit-example-plugin"
VERSION = "0.2.0"
METHODS = [("scorer", "example-synflow"), ("scorer", "example-magnitude"),
           ("arbiter", "example-weighted-vote"), ("metric", "example-dice")]
AUTOLOAD_SWITCH = "PRUNEKIT_DISABLE_PLUGIN_AUTOLOAD"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example plugin installed into a fresh folder (pip runs once for this module)."""
    return install(PACKAGE, tmp_path_factory.mktemp("third_party"))


def prunekit(site: Path, cwd: Path, *args: str, autoload: bool = True):
    return run_prunekit(site, cwd, *args, env={} if autoload else {AUTOLOAD_SWITCH: "1"})


def listed(site: Path, cwd: Path, autoload: bool = True) -> dict[tuple[str, str], dict]:
    result = prunekit(site, cwd, "plugins", "--json", autoload=autoload)
    assert result.returncode == 0, result.stderr
    return {(e["kind"], e["name"]): e for e in json.loads(result.stdout)}


def test_plugins_lists_the_third_party_methods(site, tmp_path):
    entries = listed(site, tmp_path)
    for kind, name in METHODS:
        entry = entries[(kind, name)]
        assert entry["distribution"] == DISTRIBUTION
        assert entry["version"] == VERSION
        assert entry["plugin"] == "example"
        assert entry["description"]
    assert entries[("scorer", "snip")]["distribution"] == "prunekit"  # built-ins still there


def saved_sparsity(out: Path) -> float:
    """The share of zeros in the saved weights of every masked tensor."""
    import torch

    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    zeros = sum(int((checkpoint["model"][name] == 0).sum()) for name in checkpoint["masks"])
    return zeros / sum(checkpoint["model"][name].numel() for name in checkpoint["masks"])


def completed_run(site: Path, tmp_path: Path, *args: str) -> dict:
    """A quick run with ``args``: it completes at the requested 0.9, as the saved weights say."""
    out = tmp_path / "run"
    result = prunekit(site, tmp_path, "run", "--quick", "--out", str(out), "--no-progress", *args)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["complete"] is True
    assert report["sparsity"]["achieved"] == pytest.approx(0.9, abs=0.005)
    assert saved_sparsity(out) == pytest.approx(report["sparsity"]["achieved"], abs=1e-9)
    return report


def test_run_with_the_third_party_scorer(site, tmp_path):
    report = completed_run(site, tmp_path, "--scorer", "example-magnitude")
    assert report["plugins"]["scorer"] == {"name": "example-magnitude",
                                           "distribution": DISTRIBUTION, "version": VERSION}


def test_synflow_runs_its_declared_rounds_without_data(site, tmp_path):
    report = completed_run(site, tmp_path, "--scorer", "example-synflow")
    assert report["plugins"]["scorer"]["name"] == "example-synflow"
    assert "scoring" in report["timings"]


def test_weighted_vote_arbiter_and_dice_metric_in_a_run(site, tmp_path):
    report = completed_run(site, tmp_path, "--arbiter", "example-weighted-vote",
                           "--metric", "example-dice,iou")
    assert report["plugins"]["arbiter"]["distribution"] == DISTRIBUTION
    assert report["plugins"]["metric:example-dice"]["version"] == VERSION
    dice = report["task_overlap"]["example-dice"]
    assert set(dice) == {"seg/depth", "seg/normal", "depth/normal"}
    assert all(0.0 < value < 1.0 for value in dice.values())


@pytest.mark.parametrize("kind,name", METHODS)
def test_every_example_method_passes_the_plugin_check(site, tmp_path, kind, name):
    result = prunekit(site, tmp_path, "plugins", "check", name)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"checking {kind} {name!r} ({DISTRIBUTION} {VERSION})"
    assert lines[-1].endswith(" passed, 0 failed") and not lines[-1].startswith("0 passed")


def test_plugin_module_loaded_with_p_without_installing(tmp_path):
    """-p MODULE: the example's module straight from its folder, autoloading off."""
    env = {**os.environ, "PYTHONPATH": str(PACKAGE), AUTOLOAD_SWITCH: "1"}
    result = subprocess.run([sys.executable, "-m", "prunekit", "-p", "prunekit_example_plugin",
                             "plugins", "--json"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    entries = {(e["kind"], e["name"]): e for e in json.loads(result.stdout)}
    assert entries[("metric", "example-dice")]["plugin"] == "prunekit_example_plugin"
    assert entries[("metric", "example-dice")]["version"] == "not installed"


def test_autoload_switch_hides_the_third_party_plugin(site, tmp_path):
    entries = listed(site, tmp_path, autoload=False)
    assert not [e for e in entries.values() if e["distribution"] == DISTRIBUTION]
    assert ("scorer", "example-magnitude") not in entries
    assert ("scorer", "snip") in entries

    out = tmp_path / "run"
    result = prunekit(site, tmp_path, "run", "--quick", "--scorer", "example-magnitude",
                      "--out", str(out), "--no-progress", autoload=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "unknown scorer" in lines[0] and "'example-magnitude'" in lines[0]
