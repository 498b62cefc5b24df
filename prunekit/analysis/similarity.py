"""Training-free task similarity: compare the tasks' subnetworks found at initialisation.

For each seed a fresh model is scored once per task (a per-task scorer, ``disparse-snip`` by
default); every requested sparsity's masks come from that same saliency. On every shared tensor,
in model order, each metric plugin compares each pair of tasks; a layer weighting
(``prunekit.analysis.layer_weighting``) averages the layers into one score per pair. Scores are averaged
over seeds, per sparsity, and over sparsities (``mean``).

The per-layer IoU curve (mean over pairs, seeds and sparsities) locates the *watershed layer*:
the shared layer after which the tasks' agreement drops most sharply, as the DiSparse paper
observes. With three or more tasks the all-task IoU (intersection over union of all K masks)
is recorded per layer too.
"""
from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import torch

from ..core import contract
from ..api import check_sparsity, resolve
from ..errors import PrunekitError
from ..interfaces import Masks, Metric, Saliency, ScoringContext
from .layer_weighting import WEIGHTINGS, layer_weights, weighted_mean
from ..core.layout import ResolvedLayout
from ..core.pruning import per_task_masks
from ..core.batch import check_loss, no_progress

DEFAULT_METRICS = ("mcss", "iou", "css", "epi-sim")
DEFAULT_SPARSITIES = (0.3, 0.5, 0.7, 0.9)


def pair_key(a: str, b: str) -> str:
    return f"{a}/{b}"


def layer_sparsity(mask: torch.Tensor) -> float:
    return 1.0 - float(mask.sum()) / mask.numel() if mask.numel() else 0.0


def pair_scores(metrics: Mapping[str, Metric], weightings: Sequence[str], masks: Masks,
                other: Masks, saliency: Mapping, other_saliency: Mapping,
                shared: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{metric: {weighting: score}}`` for one pair of tasks: layer scores, weighted."""
    sparsities = [(layer_sparsity(masks[n]) + layer_sparsity(other[n])) / 2 for n in shared]
    weights = {w: layer_weights(w, len(shared), sparsities) for w in weightings}
    result = {}
    for name, metric in metrics.items():
        layers = [contract.layer_score(metric, masks[n], other[n], saliency[n],
                                       other_saliency[n], n)
                  for n in shared]
        result[name] = {w: weighted_mean(layers, weights[w]) for w in weightings}
    return result


def layer_iou(masks: Sequence[torch.Tensor]) -> float:
    """Intersection over union of any number of masks (1.0 when all are empty)."""
    union = torch.stack([m.flatten() for m in masks]).any(dim=0).sum()
    if union == 0:
        return 1.0
    both = torch.stack([m.flatten() for m in masks]).all(dim=0).sum()
    return float(both / union)


def watershed(names: Sequence[str], curve: Sequence[float]) -> dict | None:
    """The layer after which ``curve`` falls most (None for fewer than two layers)."""
    if len(curve) < 2:
        return None
    drops = [curve[i] - curve[i + 1] for i in range(len(curve) - 1)]
    index = max(range(len(drops)), key=lambda i: (drops[i], -i))  # the first of equal drops
    return {"layer": names[index], "index": index, "drop": drops[index],
            "before": curve[index], "after": curve[index + 1]}


@dataclass
class SeedResult:
    """One seed: scores per (sparsity, metric, weighting, pair) and IoU per (sparsity, layer)."""
    scores: dict = field(default_factory=dict)        # {sparsity: {metric: {w: {pair: s}}}}
    pair_iou: dict = field(default_factory=dict)      # {sparsity: {pair: [per layer]}}
    all_task_iou: dict = field(default_factory=dict)  # {sparsity: [per layer]}


def compare_subnetworks(saliency: Saliency, layout: ResolvedLayout, thresholder, scope,
                        sparsities: Sequence[float], metrics: Mapping[str, Metric],
                        weightings: Sequence[str]) -> SeedResult:
    """Every sparsity's per-task masks from one saliency, and every pair's scores."""
    tasks, shared = layout.tasks, layout.shared
    result = SeedResult()
    for sparsity in sparsities:
        masks = per_task_masks(saliency, layout, thresholder, 1.0 - sparsity, scope)
        by_pair = {}
        for a, b in itertools.combinations(tasks, 2):
            by_pair[pair_key(a, b)] = pair_scores(metrics, weightings, masks[a], masks[b],
                                                  saliency[a], saliency[b], shared)
            result.pair_iou.setdefault(sparsity, {})[pair_key(a, b)] = [
                layer_iou([masks[a][n], masks[b][n]]) for n in shared]
        result.scores[sparsity] = {m: {w: {p: by_pair[p][m][w] for p in by_pair}
                                       for w in weightings} for m in metrics}
        result.all_task_iou[sparsity] = [layer_iou([masks[t][n] for t in tasks]) for n in shared]
    return result


def mean_and_spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarise(results: Sequence[SeedResult], tasks: Sequence[str], shared: Sequence[str],
              sparsities: Sequence[float], metrics: Iterable[str],
              weightings: Sequence[str]) -> dict:
    """Averages over seeds (per sparsity) and over sparsities; the IoU curves and watershed."""
    pairs = [pair_key(a, b) for a, b in itertools.combinations(tasks, 2)]
    table = {}
    for m, w, p in itertools.product(metrics, weightings, pairs):
        per_sparsity = {str(s): mean_and_spread([r.scores[s][m][w][p] for r in results])
                        for s in sparsities}
        table.setdefault(m, {}).setdefault(w, {})[p] = {
            "mean": statistics.fmean(v["mean"] for v in per_sparsity.values()),
            "per_sparsity": per_sparsity}

    def mean_curve(curves: list[list[float]]) -> list[float]:
        return [statistics.fmean(values) for values in zip(*curves)]

    pair_curves = {p: {str(s): mean_curve([r.pair_iou[s][p] for r in results])
                       for s in sparsities} for p in pairs}
    overall = mean_curve([c for by_sparsity in pair_curves.values()
                          for c in by_sparsity.values()])
    summary = {"pairs": table,
               "layer_iou": {"layers": list(shared), "pairs": pair_curves, "mean": overall},
               "watershed": watershed(shared, overall)}
    if len(tasks) > 2:
        summary["layer_iou"]["all_tasks"] = {
            str(s): mean_curve([r.all_task_iou[s] for r in results]) for s in sparsities}
    return summary


def check_request(metrics: Sequence[str], weightings: Sequence[str],
                  sparsities: Sequence[float], tasks: Sequence[str], seeds: int) -> None:
    for sparsity in sparsities:
        check_sparsity(sparsity)
    for weighting in weightings:
        if weighting not in WEIGHTINGS:
            from ..errors import UnknownNameError
            raise UnknownNameError("weighting", weighting, WEIGHTINGS)
    for name in metrics:
        resolve("metric", name)
    if len(tasks) < 2:
        raise PrunekitError("task similarity compares tasks: give at least two")
    if len(set(tasks)) != len(tasks):
        raise PrunekitError(f"tasks repeat: {','.join(tasks)}")
    if seeds < 1:
        raise PrunekitError(f"seeds must be at least 1, got {seeds}")


def score_tasks(model, layout: ResolvedLayout, tasks, batches, scorer, device, seed: int,
                progress: Callable = no_progress,
                input_shape: tuple[int, ...] | None = None) -> Saliency:
    """One per-task saliency of the model as it is (untrained)."""
    context = ScoringContext(model, layout, tasks, batches, device, check_loss, progress, seed,
                             input_shape=input_shape)
    return contract.score(scorer, context)
