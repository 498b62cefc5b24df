"""``prunekit run --pattern N:M`` end to end: every covered tensor of the saved checkpoint holds
the pattern in every mode that takes one, the report lists covered and uncovered tensors and
what the merge kept of each task's choice, and the paths that cannot keep a pattern refuse it."""
import json

import pytest
import torch

from prunekit.core.semi_structured import coverage, kept_per_group
from prunekit.models import build_model, model_layout

from helpers import invoke

MODES = [[], ["--mode", "pretrained"], ["--mode", "iterative"], ["--mode", "dynamic"],
         ["--mode", "iterative", "--rewind"], ["--arbiter", "and"], ["--scorer", "snip"]]


def pattern_run(capsys, out_dir, *extra):
    code, out, err = invoke(capsys, "run", "--quick", "--no-progress", "--pattern", "2:4",
                            "--out", str(out_dir), *extra)
    assert code == 0, err
    report = json.loads((out_dir / "report.json").read_text())
    return report, torch.load(out_dir / "checkpoint.pt", weights_only=True), out, err


def saved_layout(checkpoint):
    config = checkpoint["config"]
    model = build_model(config["model"], config["task_channels"], config["width"])
    return model_layout(model).for_tasks(list(config["task_channels"])).resolve(model)


@pytest.mark.parametrize("extra", MODES, ids=lambda e: " ".join(e) or "static")
def test_every_covered_tensor_of_the_checkpoint_holds_the_pattern(capsys, tmp_path, extra):
    report, checkpoint, out, _ = pattern_run(capsys, tmp_path / "run", *extra)
    layout = saved_layout(checkpoint)
    covered, uncovered = coverage(layout.params, 4)
    assert report["pattern"]["covered"] == covered
    assert report["pattern"]["uncovered"] == uncovered
    assert "backbone.conv1.weight" in uncovered  # 3 input channels, 7x7: 147 columns
    shared = set(layout.shared)
    for name in covered:
        weights, mask = checkpoint["model"][name], checkpoint["masks"][name]
        assert (kept_per_group(weights, 4) <= 2).all(), name  # the weights as saved
        exact = not (name in shared and "and" in extra)  # an intersection may keep fewer
        assert ((kept_per_group(mask, 4) == 2) if exact
                else (kept_per_group(mask, 4) <= 2)).all(), name
    for name in uncovered:  # --uncovered dense by default
        assert checkpoint["masks"][name].all(), name
    assert report["sparsity"]["requested"] == 0.5
    assert "pattern   2:4 in" in out and "uncovered (dense): backbone.conv1.weight" in out


def test_the_report_says_how_much_of_each_tasks_choice_the_merge_kept(capsys, tmp_path):
    report, _, _, _ = pattern_run(capsys, tmp_path / "or")
    kept = report["pattern"]["task_choice_kept"]
    assert set(kept) == {"seg", "depth", "normal"}
    assert all(0.5 <= share < 1.0 for share in kept.values())  # OR keeps N of the union


def test_uncovered_tensors_can_be_pruned_without_the_pattern(capsys, tmp_path):
    report, checkpoint, _, _ = pattern_run(capsys, tmp_path / "run", "--uncovered",
                                           "unstructured")
    mask = checkpoint["masks"]["backbone.conv1.weight"]
    assert 0.4 < float(mask.float().mean()) < 0.6  # merged over tasks: about half kept
    assert report["pattern"]["uncovered_policy"] == "unstructured"
    assert abs(report["sparsity"]["masked"] - 0.5) < 0.01


def test_sparsity_is_ignored_with_a_warning(capsys, tmp_path):
    report, _, _, err = pattern_run(capsys, tmp_path / "run", "--sparsity", "0.9")
    assert "--sparsity does not apply with --pattern 2:4" in err
    assert report["sparsity"]["requested"] == 0.5


@pytest.mark.parametrize("extra, message", [
    (["--pattern", "3:2"], "--pattern N:M needs 0 < N < M, got 3:2"),
    (["--pattern", "two:four"], "--pattern must be N:M such as 2:4"),
    (["--pattern", "2:4", "--dense"], "the dense path has none"),
    (["--pattern", "2:4", "--thresholder", "soft-threshold"], "the learned path has none"),
    (["--pattern", "2:4", "--scorer", "taylor", "--mode", "iterative"],
     "the structured path has none"),
    (["--pattern", "2:4", "--uncovered", "sparse"], "unknown policy"),
])
def test_what_cannot_keep_a_pattern_is_one_error_line(capsys, tmp_path, extra, message):
    code, _, err = invoke(capsys, "run", "--quick", "--no-progress", "--out",
                          str(tmp_path / "run"), *extra)
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
