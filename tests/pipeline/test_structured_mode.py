"""Structured ``--mode iterative`` (taylor, cosprune): channel ranking, the budget, real runs,
retraining from scratch, adaptive task weighting and the CLI's errors for these options.

Real runs use QUICK settings (a few seconds each): cosprune to a parameter ratio, cosprune to a
sparsity of the scored weights, taylor with a retraining sweep and two adaptive-weighting runs.
"""
import copy
import json
import math

import pytest
import torch

from prunekit import PrunekitError, load_checkpoint
from prunekit.pipeline.outputs import read_checkpoint
from prunekit.pipeline.data import hold_out
from prunekit.pipeline.engine import Run, run
from prunekit.pipeline.config import QUICK, RunConfig
from prunekit.models import build_model
from prunekit.models.surgery import (channel_groups, count_parameters, kept_channels,
                                     remove_filters, shrink_to)
from prunekit.pipeline.report import delta_t
from prunekit.pipeline.modes.retrain import check_select_metric, reinitialise, selection_score
from prunekit.core.channel_pruning import Budget, ChannelImportance, candidate_groups
from prunekit.training.task_weighting import AdaptiveTaskWeights
from prunekit.training.loop import evaluate, train
from prunekit.core.batch import no_progress
from helpers import invoke

TASKS = ("seg", "depth", "normal")
TASK_CHANNELS = {"seg": 13, "depth": 1, "normal": 3}  # the synthetic dataset's
BIG = 10 ** 12  # a ``needed`` that never stops ``lowest``


def structured(out, **settings):
    """One real structured run with QUICK settings; returns (report, out_dir, warnings)."""
    warnings = []
    config = {**QUICK, "mode": "iterative", "out": str(out), **settings}
    result = run(RunConfig(**config), warn=warnings.append)
    assert result.report["complete"]
    return result.report, result.out_dir, warnings


def dense_channels():
    return kept_channels(build_model("deeplab-resnet34", TASK_CHANNELS, QUICK["width"]))


def is_head_group(name):
    return name.startswith("heads.")


def phases(report):
    return [entry["phase"] for entry in report["training"]]


@pytest.fixture(scope="module")
def deeplab():
    """A tiny two-task DeepLab; tests that change it work on a deep copy."""
    torch.manual_seed(0)
    return build_model("deeplab-resnet34", {"seg": 13, "depth": 1}, 0.125)


@pytest.fixture(scope="module")
def cosprune_run(tmp_path_factory):
    return structured(tmp_path_factory.mktemp("cosprune") / "r", scorer="cosprune",
                      params_ratio=0.6)


@pytest.fixture(scope="module")
def sparsity_run(tmp_path_factory):
    return structured(tmp_path_factory.mktemp("sparsity") / "r", scorer="cosprune",
                      sparsity=0.5)


RETRAIN = dict(scorer="taylor", params_ratio=0.6, retrain_from_scratch=True,
               retrain_lrs=(1e-3, 1e-4))


@pytest.fixture(scope="module")
def retrain_run(tmp_path_factory):
    return structured(tmp_path_factory.mktemp("retrain") / "r", **RETRAIN)


# ---------------------------------------------------------------------------------------------
# ChannelImportance.lowest


def importance(model, *sums):
    """Importance over the model's first ``len(sums)`` groups (8 channels each), sums set by
    hand; returns it and the group names."""
    groups = channel_groups(model)[:len(sums)]
    ranked = ChannelImportance(groups)
    for group, values in zip(groups, sums):
        assert group.channels == len(values)
        ranked.sums[group.name] = torch.tensor(values, dtype=torch.float64)
    return ranked, [group.name for group in groups]


def removed(keep):
    """{group: removed channel indices} of ``lowest``'s keep-masks."""
    return {name: (~mask).nonzero().flatten().tolist() for name, mask in keep.items()}


def unit_cost(group):
    return 1


def test_lowest_removes_the_lowest_sums_across_groups(deeplab):
    ranked, (a, b, c) = importance(deeplab, [5, 6, 7, 8, 9, 10, 11, 12],
                                   [0.5, 20, 20, 20, 20, 20, 20, -1],
                                   [4, 30, 30, 30, 30, 30, 30, 30])
    keep = ranked.lowest(3, BIG, unit_cost)
    assert removed(keep) == {b: [0, 7], c: [0]}  # a keeps everything and is left out
    assert all(mask.dtype == torch.bool and mask.shape == (8,) for mask in keep.values())
    assert removed(ranked.lowest(4, BIG, unit_cost)) == {a: [0], b: [0, 7], c: [0]}


def test_lowest_breaks_ties_by_earlier_group_then_lower_channel(deeplab):
    ranked, (a, b) = importance(deeplab, [1, 1, 1, 1, 1, 0, 1, 1], [0, 1, 1, 1, 1, 1, 1, 1])
    assert removed(ranked.lowest(1, BIG, unit_cost)) == {a: [5]}  # a's channel 5 before b's 0
    assert removed(ranked.lowest(2, BIG, unit_cost)) == {a: [5], b: [0]}
    ranked, (a, b) = importance(deeplab, [0.0] * 8, [0.0] * 8)
    assert removed(ranked.lowest(3, BIG, unit_cost)) == {a: [0, 1, 2]}
    assert removed(ranked.lowest(10, BIG, unit_cost)) == {a: [0, 1, 2, 3, 4, 5, 6], b: [0, 1, 2]}


def test_lowest_never_removes_the_last_channel_of_a_group(deeplab):
    ranked, (a, b) = importance(deeplab, [-5.0] * 8, [1, 2, 3, 4, 5, 6, 7, 8])
    keep = ranked.lowest(9, BIG, unit_cost)
    assert int(keep[a].sum()) == 1 and removed(keep) == {a: [0, 1, 2, 3, 4, 5, 6], b: [0, 1]}
    keep = ranked.lowest(100, BIG, unit_cost)  # more than there are: each group keeps one
    assert {name: int(mask.sum()) for name, mask in keep.items()} == {a: 1, b: 1}
    assert keep[b].nonzero().flatten().tolist() == [7]  # the highest sum survives


def test_lowest_stops_at_count(deeplab):
    ranked, names = importance(deeplab, *[[float(i + 8 * g) for i in range(8)] for g in range(3)])
    assert ranked.lowest(0, BIG, unit_cost) == {}
    for count in (1, 5, 12):
        keep = ranked.lowest(count, BIG, unit_cost)
        assert sum(len(v) for v in removed(keep).values()) == count


def test_lowest_stops_once_the_removed_cost_reaches_needed(deeplab):
    ranked, (a, b) = importance(deeplab, [0, 1, 2, 3, 4, 5, 6, 7],
                                [0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5])
    costs = {a: 10, b: 100}
    seen = []

    def cost(group):
        seen.append(group.name)
        return costs[group.name]

    # ranked order a0 (10), b0 (100), a1 (10), b1 (100) ...
    assert ranked.lowest(100, 0, cost) == {}
    assert removed(ranked.lowest(100, 10, cost)) == {a: [0]}
    assert removed(ranked.lowest(100, 11, cost)) == {a: [0], b: [0]}
    assert removed(ranked.lowest(100, 110, cost)) == {a: [0], b: [0]}
    assert removed(ranked.lowest(100, 111, cost)) == {a: [0, 1], b: [0]}
    assert removed(ranked.lowest(2, 10 ** 6, cost)) == {a: [0], b: [0]}  # count still stops it
    assert set(seen) == {a, b}


def test_lowest_raises_on_a_nan_ranked_first(deeplab):
    ranked, (a, b) = importance(deeplab, [math.nan, 1, 2, 3, 4, 5, 6, 7], [10.0] * 8)
    with pytest.raises(PrunekitError, match="nan"):
        ranked.lowest(1, BIG, unit_cost)


def test_lowest_raises_on_minus_infinity(deeplab):
    ranked, (a, b) = importance(deeplab, [0, 1, 2, 3, 4, 5, 6, 7], [10.0] * 7 + [-math.inf])
    with pytest.raises(PrunekitError, match="-inf"):
        ranked.lowest(1, BIG, unit_cost)


@pytest.mark.parametrize("position", [1, 7])
def test_lowest_raises_on_a_nan_anywhere(deeplab, position):
    sums = [0.0, 1, 2, 3, 4, 5, 6, 7]
    sums[position] = math.nan
    ranked, _ = importance(deeplab, sums, [10.0] * 8)
    with pytest.raises(PrunekitError, match="nan"):
        ranked.lowest(1, BIG, unit_cost)


def test_a_nan_among_finite_scores_is_refused_rather_than_misranked(deeplab):
    ranked, (a,) = importance(deeplab, [5, math.nan, 1, 7, 8, 9, 10, 11])
    with pytest.raises(PrunekitError, match="channel 1 .* nan"):
        ranked.lowest(1, BIG, unit_cost)


# ---------------------------------------------------------------------------------------------
# Budget


def backbone_weights(model):
    return tuple(model.layout().resolve(model).shared)


def test_budget_for_a_params_ratio_measures_the_whole_model(deeplab):
    scored = backbone_weights(deeplab)
    budget = Budget.for_run(deeplab, 0.6, 0.9, scored)
    total = sum(p.numel() for p in deeplab.parameters())
    assert (budget.target, budget.names, budget.dense) == (0.6, None, total)
    assert "whole model" in budget.describe()
    assert budget.size(deeplab) == total and budget.kept(deeplab) == 1.0
    assert budget.excess(deeplab) == total - math.floor(0.6 * total)


def test_budget_for_a_sparsity_measures_only_the_scored_weights(deeplab):
    scored = backbone_weights(deeplab)
    budget = Budget.for_run(deeplab, None, 0.7, scored)
    params = dict(deeplab.named_parameters())
    dense = sum(params[name].numel() for name in scored)
    assert budget.target == pytest.approx(0.3) and budget.names == scored
    assert budget.dense == dense < count_parameters(deeplab)
    assert "scorer scores" in budget.describe()
    smaller = copy.deepcopy(deeplab)
    head = next(g for g in channel_groups(smaller) if g.name.startswith("heads.seg"))
    remove_filters(smaller, {head.name: torch.arange(head.channels) >= 10})
    assert budget.size(smaller) == dense  # a head group is not measured
    assert count_parameters(smaller) < count_parameters(deeplab)


@pytest.mark.parametrize("shrunk", [False, True], ids=["dense", "shrunk"])
@pytest.mark.parametrize("measure", ["parameters", "backbone weights"])
def test_budget_cost_is_the_size_removed_with_one_channel(deeplab, measure, shrunk):
    model = copy.deepcopy(deeplab)
    if shrunk:  # costs are at the current shapes
        shrink_to(model, {g.name: g.channels // 2 for g in channel_groups(model)[::3]})
    budget = Budget(0.5, 0, None if measure == "parameters" else backbone_weights(model))
    names = {id(p): name for name, p in model.named_parameters()}
    costs = {}
    for group in channel_groups(model):
        smaller = copy.deepcopy(model)
        remove_filters(smaller, {group.name: torch.arange(group.channels) != 1})
        costs[group.name] = budget.cost(group, names)
        assert budget.size(model) - budget.size(smaller) == costs[group.name], group.name
    if measure == "parameters":
        assert all(cost > 0 for cost in costs.values())
    else:
        assert all(costs[name] == 0 for name in costs if is_head_group(name))
        # the backbone's output is read by the heads: their weights are not counted
        heads = {id(m) for m in model.heads.modules()}
        (output,) = [g for g in channel_groups(model) if not is_head_group(g.name)
                     and any(id(reader) in heads for reader in g.readers)]
        assert 0 < costs[output.name] < output.removal_cost()


# ---------------------------------------------------------------------------------------------
# end to end: cosprune to --params-ratio 0.6


def test_params_ratio_run_meets_the_budget(cosprune_run):
    report, _, _ = cosprune_run
    result = report["structured"]
    budget, before, after = result["budget"], result["before"], result["after"]
    assert budget["target_kept"] == 0.6 and "whole model" in budget["measures"]
    assert 0.5 < budget["kept"] <= 0.6
    assert budget["kept"] == pytest.approx(after["parameters"] / before["parameters"])
    assert after["parameters"] < before["parameters"]
    assert after["macs_per_image"] < before["macs_per_image"]
    assert before["parameters"] == count_parameters(
        build_model("deeplab-resnet34", TASK_CHANNELS, QUICK["width"]))
    assert report["parameters"]["total"] == after["parameters"]
    assert result["rounds"] and all(r["removed"] >= 1 for r in result["rounds"])
    sizes = [before["parameters"]] + [r["parameters"] for r in result["rounds"]]
    assert all(a > b for a, b in zip(sizes, sizes[1:])) and sizes[-1] == after["parameters"]
    assert all(r["kept"] >= 0.6 for r in result["rounds"][:-1])  # no round after the budget
    assert result["rounds"][-1]["kept"] == pytest.approx(budget["kept"], abs=1e-6)


def test_params_ratio_run_phases_and_sparsity(cosprune_run):
    report, _, _ = cosprune_run
    rounds = len(report["structured"]["rounds"])
    assert phases(report) == ["pretraining"] + ["pruning"] * rounds + ["finetuning"]
    assert report["training"][-1]["iterations"] == QUICK["iterations"] // 2
    assert {"pretraining", "pruning", "finetuning", "measuring"} <= set(report["timings"])
    assert "retraining" not in report["timings"] and report["structured"]["retraining"] is None
    sparsity = report["sparsity"]
    dense = build_model("deeplab-resnet34", TASK_CHANNELS, QUICK["width"])
    layout = dense.layout().resolve(dense)
    assert sparsity["requested"] is None  # the budget was --params-ratio, not --sparsity
    assert sparsity["achieved"] > 0 and sparsity["shared"] > 0
    assert sparsity["achieved"] == pytest.approx(
        1 - report["parameters"]["prunable"] / layout.numel(layout.params))


def test_cosprune_shrinks_only_backbone_groups(cosprune_run):
    report, _, _ = cosprune_run
    channels, dense = report["structured"]["channels"], dense_channels()
    assert channels.keys() == dense.keys()
    assert all(count >= 1 for count in channels.values())
    heads = [name for name in dense if is_head_group(name)]
    assert heads and all(channels[name] == dense[name] for name in heads)
    assert any(channels[name] < dense[name] for name in dense if not is_head_group(name))


@pytest.mark.parametrize("scorer,heads", [("cosprune", False), ("taylor", True)])
def test_head_groups_are_candidates_only_for_scorers_that_score_heads(scorer, heads):
    current = Run(RunConfig(**QUICK, mode="iterative", scorer=scorer, params_ratio=0.6),
                  no_progress)
    current.prepare()
    groups = candidate_groups(current.ctx.model, set(current.mode.scored))
    assert any(not is_head_group(g.name) for g in groups)
    assert any(is_head_group(g.name) for g in groups) == heads
    if heads:
        assert {g.name for g in groups} == set(kept_channels(current.ctx.model))


def test_structured_checkpoint_rebuilds_the_smaller_model(cosprune_run):
    report, out_dir, _ = cosprune_run
    path = out_dir / "checkpoint.pt"
    model, masks = load_checkpoint(path)
    again, _ = load_checkpoint(path)
    assert count_parameters(model) == report["structured"]["after"]["parameters"]
    assert kept_channels(model) == report["structured"]["channels"]
    assert all(bool(mask.all()) for mask in masks.values())  # nothing masked: all removed
    image = torch.randn(2, 3, *QUICK["image_size"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first, second = model.eval()(image), again.eval()(image)
    assert first.keys() == set(TASKS)
    for task in TASKS:
        assert first[task].shape[-2:] == image.shape[-2:]
        assert torch.equal(first[task], second[task])
    state = read_checkpoint(path)["model"]
    with pytest.raises(RuntimeError, match="size mismatch"):
        build_model("deeplab-resnet34", TASK_CHANNELS, QUICK["width"]).load_state_dict(state)
    fresh = shrink_to(build_model("deeplab-resnet34", TASK_CHANNELS, QUICK["width"]),
                      read_checkpoint(path)["config"]["channels"])
    fresh.load_state_dict(state, strict=True)
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name


def test_sparsity_budget_keeps_at_most_its_share_of_the_scored_weights(sparsity_run):
    report, out_dir, _ = sparsity_run
    budget = report["structured"]["budget"]
    assert budget["target_kept"] == pytest.approx(0.5) and "scorer scores" in budget["measures"]
    assert budget["kept"] <= 0.5
    model, _ = load_checkpoint(out_dir / "checkpoint.pt")
    dense = build_model("deeplab-resnet34", TASK_CHANNELS, QUICK["width"])
    kept = [m.layout().resolve(m) for m in (model, dense)]
    share = kept[0].numel(kept[0].shared) / kept[1].numel(kept[1].shared)
    assert share == pytest.approx(budget["kept"]) and share <= 0.5
    assert report["sparsity"]["shared"] == pytest.approx(1 - share)
    assert report["sparsity"]["requested"] == 0.5


# ---------------------------------------------------------------------------------------------
# a budget out of reach fails before training


def test_unreachable_params_ratio_fails_before_training(tmp_path):
    config = RunConfig(**QUICK, mode="iterative", scorer="cosprune", params_ratio=0.05,
                       out=str(tmp_path / "r"))
    with pytest.raises(PrunekitError, match="--params-ratio") as error:
        run(config)
    assert "cosprune" in str(error.value)
    assert not (tmp_path / "r").exists()
    current = Run(config, no_progress)
    with pytest.raises(PrunekitError, match="--params-ratio"):
        current.prepare()
    assert "pretraining" not in current.ctx.timings and current.report["training"] == []


def test_unreachable_sparsity_names_the_sparsity_option(tmp_path):
    config = RunConfig(**QUICK, mode="iterative", scorer="cosprune", sparsity=0.9999,
                       out=str(tmp_path / "r"))
    with pytest.raises(PrunekitError, match="--sparsity out of reach .*use --sparsity at most"):
        run(config)
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------
# the command line


ITERATIVE = ["--mode", "iterative"]
RETRAIN_WITH_ELEMENT_SCORER = {
    "retraining with an element scorer": ITERATIVE + ["--scorer", "magnitude",
                                                      "--retrain-from-scratch"],
    "retraining in static mode": ["--retrain-from-scratch"],
}
CLI_ERRORS = {
    "taylor in static mode": (["--scorer", "taylor", "--mode", "static"],
                              "scores whole filters; use --mode iterative"),
    "lr sweep without retraining": (ITERATIVE + ["--scorer", "taylor", "--lr", "1e-3,1e-4"],
                                    "learning-rate sweep for --retrain-from-scratch"),
    "bad lr list": (["--lr", "1e-3,fast"], "comma-separated list"),
    **{label: (args, "use it with a filter scorer")
       for label, args in RETRAIN_WITH_ELEMENT_SCORER.items()},
    "unknown select metric": (ITERATIVE + ["--scorer", "taylor", "--retrain-from-scratch",
                                           "--select-metric", "seg.nope"],
                              "unknown --select-metric 'seg.nope'"),
    "params ratio above one": (ITERATIVE + ["--scorer", "cosprune", "--params-ratio", "1.5"],
                               "params ratio must be strictly between 0 and 1"),
    "params ratio zero": (ITERATIVE + ["--scorer", "cosprune", "--params-ratio", "0"],
                          "params ratio must be strictly between 0 and 1"),
    "params ratio out of reach": (ITERATIVE + ["--scorer", "cosprune", "--params-ratio", "0.05"],
                                  "--params-ratio out of reach"),
    "unknown task weighting": (["--task-weighting", "nope"], "unknown task weighting 'nope'"),
    "window of one": (["--task-weighting", "adaptive", "--window", "1"],
                      "window must be at least 2"),
    "rewind with cosprune": (ITERATIVE + ["--scorer", "cosprune", "--rewind"],
                             "--rewind resets surviving weights"),
    "zero prune interval": (ITERATIVE + ["--scorer", "taylor", "--prune-interval", "0"],
                            "prune interval must be positive"),
}


def cli_error(capsys, out_dir, args):
    """Exit code, the stderr lines and the one error line of a CLI run expected to fail."""
    code, _, err = invoke(capsys, "run", "--quick", "--no-progress", "--out", str(out_dir), *args)
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("prunekit: error:")]
    assert len(errors) == 1, err
    assert not (out_dir / "checkpoint.pt").exists() and not (out_dir / "report.json").exists()
    return code, lines, errors[0]


@pytest.mark.parametrize("args,message", [
    pytest.param(args, message, id=label)
    for label, (args, message) in CLI_ERRORS.items()])
def test_structured_cli_errors_are_one_line_and_exit_2(capsys, tmp_path, args, message):
    code, lines, error = cli_error(capsys, tmp_path / "run", args)
    assert code == 2 and message in error
    assert lines == [error]


def test_cli_lr_list_is_the_retraining_sweep(monkeypatch, capsys, tmp_path):
    import prunekit.cli.runs as cli

    seen = []

    def fake_run(config, show_progress, warn):
        seen.append(config)
        raise PrunekitError("stop here")

    monkeypatch.setattr(cli, "run", fake_run)
    code, _, err = invoke(capsys, "run", "--quick", "--no-progress", "--mode", "iterative",
                          "--scorer", "taylor", "--retrain-from-scratch", "--lr", "1e-3,5e-4",
                          "--params-ratio", "0.5", "--select-metric", "seg.miou",
                          "--task-weighting", "adaptive", "--window", "3",
                          "--out", str(tmp_path / "r"))
    assert code == 2 and "stop here" in err
    (config,) = seen
    assert (config.lr, config.retrain_lrs) == (1e-3, (1e-3, 5e-4))
    assert (config.params_ratio, config.retrain_from_scratch, config.select_metric) == (
        0.5, True, "seg.miou")
    assert (config.task_weighting, config.window) == ("adaptive", 3)
    seen.clear()
    invoke(capsys, "run", "--quick", "--no-progress", "--lr", "1e-3", "--out",
           str(tmp_path / "r"))
    assert (seen[0].lr, seen[0].retrain_lrs) == (1e-3, None)


# ---------------------------------------------------------------------------------------------
# retraining from scratch


def test_retraining_sweep_keeps_the_best_learning_rate(retrain_run, tasks):
    report, _, _ = retrain_run
    record = report["structured"]["retraining"]
    candidates = record["candidates"]
    assert [c["lr"] for c in candidates] == [1e-3, 1e-4]
    best = max(c["score"] for c in candidates)
    assert record["chosen_lr"] == next(c["lr"] for c in candidates if c["score"] == best)
    assert record["select_metric"] == "delta_t"
    assert 1 <= record["held_out_samples"] <= QUICK["val_samples"]
    dense = record["dense_on_held_out"]
    assert set(dense) == set(TASKS)
    for candidate in candidates:
        assert set(candidate["metrics"]) == set(TASKS)
        assert candidate["score"] == pytest.approx(selection_score(  # tasks: the directions
            "delta_t", candidate["metrics"], dense, tasks))


def test_retraining_replaces_fine_tuning(retrain_run):
    report, out_dir, _ = retrain_run
    assert "retraining" in report["timings"] and "selection" in report["timings"]
    assert "finetuning" not in report["timings"]
    retraining = [e for e in report["training"] if e["phase"] == "retraining"]
    assert [(e["lr"], e["iterations"]) for e in retraining] == [
        (1e-3, QUICK["iterations"]), (1e-4, QUICK["iterations"])]
    assert phases(report)[-2:] == ["retraining", "retraining"]
    assert report["structured"]["budget"]["kept"] <= 0.6
    # fresh weights trained once: every BatchNorm has seen exactly the retraining's batches,
    # not pretraining + pruning + fine-tuning
    state = read_checkpoint(out_dir / "checkpoint.pt")["model"]
    tracked = {k: int(v) for k, v in state.items() if k.endswith("num_batches_tracked")}
    assert tracked and set(tracked.values()) == {QUICK["iterations"]}
    model, _ = load_checkpoint(out_dir / "checkpoint.pt")
    assert count_parameters(model) == report["structured"]["after"]["parameters"]


def test_retraining_holds_out_training_samples_and_keeps_the_chosen_weights(retrain_run):
    report, out_dir, _ = retrain_run
    current = Run(RunConfig(**QUICK, mode="iterative", **RETRAIN), no_progress)
    current.prepare()  # the run's data again, without training
    train_set, held = current.ctx.train_loader.dataset, current.mode.selection_loader.dataset
    assert train_set.dataset is held.dataset  # both from the training split
    assert not set(train_set.indices) & set(held.indices)
    assert len(train_set) + len(held) == len(train_set.dataset)
    assert len(held) == report["structured"]["retraining"]["held_out_samples"]
    # the checkpoint holds the weights the sweep chose, not the last candidate's
    record = report["structured"]["retraining"]
    chosen = next(c for c in record["candidates"] if c["lr"] == record["chosen_lr"])
    model, _ = load_checkpoint(out_dir / "checkpoint.pt")
    metrics = evaluate(model, current.ctx.tasks, current.mode.selection_loader,
                       torch.device("cpu"))
    for task, values in chosen["metrics"].items():
        assert metrics[task] == pytest.approx(values, rel=1e-5, abs=1e-7), task


def test_hold_out_splits_without_overlap():
    data = list(range(50))
    for share, most, expected in ((0.1, 3, 3), (0.1, 0, 5), (0.1, 100, 5), (0.01, 4, 1)):
        kept, held = hold_out(data, share, most)
        assert len(held) == expected and (most <= 0 or len(held) <= most)
        assert not set(kept.indices) & set(held.indices)
        assert sorted([*kept.indices, *held.indices]) == data
    kept, held = hold_out(list(range(2)), 0.1, 4)
    assert (list(kept.indices), list(held.indices)) == ([0], [1])
    with pytest.raises(PrunekitError, match="at least 2"):
        hold_out([0], 0.1, 4)


def test_selection_score(tasks):
    dense = {"seg": {"miou": 0.5, "pixel_acc": 0.8},
             "depth": {"abs_err": 1.0, "rel_err": 0.5, "delta_1.25": 0.5, "delta_1.25^2": 0.6,
                       "delta_1.25^3": 0.7},
             "normal": {"mean_angle": 40.0, "median_angle": 35.0, "within_11.25": 0.1,
                        "within_22.5": 0.3, "within_30": 0.4}}
    better = copy.deepcopy(dense)
    better["seg"]["miou"], better["depth"]["abs_err"] = 0.6, 0.8
    assert selection_score("seg.miou", better, dense, tasks) == 0.6
    assert selection_score("depth.abs_err", better, dense, tasks) == -0.8  # lower is better
    assert selection_score("depth.abs_err", better, dense, tasks) > selection_score(
        "depth.abs_err", dense, dense, tasks)
    score = selection_score("delta_t", better, dense, tasks)
    assert score == pytest.approx(delta_t(better, dense, tasks)["overall"]) and score > 0
    assert selection_score("delta_t", dense, dense, tasks) == 0.0
    worse = copy.deepcopy(dense)
    worse["normal"]["mean_angle"] = 50.0
    assert selection_score("delta_t", worse, dense, tasks) < 0
    diverged = {task: {metric: math.nan for metric in values} for task, values in dense.items()}
    for name in ("seg.miou", "depth.abs_err", "delta_t"):
        assert selection_score(name, diverged, dense, tasks) == -math.inf


def test_check_select_metric(tasks):
    check_select_metric("delta_t", tasks)
    check_select_metric("normal.within_30", tasks)
    for name in ("seg.nope", "nope", "edges.miou", "seg"):
        with pytest.raises(PrunekitError, match="use delta_t or one of: .*seg.miou"):
            check_select_metric(name, tasks)


def test_reinitialise_is_fresh_and_reproducible(tiny_model, batches):
    tiny_model.train()
    tiny_model(batches[0]["image"])  # moves the BatchNorm statistics
    trained = copy.deepcopy(tiny_model)
    first, second, other = (copy.deepcopy(tiny_model) for _ in range(3))
    reinitialise(first, 1)
    reinitialise(second, 1)
    reinitialise(other, 2)
    convs = [n for n, m in first.named_modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in first.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert convs and norms
    modules = dict(first.named_modules())
    for name in convs:
        assert not torch.equal(modules[name].weight, dict(trained.named_modules())[name].weight)
        assert not torch.equal(modules[name].weight, dict(other.named_modules())[name].weight)
    assert any(float(m.running_mean.abs().sum()) > 0 for m in trained.modules()
               if isinstance(m, torch.nn.BatchNorm2d))
    for norm in norms:
        assert torch.equal(norm.running_mean, torch.zeros_like(norm.running_mean))
        assert torch.equal(norm.running_var, torch.ones_like(norm.running_var))
        assert int(norm.num_batches_tracked) == 0
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name]), name


# ---------------------------------------------------------------------------------------------
# adaptive task weighting in training


class ScriptedWeights(AdaptiveTaskWeights):
    """Weights from a script: ``script[k]`` once ``update`` has been called k times."""

    def __init__(self, tasks, script):
        super().__init__(tasks, window=2)
        self.script, self.received = script, []

    @property
    def weights(self):
        return dict(self.script[len(self.received)])

    def update(self, losses):
        self.received.append(dict(losses))
        return self.weights


def test_train_weights_each_step_by_the_weights_after_the_previous_update(tiny_model, tasks,
                                                                         batches):
    script = [{"seg": 1.0, "depth": 0.0, "normal": 0.0},
              {"seg": 0.5, "depth": 2.0, "normal": 0.25},
              {"seg": 0.0, "depth": 0.0, "normal": 3.0},
              {"seg": 1.0, "depth": 1.0, "normal": 1.0}]
    weights = ScriptedWeights(list(tasks), script)
    before = [copy.deepcopy(tiny_model)]
    checked = []

    def after_step(step, batch, optimiser):
        reference = before[-1]  # the model as it was before this step
        outputs = reference(batch["image"])
        loss = sum(script[step][name] * task.loss(outputs[name], batch[name])
                   for name, task in tasks.items())
        expected = torch.autograd.grad(loss, list(reference.parameters()))
        for (name, param), grad in zip(tiny_model.named_parameters(), expected):
            torch.testing.assert_close(param.grad, grad, msg=f"step {step}, {name}")
        if step == 0:  # the tasks weighted 0 gave their heads no gradient
            assert all(float(p.grad.abs().sum()) == 0
                       for p in tiny_model.heads["depth"].parameters())
        checked.append(step)
        before.append(copy.deepcopy(tiny_model))

    history = train(tiny_model, tasks, batches, 3, 1e-2, None, torch.device("cpu"),
                    after_step=after_step, task_weights=weights)
    assert checked == [0, 1, 2]
    assert weights.received == history and len(history) == 3


def test_adaptive_weighting_run_records_its_weights(tmp_path):
    warnings = []
    report = run(RunConfig(**QUICK, task_weighting="adaptive", window=2, out=str(tmp_path / "r")),
                 warn=warnings.append).report
    record = report["task_weighting"]
    assert record["window"] == 2 and report["config"]["task_weighting"] == "adaptive"
    weights, scales = record["final_weights"], record["scales"]
    assert set(weights) == set(scales) == set(TASKS)
    assert sum(weights.values()) == pytest.approx(len(TASKS))
    assert any(abs(w - 1.0) > 1e-6 for w in weights.values())  # it adapted
    assert all(abs(s - 1.0) < 0.05 for s in scales.values())  # the backbone dominates
    assert sum(scales.values()) == pytest.approx(len(TASKS))
    assert not any("adaptive task weighting" in w for w in report["warnings"] + warnings)


def test_adaptive_weighting_uses_the_training_losses_and_warns_on_a_long_window(tmp_path):
    warnings = []
    settings = {**QUICK, "iterations": 2}
    report = run(RunConfig(**settings, task_weighting="adaptive", window=2,
                           out=str(tmp_path / "r")), warn=warnings.append).report
    warned = [w for w in report["warnings"] if "adaptive task weighting" in w]
    assert len(warned) == 1 and "--window 2" in warned[0] and "--iterations is 2" in warned[0]
    assert warnings == report["warnings"]
    saved = json.loads((tmp_path / "r" / "report.json").read_text())
    assert saved["warnings"] == report["warnings"]
    # with two steps the window holds exactly the first and last losses of the one phase
    (phase,) = report["training"]
    first, last, scales = phase["first_loss"], phase["last_loss"], \
        report["task_weighting"]["scales"]
    raw = {t: scales[t] / (abs(first[t] - last[t]) / abs(last[t])) for t in TASKS}
    expected = {t: len(TASKS) * raw[t] / sum(raw.values()) for t in TASKS}
    assert report["task_weighting"]["final_weights"] == pytest.approx(expected, rel=1e-9)


def test_a_per_task_filter_scorer_is_refused():
    from types import SimpleNamespace

    from prunekit.pipeline.modes.structured import Structured

    config = RunConfig(mode="iterative", scorer="my-filters")
    with pytest.raises(PrunekitError, match="per task"):
        Structured(config, SimpleNamespace(per_task=True), None, None).check_options()
    Structured(config, SimpleNamespace(per_task=False), None, None).check_options()  # joint


def test_review_regressions(tmp_path):
    """A learning thresholder with a filter scorer, every rate of a sweep checked, and
    checkpoints of runs started from a structured checkpoint loading again."""
    from prunekit.pipeline.compare import parse_methods, run_configs

    with pytest.raises(PrunekitError, match="lr 2 of the sweep must be positive, got -1.0"):
        RunConfig(**QUICK, mode="iterative", scorer="taylor", retrain_from_scratch=True,
                  lr=1e-3, retrain_lrs=(1e-3, -1.0, 1e-4)).validate()
    run(RunConfig(**QUICK, thresholder="soft-threshold", scorer="taylor",
                  out=str(tmp_path / "soft")))  # the thresholder learns; nothing is scored
    first = run(RunConfig(**QUICK, mode="iterative", scorer="taylor", params_ratio=0.5,
                          out=str(tmp_path / "a")))
    second = run(RunConfig(**QUICK, mode="pretrained", out=str(tmp_path / "b"),
                           init_checkpoint=str(first.out_dir / "checkpoint.pt")))
    model, _ = load_checkpoint(second.out_dir / "checkpoint.pt")
    assert sum(p.numel() for p in model.parameters()) == first.report["parameters"]["total"]
    base = RunConfig(**QUICK, retrain_from_scratch=True, retrain_lrs=(1e-3, 1e-4))
    plan = run_configs(base, parse_methods("taylor@iterative,snip"), [0], tmp_path / "c")
    retrains = {label: config.retrain_from_scratch for label, _, config in plan}
    assert retrains == {"dense": False, "taylor@iterative": True, "snip": False}


def test_cli_summary_and_report_give_the_size_and_latency_before_and_after(capsys, tmp_path):
    code, out, err = invoke(capsys, "run", "--quick", "--no-progress", "--mode", "iterative",
                            "--scorer", "cosprune", "--params-ratio", "0.6",
                            "--out", str(tmp_path / "r"))
    assert code == 0, err
    record = json.loads((tmp_path / "r" / "report.json").read_text())["structured"]
    before, after = record["before"], record["after"]
    assert before["latency_ms"] > 0 and after["latency_ms"] > 0
    assert record["speedup"] == pytest.approx(before["latency_ms"] / after["latency_ms"],
                                              rel=1e-3)  # the report rounds the latencies
    assert record["latency_batch"][0] == QUICK["batch_size"]
    assert (f"model     parameters {before['parameters']:,} -> {after['parameters']:,}"
            in out)
    assert f"MACs/image {before['macs_per_image'] / 1e6:.1f}M" in out
