"""Pinned behaviour: the masks (a hash per tensor), sparsity and metrics of one short run per
path through ``prunekit run``, recorded so that a refactoring can show it changed nothing.

    python tests/pinned/runs.py record          # write tests/pinned/runs.json (quick runs)
    python tests/pinned/runs.py record --full   # and the default run of `make run` (~80 s)
    python tests/pinned/runs.py check [--full]  # run them again and list every difference

tests/test_pinned_runs.py checks the quick runs in the suite. The figures are of one machine
kind (float rounding in the CPU kernels differs elsewhere): record again, in its own commit,
when a change of behaviour is intended, and say why.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import tempfile
from pathlib import Path

import torch

RECORD = Path(__file__).with_name("runs.json")
QUICK = ("--quick", "--no-progress")
# one short run per path a run can take (docs/architecture.md)
RUNS: dict[str, tuple[str, ...]] = {
    "static": QUICK,
    "dense": QUICK + ("--dense",),
    "pretrained": QUICK + ("--mode", "pretrained"),
    "dynamic": QUICK + ("--mode", "dynamic"),
    "iterative": QUICK + ("--mode", "iterative"),
    "iterative-rewind": QUICK + ("--mode", "iterative", "--rewind"),
    "learned-thresholds": QUICK + ("--thresholder", "soft-threshold"),
    "structured": QUICK + ("--mode", "iterative", "--scorer", "taylor"),
    "structured-retrain": QUICK + ("--mode", "iterative", "--scorer", "cosprune",
                                   "--retrain-from-scratch", "--lr", "2e-3,1e-3"),
    "adaptive-weights": QUICK + ("--task-weighting", "adaptive", "--window", "2"),
    "joint-snip-layer": QUICK + ("--scorer", "snip", "--scope", "layer"),
}
FULL_RUNS = {"make-run": ("--no-progress",)}
METRIC_TOLERANCE = 1e-6  # relative; masks must match exactly
THREADS = 2  # float sums depend on how work is split: the same split on every machine


def fingerprint(out_dir: Path) -> dict:
    """What a run decided: each mask's hash, the measured sparsity and the metrics."""
    report = json.loads((out_dir / "report.json").read_text())
    checkpoint = torch.load(out_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    return {
        "masks": {name: hashlib.sha256(mask.numpy().tobytes()).hexdigest()[:16]
                  for name, mask in checkpoint["masks"].items()},
        "sparsity": report["sparsity"]["achieved"],
        "metrics": report["metrics"],
    }


def run(args: tuple[str, ...]) -> dict:
    from prunekit.cli import main

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "run"
        try:
            main(["run", *args, "--out", str(out)])
        except SystemExit as exit_:
            if exit_.code:
                raise RuntimeError(f"prunekit run {' '.join(args)} exited {exit_.code}")
        return fingerprint(out)


def differences(expected: dict, got: dict, path: str = "") -> list[str]:
    """Every place where ``got`` differs from ``expected`` (numbers within the tolerance)."""
    if isinstance(expected, dict) and isinstance(got, dict):
        keys = list(expected) + [k for k in got if k not in expected]
        return [d for k in keys
                for d in differences(expected.get(k), got.get(k), f"{path}.{k}" if path else k)]
    if isinstance(expected, float) and isinstance(got, float):
        if math.isclose(expected, got, rel_tol=METRIC_TOLERANCE, abs_tol=1e-12):
            return []
    elif expected == got:
        return []
    return [f"{path}: recorded {expected!r}, now {got!r}"]


def main(argv: list[str]) -> int:
    torch.set_num_threads(THREADS)
    command, full = argv[0] if argv else "check", "--full" in argv
    runs = {**RUNS, **(FULL_RUNS if full else {})}
    if command == "record":
        recorded = json.loads(RECORD.read_text()) if RECORD.exists() else {}
        recorded.update({name: run(args) for name, args in runs.items()})
        RECORD.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
        print(f"recorded {', '.join(runs)} in {RECORD}")
        return 0
    recorded = json.loads(RECORD.read_text())
    found = [d for name, args in runs.items()
             for d in differences(recorded[name], run(args), name)]
    print("\n".join(found) or f"unchanged: {', '.join(runs)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
