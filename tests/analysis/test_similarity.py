"""Task similarity: pair scores from masks, IoU curves, the watershed, the CLI end to end."""
import json

import pytest
import torch

from prunekit.analysis.layer_weighting import layer_weights
from prunekit.registry import default_registry
from prunekit.analysis.similarity import (SeedResult, compare_subnetworks, layer_iou, pair_scores,
                                 summarise, watershed)
from prunekit.analysis.similarity_run import SimilarityConfig, format_table
from helpers import invoke


def test_watershed_is_the_layer_after_which_the_curve_drops_most():
    names = ["a", "b", "c", "d", "e"]
    point = watershed(names, [0.9, 0.88, 0.85, 0.5, 0.45])
    assert point["layer"] == "c" and point["index"] == 2
    assert point["drop"] == pytest.approx(0.35)
    assert (point["before"], point["after"]) == (0.85, 0.5)
    assert watershed(names, [0.5, 0.4, 0.5, 0.4, 0.5])["layer"] == "a"  # first of equal drops
    assert watershed(["only"], [0.7]) is None


def test_layer_iou_of_two_and_of_all_masks():
    a = torch.tensor([1, 1, 0, 0], dtype=torch.bool)
    b = torch.tensor([1, 0, 1, 0], dtype=torch.bool)
    c = torch.tensor([1, 1, 1, 0], dtype=torch.bool)
    assert layer_iou([a, b]) == pytest.approx(1 / 3)
    assert layer_iou([a, b, c]) == pytest.approx(1 / 3)  # all three keep only index 0 of 3
    assert layer_iou([a, c]) == pytest.approx(2 / 3)
    empty = torch.zeros(4, dtype=torch.bool)
    assert layer_iou([empty, empty]) == 1.0


def test_pair_scores_weight_the_layers_as_the_weighting_says():
    masks = {"l1": torch.tensor([1, 1, 0, 0], dtype=torch.bool),
             "l2": torch.tensor([1, 0, 0, 0], dtype=torch.bool)}
    other = {"l1": torch.tensor([1, 1, 0, 0], dtype=torch.bool),
             "l2": torch.tensor([0, 1, 0, 0], dtype=torch.bool)}
    saliency = {n: torch.rand(4) for n in masks}
    iou = default_registry().get("metric", "iou")
    scores = pair_scores({"iou": iou}, ["equal", "linear", "sparsity"], masks, other, saliency,
                         saliency, ["l1", "l2"])
    # layer IoUs 1 and 0; linear puts all weight on the second layer; sparsity weights 0.5, 0.75
    assert scores["iou"]["equal"] == pytest.approx(0.5)
    assert scores["iou"]["linear"] == pytest.approx(0.0)
    assert scores["iou"]["sparsity"] == pytest.approx(0.5 / 1.25)


def test_masks_of_every_sparsity_come_from_one_saliency_and_summaries_average_seeds(tiny_model):
    layout = tiny_model.layout().resolve(tiny_model)
    registry = default_registry()
    metrics = {"iou": registry.get("metric", "iou")}

    def saliency(seed):
        generator = torch.Generator().manual_seed(seed)
        return {task: {n: torch.rand(p.shape, generator=generator)
                       for n, p in layout.params.items()} for task in layout.tasks}

    results = [compare_subnetworks(saliency(seed), layout, registry.get("thresholder", "topk"),
                                   None, [0.5, 0.9], metrics, ["equal"]) for seed in (1, 2)]
    a, b = layout.tasks[:2]
    pair = f"{a}/{b}"
    for result in results:
        # the IoU score with equal weights is the mean of the per-layer IoU curve
        for sparsity in (0.5, 0.9):
            curve = result.pair_iou[sparsity][pair]
            assert result.scores[sparsity]["iou"]["equal"][pair] == pytest.approx(
                sum(curve) / len(curve))
    summary = summarise(results, layout.tasks, layout.shared, [0.5, 0.9], ["iou"], ["equal"])
    entry = summary["pairs"]["iou"]["equal"][pair]
    per_seed = [r.scores[0.5]["iou"]["equal"][pair] for r in results]
    assert entry["per_sparsity"]["0.5"]["mean"] == pytest.approx(sum(per_seed) / 2)
    assert entry["per_sparsity"]["0.5"]["std"] > 0  # the two seeds differ
    assert entry["mean"] == pytest.approx(
        (entry["per_sparsity"]["0.5"]["mean"] + entry["per_sparsity"]["0.9"]["mean"]) / 2)
    assert len(summary["layer_iou"]["mean"]) == len(layout.shared)


def test_summaries_of_three_tasks_have_the_all_task_curve():
    shared = ["l1", "l2"]
    result = SeedResult(scores={0.5: {"iou": {"equal": {"a/b": 0.5, "a/c": 0.4, "b/c": 0.3}}}},
                        pair_iou={0.5: {"a/b": [0.9, 0.5], "a/c": [0.8, 0.4], "b/c": [0.7, 0.3]}},
                        all_task_iou={0.5: [0.6, 0.2]})
    summary = summarise([result], ["a", "b", "c"], shared, [0.5], ["iou"], ["equal"])
    assert summary["layer_iou"]["all_tasks"] == {"0.5": [0.6, 0.2]}
    assert summary["layer_iou"]["mean"] == pytest.approx([0.8, 0.4])
    assert summary["watershed"]["layer"] == "l1"


def test_similarity_then_group_end_to_end(capsys, tmp_path):
    out = tmp_path / "sim"
    code, stdout, err = invoke(capsys, "similarity", "--quick", "--no-progress", "--tasks",
                               "seg,depth,normal", "--metric", "mcss,iou", "--weighting",
                               "equal,linear,step", "--out", str(out))
    assert code == 0, err
    record = json.loads((out / "similarity.json").read_text())
    assert set(record["pairs"]) == {"mcss", "iou"}
    assert set(record["pairs"]["iou"]) == {"equal", "linear", "step"}
    pairs = {"seg/depth", "seg/normal", "depth/normal"}
    assert set(record["pairs"]["iou"]["equal"]) == pairs
    for entry in record["pairs"]["iou"]["equal"].values():
        assert 0 < entry["mean"] <= 1 and set(entry["per_sparsity"]) == {"0.5", "0.9"}
    assert len(record["layer_iou"]["all_tasks"]["0.5"]) == len(record["layer_iou"]["layers"])
    assert record["watershed"]["layer"] in record["layer_iou"]["layers"]
    assert f"watershed layer: {record['watershed']['layer']}" in stdout
    assert "| iou | linear |" in stdout and "sparsity 0.9" in stdout
    for name in ("heatmap-mcss.png", "heatmap-iou.png", "layer-iou.png", "similarity.md"):
        assert (out / name).stat().st_size > 0

    code, stdout, err = invoke(capsys, "group", "--similarity", str(out / "similarity.json"),
                               "--metric", "iou", "--budget", "2", "--json")
    assert code == 0, err
    grouping = json.loads(stdout)
    assert grouping["total_cost"] <= 2
    covered = sorted(t for network in grouping["networks"] for t in network["tasks"])
    assert set(covered) == {"seg", "depth", "normal"}
    # with two networks for three tasks, the most similar pair shares one and the third is alone
    best_pair = max(pairs, key=lambda p: record["pairs"]["iou"]["equal"][p]["mean"])
    assert sorted(best_pair.split("/")) in [n["tasks"] for n in grouping["networks"]]


def test_table_shows_only_the_mean_when_asked():
    record = {"config": {"sparsities": [0.5]},
              "pairs": {"iou": {"equal": {"a/b": {"mean": 0.25,
                                                  "per_sparsity": {"0.5": {"mean": 0.25}}}}}}}
    assert "sparsity 0.5" not in format_table(record, average_sparsities=True)
    assert "| iou | equal | 0.2500 |" in format_table(record, average_sparsities=False)


@pytest.mark.parametrize("args,message", [
    (["--tasks", "seg"], "at least two"),
    (["--sparsity", "0.5,1.2"], "sparsity must be strictly between 0 and 1"),
    (["--sparsity", "half"], "comma-separated numbers"),
    (["--metric", "mcs"], "unknown metric 'mcs'"),
    (["--weighting", "cubic"], "unknown weighting 'cubic'"),
    (["--scorer", "snip"], "per-task element scorer"),
    (["--scorer", "taylor"], "per-task element scorer"),
    (["--thresholder", "soft-threshold"], "learns while training"),
    (["--seeds", "0"], "seeds must be at least 1"),
    (["--tasks", "seg,seg"], "tasks repeat"),
    (["--width", "0"], "width, score batches and batch size must be positive"),
])
def test_similarity_errors_are_one_line_and_exit_2(capsys, tmp_path, args, message):
    code, _, err = invoke(capsys, "similarity", "--quick", "--no-progress",
                          "--out", str(tmp_path / "s"), *args)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("args,message", [
    (["--budget", "2"], "give exactly one of --similarity"),
    (["--similarity", "missing.json", "--budget", "2"], "does not exist"),
    (["--similarity", "s.json", "--lower-is-better", "--budget", "2"], "is for --pairs"),
])
def test_group_errors_are_one_line_and_exit_2(capsys, args, message):
    code, _, err = invoke(capsys, "group", *args)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1


def test_default_weightings_are_all_known():
    config = SimilarityConfig()
    for weighting in config.weightings:
        assert sum(layer_weights(weighting, 10, [0.5] * 10)) == pytest.approx(1.0)


def test_group_from_a_measured_pair_table_with_losses(capsys, tmp_path):
    table = tmp_path / "pairs.csv"
    table.write_text("task,trained_with,score\n"
                     "a,a,1.0\nb,b,1.0\nc,c,1.0\n"
                     "a,b,0.5\nb,a,0.6\na,c,2.0\nc,a,2.0\nb,c,2.0\nc,b,2.0\n")
    code, stdout, err = invoke(capsys, "group", "--pairs", str(table), "--lower-is-better",
                               "--budget", "2", "--json")
    assert code == 0, err
    result = json.loads(stdout)
    # a and b help each other (losses 0.5 and 0.6 below 1.0 alone); c trains alone
    assert sorted(n["tasks"] for n in result["networks"]) == [["a", "b"], ["c"]]
    assert result["task_scores"] == pytest.approx({"a": 0.5, "b": 0.6, "c": 1.0})
    assert result["total_score"] == pytest.approx(2.1)
    code, stdout, _ = invoke(capsys, "group", "--pairs", str(table), "--lower-is-better",
                             "--budget", "2")
    assert "network 1: a + b" in stdout and "total score 2.1000" in stdout
