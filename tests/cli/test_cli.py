"""The command line end to end (quick mode) and its handling of bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunekit import load_checkpoint
from prunekit.cli import main
from prunekit.models import build_model
from helpers import invoke, quick_run, write_nyuv2

TASKS = ("seg", "depth", "normal")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A dense quick run and a pruned quick run with Delta_T against it."""
    root = tmp_path_factory.mktemp("runs")
    results = {}
    for name, extra in (("dense", ["--dense"]),
                        ("pruned", ["--baseline", str(root / "dense")])):
        with pytest.raises(SystemExit) as exit_:
            main(["run", "--quick", "--no-progress", "--out", str(root / name), *extra])
        assert exit_.value.code == 0
        results[name] = root / name
    return results


def test_quick_run_writes_a_complete_report(runs):
    report = json.loads((runs["pruned"] / "report.json").read_text())
    assert report["complete"] is True
    for key in ("config", "plugins", "sparsity", "metrics", "timings"):
        assert key in report
    assert report["config"]["scorer"] == "disparse-snip" and report["config"]["iterations"] == 4
    assert {role: p["name"] for role, p in report["plugins"].items()} == {
        "scorer": "disparse-snip", "thresholder": "topk", "arbiter": "or", "metric:iou": "iou"}
    assert all(p["version"] and p["distribution"] == "prunekit"
               for p in report["plugins"].values())
    sparsity = report["sparsity"]
    assert sparsity["requested"] == 0.9
    assert abs(sparsity["achieved"] - 0.9) <= 0.005
    assert set(sparsity["heads"]) == set(TASKS) and 0 < sparsity["shared"] < 1
    assert len(sparsity["layers"]) > 40 and all(0 <= v <= 1 for v in sparsity["layers"].values())
    assert set(report["metrics"]) == set(TASKS)
    assert set(report["metrics"]["seg"]) == {"miou", "pixel_acc"}
    assert {"setup", "scoring", "pruning", "training", "evaluation", "total"} <= set(
        report["timings"])
    assert set(report["task_overlap"]["iou"]) == {"seg/depth", "seg/normal", "depth/normal"}


def test_delta_t_against_the_dense_baseline(runs):
    dense = json.loads((runs["dense"] / "report.json").read_text())
    assert dense["sparsity"]["achieved"] == 0.0 and "scorer" not in dense["plugins"]
    pruned = json.loads((runs["pruned"] / "report.json").read_text())
    delta = pruned["delta_t"]
    assert not any("baseline" in warning for warning in pruned["warnings"])  # same data
    assert set(delta["per_task"]) == set(TASKS)
    assert delta["overall"] == pytest.approx(sum(delta["per_task"].values()) / 3)


def test_checkpoint_loads_weights_only_into_a_fresh_model(runs):
    path = runs["pruned"] / "checkpoint.pt"
    checkpoint = torch.load(path, weights_only=True)
    assert set(checkpoint) >= {"model", "masks"}
    fresh = build_model("deeplab-resnet34", {"seg": 13, "depth": 1, "normal": 3}, width=0.125)
    fresh.load_state_dict(checkpoint["model"], strict=True)
    weights = dict(fresh.named_parameters())
    for name, mask in checkpoint["masks"].items():
        assert mask.dtype == torch.bool and mask.shape == weights[name].shape
        assert (weights[name][~mask] == 0).all(), name
    model, masks = load_checkpoint(path)
    assert masks.keys() == checkpoint["masks"].keys()


def test_summary_table_on_stdout(capsys, tmp_path):
    _, out = quick_run(capsys, tmp_path / "r", "--tasks", "seg,depth", "--sparsity", "0.5")
    assert "pixel_acc" in out and "abs_err" in out and "mean_angle" not in out
    assert "requested 0.500" in out and "training" in out


def test_joint_snip_run(capsys, tmp_path):
    report, _ = quick_run(capsys, tmp_path / "r", "--scorer", "snip", "--sparsity", "0.7")
    assert "arbiter" not in report["plugins"]
    assert abs(report["sparsity"]["achieved"] - 0.7) <= 0.005


def test_version_and_plugins(capsys):
    code, out, _ = invoke(capsys, "--version")
    assert code == 0 and "prunekit, version" in out
    code, out, _ = invoke(capsys, "plugins")
    assert code == 0 and "disparse-snip" in out and "majority" in out and "prunekit" in out
    code, out, _ = invoke(capsys, "plugins", "--kind", "arbiter", "--json")
    listed = json.loads(out)
    assert {p["name"] for p in listed} == {"or", "and", "majority"}
    assert all(p["kind"] == "arbiter" and p["distribution"] == "prunekit" for p in listed)


BAD_INPUTS = {
    "sparsity zero": (["--sparsity", "0"], "sparsity must be strictly between 0 and 1"),
    "sparsity one": (["--sparsity", "1"], "sparsity must be strictly between 0 and 1"),
    "sparsity above one": (["--sparsity", "1.5"], "strictly between 0 and 1"),
    "unknown scorer": (["--scorer", "disparse-snp"], "did you mean 'disparse-snip'"),
    "unknown arbiter": (["--arbiter", "xor"], "unknown arbiter 'xor'"),
    "unknown task": (["--tasks", "seg,edges"], "unknown task 'edges'"),
    "majority with two tasks": (["--arbiter", "majority", "--tasks", "seg,depth"],
                                "needs at least 3 tasks"),
    "missing data path": (["--dataset", "nyuv2", "--data-root", "/nonexistent/nyu"],
                          "does not exist"),
    "unknown device": (["--device", "tpu"], "device"),
    "bad image size": (["--image-size", "big"], "HEIGHTxWIDTH"),
    "unknown option": (["--sparsty", "0.5"], "No such option"),
    "negative iterations": (["--iterations", "-1"], "iterations must be >= 0"),
    "missing baseline": (["--baseline", "/nonexistent/run"], "has no report.json"),
    "unknown mode": (["--mode", "statc"], "did you mean 'static'"),
    "dynamic without a grow score": (["--mode", "dynamic", "--scorer", "snip"],
                                     "use one of: disparse-rigl, rigl"),
    "rewind outside iterative": (["--rewind"], "--rewind is for --mode iterative"),
    "init checkpoint in static mode": (["--init-checkpoint", "x.pt"],
                                       "--init-checkpoint is for --mode pretrained or iterative"),
    "missing init checkpoint": (["--mode", "pretrained", "--init-checkpoint", "/nonexistent.pt"],
                                "does not exist"),
    "scope erk cannot take": (["--thresholder", "erk", "--scope", "global"],
                              "supports scope layer, not 'global'"),
    "unknown scope": (["--scope", "row"], "supports scope global or layer, not 'row'"),
    "dense with a mode": (["--dense", "--mode", "pretrained"], "takes no --mode pretrained"),
    "update end above one": (["--mode", "dynamic", "--update-end", "1.5"], "update end"),
    "zero prune rounds": (["--mode", "iterative", "--prune-rounds", "0"],
                          "prune rounds must be positive"),
    "negative finetune iterations": (["--mode", "pretrained", "--finetune-iterations", "-2"],
                                     "finetune iterations must be >= 0"),
    "negative weight decay": (["--weight-decay", "-1e-4"], "weight decay must be >= 0"),
    "unknown lr schedule": (["--lr-schedule", "linear"], "unknown lr schedule 'linear'"),
    "step schedule without its step": (["--lr-schedule", "step", "--lr-step-factor", "0.5"],
                                       "--lr-schedule step needs --lr-step-every N"),
    "zero lr step": (["--lr-schedule", "step", "--lr-step-every", "0", "--lr-step-factor",
                      "0.5"], "lr step every must be positive"),
    "loss weight of an unknown task": (["--task-loss-weights", "seg=1,edges=2"],
                                       "expected TASK=WEIGHT with TASK one of seg,depth,normal, "
                                       "got 'edges=2'"),
    "zero loss weight": (["--task-loss-weights", "normal=0"],
                         "the weight of normal must be a positive number, got '0'"),
    "negative loss weight": (["--task-loss-weights", "seg=-1"], "must be a positive number"),
    "loss weight without a task": (["--task-loss-weights", "20"], "got '20'"),
    "repeated loss weight": (["--task-loss-weights", "seg=1,seg=2"], "seg is given twice"),
    "zero score batch size": (["--score-batch-size", "0"],
                              "score batch size must be positive"),
}


@pytest.mark.parametrize("args,message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_one_line_exit_2_and_no_outputs(capsys, tmp_path, args, message):
    out_dir = tmp_path / "run"
    code, _, err = invoke(capsys, "run", "--quick", "--no-progress", "--out", str(out_dir), *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prunekit: error:"), err
    assert message in lines[0]
    assert not (out_dir / "checkpoint.pt").exists() and not (out_dir / "report.json").exists()


def test_cuda_without_a_gpu_is_a_clear_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = invoke(capsys, "run", "--quick", "--device", "cuda", "--out",
                          str(tmp_path / "r"))
    assert code == 2 and "no usable CUDA GPU" in err and len(err.strip().splitlines()) == 1


def test_nan_loss_in_training_leaves_an_incomplete_report_and_no_checkpoint(capsys, tmp_path):
    out_dir = tmp_path / "run"
    code, _, err = invoke(capsys, "run", "--quick", "--no-progress", "--lr", "1e30", "--out",
                          str(out_dir))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "loss is nan during training" in err
    report = json.loads((out_dir / "report.json").read_text())
    assert report["complete"] is False and "nan" in report["error"]
    assert not (out_dir / "checkpoint.pt").exists()
    assert not [p for p in out_dir.iterdir() if p.name.endswith(".tmp")]


def test_installed_script_reports_errors_without_traceback(tmp_path):
    script = Path(sys.executable).with_name("prunekit")
    env = {**os.environ, "PRUNEKIT_DISABLE_PLUGIN_AUTOLOAD": "1"}
    result = subprocess.run([str(script), "run", "--sparsity", "2", "--out", str(tmp_path)],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == ("prunekit: error: sparsity must be strictly between 0 and 1, "
                                     "got 2.0")
    result = subprocess.run([sys.executable, "-m", "prunekit", "--version"], capture_output=True,
                            text=True, env=env)
    assert result.returncode == 0 and "prunekit, version" in result.stdout


def test_default_output_folder_names_the_method(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in (["--scorer", "disparse-snip", "--arbiter", "and"], ["--scorer", "snip"]):
        code, out, err = invoke(capsys, "run", "--quick", "--no-progress", *args)
        assert code == 0, err
    folders = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(folders) == 2
    assert any(f.endswith("-disparse-snip-and") for f in folders)
    assert any(f.endswith("-snip") and "disparse" not in f for f in folders)
    for folder in folders:
        assert json.loads((tmp_path / "runs" / folder / "report.json").read_text())["complete"]


def test_run_on_nyuv2_npy_files(capsys, tmp_path):

    write_nyuv2(tmp_path / "nyu", "train", 4, size=(24, 32))
    write_nyuv2(tmp_path / "nyu", "val", 2, size=(24, 32))
    report, _ = quick_run(capsys, tmp_path / "r", "--dataset", "nyuv2", "--data-root",
                          str(tmp_path / "nyu"))
    assert report["complete"] and report["config"]["dataset"] == "nyuv2"
    assert set(report["metrics"]) == set(TASKS)


def test_init_checkpoint_that_does_not_fit_the_model(capsys, tmp_path, runs):
    code, _, err = invoke(capsys, "run", "--quick", "--no-progress", "--mode", "pretrained",
                          "--init-checkpoint", str(runs["dense"] / "checkpoint.pt"),
                          "--width", "0.25", "--out", str(tmp_path / "r"))
    assert code == 2 and "does not fit this model" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_pretrained_run_from_a_dense_checkpoint(capsys, tmp_path, runs):
    report, _ = quick_run(capsys, tmp_path / "r", "--mode", "pretrained", "--init-checkpoint",
                          str(runs["dense"] / "checkpoint.pt"))
    assert [phase["phase"] for phase in report["training"]] == ["finetuning"]
    assert report["config"]["scorer"] == "disparse-gradflow"
    assert abs(report["sparsity"]["achieved"] - 0.9) <= 0.005


def test_gradflow_on_an_untrained_model_warns_once(capsys, tmp_path):
    code, _, err = invoke(capsys, "run", "--quick", "--no-progress", "--scorer", "gradflow",
                          "--out", str(tmp_path / "r"))
    assert code == 0
    warnings = [line for line in err.splitlines() if line.startswith("prunekit: warning:")]
    assert len(warnings) == 1 and "--mode pretrained" in warnings[0]
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["warnings"] == [warnings[0].removeprefix("prunekit: warning: ")]


def test_compare_runs_every_method_against_a_dense_baseline_per_seed(capsys, tmp_path):
    out_dir = tmp_path / "cmp"
    code, out, err = invoke(capsys, "compare", "--quick", "--no-progress", "--out", str(out_dir),
                            "--methods", "disparse-snip:or,random", "--seeds", "2")
    assert code == 0, err
    summary = json.loads((out_dir / "compare.json").read_text())
    assert list(summary["methods"]) == ["dense", "disparse-snip:or", "random"]
    assert summary["seeds"] == 2 and "[6/6] random, seed 1" in err
    for label in ("disparse-snip:or", "random"):
        row = summary["methods"][label]
        assert abs(row["sparsity"]["achieved"]["mean"] - 0.9) <= 0.005
        assert row["delta_t"]["overall"]["std"] is not None
        assert set(row["heads"]) == set(TASKS)
    random_runs = [json.loads((Path(p) / "report.json").read_text())
                   for p in summary["runs"]["random"]]
    assert [r["config"]["seed"] for r in random_runs] == [0, 1]
    assert all(r["config"]["baseline"].endswith(f"dense/seed{r['config']['seed']}")
               for r in random_runs)
    overall = [r["delta_t"]["overall"] for r in random_runs]
    assert summary["methods"]["random"]["delta_t"]["overall"]["mean"] == pytest.approx(
        sum(overall) / 2)
    table = (out_dir / "compare.md").read_text()
    assert table in out
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 4 and rows[2].startswith("| disparse-snip:or |") and " ± " in rows[2]


COMPARE_BAD_INPUTS = {
    "bad method syntax": ("snip::or", "is not SCORER[:ARBITER][@MODE]"),
    "unknown scorer": ("snip,disparse-snp:or", "did you mean 'disparse-snip'"),
    "unknown mode": ("snip@statc", "did you mean 'static'"),
    "repeated method": ("snip,snip", "methods repeat: snip"),
    "majority with two tasks": ("disparse-snip:majority", "needs at least 3 tasks"),
}


@pytest.mark.parametrize("methods,message", COMPARE_BAD_INPUTS.values(),
                         ids=COMPARE_BAD_INPUTS.keys())
def test_compare_checks_every_method_before_running_any(capsys, tmp_path, methods, message):
    out_dir = tmp_path / "cmp"
    code, _, err = invoke(capsys, "compare", "--quick", "--no-progress", "--out", str(out_dir),
                          "--methods", methods, "--tasks", "seg,depth")
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err
    assert not out_dir.exists()


def test_compare_gives_mode_options_only_to_their_modes(tmp_path):
    from prunekit.pipeline.compare import parse_methods, run_configs
    from prunekit.pipeline.config import RunConfig

    base = RunConfig(rewind=True, init_checkpoint="trained.pt")
    methods = parse_methods("snip,magnitude@iterative,disparse-gradflow:or@pretrained")
    configs = {label: config for label, _, config in run_configs(base, methods, [0], tmp_path)}
    assert [(c.rewind, c.init_checkpoint) for c in configs.values()] == [
        (False, None), (False, None), (True, "trained.pt"), (False, "trained.pt")]
    assert configs["dense"].dense and configs["dense"].mode == "static"


def test_options_of_another_mode_are_named_and_ignored(capsys, tmp_path):
    code, _, err = invoke(capsys, "run", "--quick", "--no-progress", "--prune-rounds", "5",
                          "--out", str(tmp_path / "r"))
    assert code == 0
    assert "prunekit: warning: --prune-rounds does not apply to --mode static with --thresholder topk; ignored" in err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["config"]["finetune_iterations"] is None  # static mode does not fine-tune


def test_dynamic_mode_that_would_never_update_is_refused(capsys, tmp_path):
    code, _, err = invoke(capsys, "run", "--quick", "--no-progress", "--mode", "dynamic",
                          "--update-interval", "3", "--out", str(tmp_path / "r"))
    assert code == 2 and "would update no mask" in err and not (tmp_path / "r").exists()


@pytest.mark.parametrize("make_bad", ["directory", "text", "not a state dict"])
def test_init_checkpoint_that_is_not_a_checkpoint(capsys, tmp_path, make_bad):
    path = tmp_path / "bad.pt"
    if make_bad == "directory":
        path.mkdir()
    elif make_bad == "text":
        path.write_text("hello")
    else:
        torch.save({"model": [1, 2]}, path)
    code, _, err = invoke(capsys, "run", "--quick", "--no-progress", "--mode", "pretrained",
                          "--init-checkpoint", str(path), "--out", str(tmp_path / "r"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "prunekit: error:" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", [["run"], ["compare", "--methods", "snip"]])
def test_out_that_is_an_existing_file(capsys, tmp_path, command):
    taken = tmp_path / "taken"
    taken.write_text("")
    code, _, err = invoke(capsys, *command, "--quick", "--no-progress", "--out", str(taken))
    assert code == 2 and "is an existing file" in err and len(err.strip().splitlines()) == 1


def test_compare_checks_the_init_checkpoint_before_running_anything(capsys, tmp_path):
    code, _, err = invoke(capsys, "compare", "--quick", "--no-progress", "--methods",
                          "gradflow@pretrained", "--init-checkpoint", "/nonexistent.pt",
                          "--out", str(tmp_path / "cmp"))
    assert code == 2 and "does not exist" in err and not (tmp_path / "cmp").exists()


def test_soft_threshold_learns_masks_while_training(capsys, tmp_path):
    report, _ = quick_run(capsys, tmp_path / "r", "--thresholder", "soft-threshold",
                          "--sparsity", "0.3", "--theta-init", "-3", "--theta-lr", "0.5")
    learned = report["soft_threshold"]
    assert learned["frozen_at_step"] is not None and len(learned["history"]) == 4
    assert set(learned["thresholds"]) == {"shared", *TASKS}
    assert set(report["plugins"]) == {"thresholder", "metric:iou"}  # nothing was scored
    assert report["sparsity"]["achieved"] >= 0.3
    assert (tmp_path / "r" / "sparsity.png").read_bytes().startswith(b"\x89PNG")
    model, masks = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    params = dict(model.named_parameters())
    assert all((params[name][~mask] == 0).all() for name, mask in masks.items())


def test_soft_threshold_that_does_not_reach_the_target_warns(capsys, tmp_path):
    code, _, err = invoke(capsys, "run", "--quick", "--no-progress", "--thresholder",
                          "soft-threshold", "--theta-init", "-30", "--out", str(tmp_path / "r"))
    assert code == 0 and "prunekit: warning: the soft thresholds reached sparsity 0.000" in err


def test_soft_threshold_outside_static_mode_is_refused(capsys, tmp_path):
    code, _, err = invoke(capsys, "run", "--quick", "--no-progress", "--thresholder",
                          "soft-threshold", "--mode", "pretrained", "--out", str(tmp_path / "r"))
    assert code == 2 and "use it with --mode static, not pretrained" in err


def test_threshold_options_without_a_learning_thresholder_are_ignored(capsys, tmp_path):
    code, _, err = invoke(capsys, "run", "--quick", "--no-progress", "--theta-lr", "0.3",
                          "--out", str(tmp_path / "r"))
    assert code == 0 and "--theta-lr does not apply to --mode static with --thresholder topk" in err


def test_soft_threshold_takes_no_layer_scope(capsys, tmp_path):
    code, _, err = invoke(capsys, "run", "--quick", "--no-progress", "--thresholder",
                          "soft-threshold", "--scope", "layer", "--out", str(tmp_path / "r"))
    assert code == 2 and "supports scope global, not 'layer'" in err


@pytest.mark.parametrize("change, warning", [
    (lambda report: report["config"].update(val_samples=64), "differs in --val-samples"),
    (lambda report: report.pop("data"), "has no 'data' record"),
])
def test_a_baseline_evaluated_on_other_data_is_warned_of(runs, tmp_path, capsys, change, warning):
    report = json.loads((runs["dense"] / "report.json").read_text())
    change(report)
    (tmp_path / "dense").mkdir()
    (tmp_path / "dense" / "report.json").write_text(json.dumps(report))
    pruned, _ = quick_run(capsys, tmp_path / "pruned", "--baseline", str(tmp_path / "dense"))
    assert [w for w in pruned["warnings"] if warning in w and "Delta_T" in w]
    assert "delta_t" in pruned


def test_no_compensate_reports_the_measured_miss_with_a_warning(capsys, tmp_path):
    out_dir = tmp_path / "run"
    report, _ = quick_run(capsys, out_dir, "--no-compensate")
    achieved = report["sparsity"]["achieved"]
    assert abs(achieved - 0.9) > 0.005  # merging each task's own 10% misses the target
    warning = [w for w in report["warnings"] if "--no-compensate" in w]
    assert warning and f"{report['sparsity']['masked']:.3f} sparse, 0.9 was requested" in warning[0]
    checkpoint = torch.load(out_dir / "checkpoint.pt", weights_only=True)
    zeros = sum(int((checkpoint["model"][n] == 0).sum()) for n in checkpoint["masks"])
    total = sum(m.numel() for m in checkpoint["masks"].values())
    assert achieved == zeros / total


def test_metric_option_puts_each_metric_in_the_report(capsys, tmp_path):
    report, _ = quick_run(capsys, tmp_path / "run", "--metric", "iou,mcss")
    assert set(report["task_overlap"]) == {"iou", "mcss"}
    assert set(report["plugins"]) >= {"metric:iou", "metric:mcss"}
    code, _, err = invoke(capsys, "run", "--quick", "--metric", "dice", "--out",
                          str(tmp_path / "bad"))
    assert code == 2 and "unknown metric 'dice'" in err and len(err.strip().splitlines()) == 1


def test_an_earlier_complete_run_stays_until_the_new_run_completes(capsys, tmp_path):
    out_dir = tmp_path / "run"
    quick_run(capsys, out_dir)
    earlier = {name: (out_dir / name).read_bytes() for name in ("report.json", "checkpoint.pt")}
    # a NaN loss after a checkpoint was written: the incomplete report goes beside the earlier
    code, _, err = invoke(capsys, "run", "--quick", "--no-progress", "--out", str(out_dir),
                          "--lr", "1e30", "--checkpoint-every", "1")
    assert code == 2 and "loss is nan during training" in err
    for name, content in earlier.items():
        assert (out_dir / name).read_bytes() == content, name
    incomplete = json.loads((out_dir / "report.incomplete.json").read_text())
    assert incomplete["complete"] is False and "nan" in incomplete["error"]
    report, _ = quick_run(capsys, out_dir, "--seed", "1")  # completes: replaces them
    assert report["config"]["seed"] == 1 and report["complete"] is True
    assert (out_dir / "checkpoint.pt").read_bytes() != earlier["checkpoint.pt"]
    assert not (out_dir / "report.incomplete.json").exists()
