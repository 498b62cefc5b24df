"""Resumable runs: a run killed after a checkpoint and resumed ends as one never killed."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from prunekit import pipeline
from prunekit.pipeline.config import QUICK, RunConfig
from prunekit.pipeline.steps import PhaseCheckpoints
from prunekit.training.resume import RESUME_FILE


class Killed(BaseException):
    """Stands for the process dying right after a checkpoint was written."""


def kill_after_checkpoint(monkeypatch, number: int):
    """Make the ``number``-th checkpoint write (1-based) be the run's last act."""
    written = []
    original = PhaseCheckpoints.write

    def write(self, state):
        original(self, state)
        written.append(state.step)
        if len(written) == number:
            raise Killed()
    monkeypatch.setattr(PhaseCheckpoints, "write", write)
    return written


def final_state(folder):
    checkpoint = torch.load(folder / "checkpoint.pt", weights_only=True)
    report = json.loads((folder / "report.json").read_text())
    return checkpoint, report


def assert_same_run(resumed, uninterrupted):
    (checkpoint, report), (expected, expected_report) = resumed, uninterrupted
    assert checkpoint["masks"].keys() == expected["masks"].keys()
    for name, mask in expected["masks"].items():
        assert torch.equal(checkpoint["masks"][name], mask), name
    for name, tensor in expected["model"].items():
        assert torch.equal(checkpoint["model"][name], tensor), name
    assert report["metrics"] == expected_report["metrics"]
    assert report["training"] == expected_report["training"]
    assert report["complete"] is True


SETTINGS = {
    "static": dict(iterations=6),
    "pretrained": dict(mode="pretrained", iterations=4, finetune_iterations=4),
    "iterative": dict(mode="iterative", iterations=2, finetune_iterations=4, prune_rounds=2),
    "iterative-rewind": dict(mode="iterative", iterations=2, finetune_iterations=4,
                             prune_rounds=2, rewind=True),
    "dynamic": dict(mode="dynamic", iterations=6, update_interval=2, update_end=1.0),
    "adaptive weights": dict(iterations=6, task_weighting="adaptive", window=2),
    "step schedule": dict(mode="pretrained", iterations=4, finetune_iterations=4,
                          lr_schedule="step", lr_step_every=3, lr_step_factor=0.5,
                          weight_decay=1e-3, task_loss_weights=("seg=1", "normal=20"),
                          score_batch_size=3),
    "dense": dict(iterations=6, dense=True),
    "loading workers": dict(iterations=6, workers=1),
    "augmented": dict(iterations=6, workers=1, augment=True),
    "2:4 iterative": dict(mode="iterative", iterations=2, finetune_iterations=4, prune_rounds=2,
                          pattern="2:4"),
    "2:4 dynamic": dict(mode="dynamic", iterations=6, update_interval=2, update_end=1.0,
                        pattern="2:4"),
}
# (settings, which checkpoint the kill follows): checkpoints come every 2 steps of each phase
CASES = [("static", 2), ("pretrained", 1), ("pretrained", 3), ("iterative", 4),
         ("iterative-rewind", 3), ("dynamic", 2), ("adaptive weights", 1),
         ("step schedule", 3), ("dense", 2),
         ("loading workers", 2), ("augmented", 2), ("2:4 iterative", 3), ("2:4 dynamic", 2)]


@pytest.mark.parametrize("name, kill_at", CASES, ids=[f"{n}, kill {k}" for n, k in CASES])
def test_a_killed_and_resumed_run_ends_as_one_never_killed(tmp_path, monkeypatch, name, kill_at):
    settings = {**QUICK, "checkpoint_every": 2, "score_batches": 2, **SETTINGS[name]}
    pipeline.run(RunConfig(out=str(tmp_path / "whole"), **settings))
    written = kill_after_checkpoint(monkeypatch, kill_at)
    with pytest.raises(Killed):
        pipeline.run(RunConfig(out=str(tmp_path / "killed"), **settings))
    assert len(written) == kill_at
    killed = tmp_path / "killed"
    assert (killed / RESUME_FILE).is_file() and not (killed / "checkpoint.pt").exists()
    assert json.loads((killed / "report.json").read_text())["complete"] is False
    monkeypatch.undo()
    pipeline.resume_run(killed)
    assert not (killed / RESUME_FILE).exists()  # a finished run needs none
    assert_same_run(final_state(killed), final_state(tmp_path / "whole"))


def test_sigterm_stops_with_a_checkpoint_and_the_run_resumes(tmp_path):
    folder = tmp_path / "run"
    command = [sys.executable, "-m", "prunekit", "run", "--quick", "--iterations", "100",
               "--checkpoint-every", "2", "--out", str(folder)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=environment)
    deadline = time.monotonic() + 120
    while not (folder / RESUME_FILE).exists() and process.poll() is None:  # training has begun
        assert time.monotonic() < deadline, "no checkpoint within two minutes"
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prunekit: stopped by SIGTERM after step")
    assert f"prunekit run --resume {folder}" in lines[0]
    report = json.loads((folder / "report.json").read_text())
    assert report["complete"] is False and report["stopped"] is True
    assert (folder / RESUME_FILE).is_file() and not (folder / "checkpoint.pt").exists()
    resumed = subprocess.run([sys.executable, "-m", "prunekit", "run", "--resume", str(folder)],
                             capture_output=True, text=True, env=environment, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((folder / "report.json").read_text())["complete"] is True
    assert (folder / "checkpoint.pt").is_file() and not (folder / RESUME_FILE).exists()
