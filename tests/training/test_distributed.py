"""Runs over two CPU processes (torchrun, gloo): the same masks as one process, ranks in sync."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunekit.cli import main, without_option

WORKER = Path(__file__).with_name("distributed_worker.py")
# two scoring batches, one per rank: their sum across ranks is bitwise the one process's sum
# (with more, the order of the float additions differs, and a near tie could flip)
SETTINGS = ["--quick", "--score-batches", "2", "--iterations", "3"]


def torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", *args], capture_output=True, text=True,
                          timeout=timeout, env=environment)


def masks_of(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "checkpoint.pt", weights_only=True)["masks"]


def test_two_processes_give_the_masks_of_one(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    one, two = tmp_path / "one", tmp_path / "two"
    with pytest.raises(SystemExit) as exit_:
        main(["run", *SETTINGS, "--out", str(one)])
    assert exit_.value.code == 0
    scratch = tmp_path / "scratch"  # the ranks' temporary folders
    scratch.mkdir()
    launched = subprocess.run([sys.executable, "-m", "prunekit", "run", *SETTINGS, "--nproc",
                               "2", "--out", str(two)], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                "TMPDIR": str(scratch)})
    assert launched.returncode == 0, launched.stderr[-2000:]
    assert launched.stdout.count("task     metric") == 1  # only rank 0 prints
    single, pair = masks_of(one), masks_of(two)
    assert single.keys() == pair.keys()
    for name in single:
        assert torch.equal(single[name], pair[name]), name
    report = json.loads((two / "report.json").read_text())
    assert report["complete"] and report["config"]["score_batches"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "scratch", "two"]
    assert not list(scratch.glob("prunekit-rank*"))  # rank 1's folder is gone


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_every_rank_ends_with_the_same_weights_and_masks(tmp_path, mode):
    settings = {"mode": mode, "score_batches": 4, "iterations": 4, "out": str(tmp_path / "run")}
    if mode == "dynamic":  # a RigL update at steps 2 and 4, each rank on its own batch
        settings.update(update_interval=2, update_end=1.0)
    done = torchrun(str(WORKER), str(tmp_path), json.dumps(settings))
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2
    assert ranks[0]["model"] == ranks[1]["model"]
    assert ranks[0]["masks"] == ranks[1]["masks"]


def test_runs_that_cannot_be_shared_out_are_refused_before_launching(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--quick", "--nproc", "2", "--mode", "iterative", "--scorer", "taylor",
              "--params-ratio", "0.5", "--out", str(tmp_path / "run")])
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("prunekit: error: ") and "one process" in error
    assert "\n" not in error
    assert not (tmp_path / "run").exists()


def test_nproc_and_compare_under_torchrun_are_refused(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--quick", "--nproc", "2", "--out", str(tmp_path / "run")])
    assert exit_.value.code == 2
    assert "under torchrun leave it out" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "--quick", "--methods", "snip", "--out", str(tmp_path / "cmp")])
    assert exit_.value.code == 2
    assert "compare runs in one process" in capsys.readouterr().err


def test_the_launch_drops_nproc_in_either_spelling():
    assert without_option(["run", "--nproc", "2", "--quick"], "--nproc") == ["run", "--quick"]
    assert without_option(["run", "--nproc=2", "--out", "x"], "--nproc") == ["run", "--out", "x"]


def test_a_killed_two_process_run_resumes_to_the_same_end(tmp_path):
    settings = {"mode": "dynamic", "score_batches": 4, "iterations": 6, "update_interval": 2,
                "update_end": 1.0, "checkpoint_every": 2}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir()
    killed.mkdir()
    done = torchrun(str(WORKER), str(whole), json.dumps({**settings, "out": str(whole / "run")}))
    assert done.returncode == 0, done.stderr[-3000:]
    dying = {**settings, "out": str(killed / "run"), "die_after_checkpoint": 2}
    assert torchrun(str(WORKER), str(killed), json.dumps(dying)).returncode != 0
    assert (killed / "run" / "resume.pt").is_file() and not list(killed.glob("rank*.json"))
    resumed = torchrun(str(WORKER), str(killed),
                       json.dumps({"out": str(killed / "run"), "resume": True}))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for rank in (0, 1):
        expected = json.loads((whole / f"rank{rank}.json").read_text())
        assert json.loads((killed / f"rank{rank}.json").read_text()) == expected
