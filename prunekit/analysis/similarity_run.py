"""``prunekit similarity``: build, score per seed, compare, write ``similarity.json`` and figures."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..api import check_scope, resolve
from ..data import build_dataset
from ..pipeline.outputs import check_out_dir, fresh_run_dir
from ..pipeline.data import Batches, resolve_device
from ..pipeline.config import DEFAULT_TASKS
from ..errors import PrunekitError
from ..files import atomic_write, write_json
from ..models import build_model, model_layout
from ..plots import save_layer_iou, save_similarity_heatmap
from .similarity import (DEFAULT_METRICS, DEFAULT_SPARSITIES, check_request,
                         compare_subnetworks, score_tasks, summarise)
from ..tasks import build_tasks
from ..core.batch import no_progress


@dataclass
class SimilarityConfig:
    tasks: tuple[str, ...] = DEFAULT_TASKS
    metrics: tuple[str, ...] = DEFAULT_METRICS
    sparsities: tuple[float, ...] = DEFAULT_SPARSITIES
    weightings: tuple[str, ...] = ("equal", "linear", "step", "sparsity")
    seeds: int = 4
    seed: int = 0                      # the first seed; seeds are seed, seed + 1, ...
    average_sparsities: bool = False   # the table shows the mean over sparsities only
    scorer: str = "disparse-snip"
    thresholder: str = "topk"
    scope: str | None = None
    model: str = "deeplab-resnet34"
    width: float = 0.125
    dataset: str = "synthetic"
    data_root: str | None = None
    image_size: tuple[int, int] | None = None
    score_batches: int = 10
    batch_size: int = 8
    device: str = "cpu"
    out: str | None = None


QUICK_SIMILARITY = dict(image_size=(32, 40), score_batches=1, batch_size=2, seeds=2,
                        sparsities=(0.5, 0.9))


def check(config: SimilarityConfig):
    """Everything a user can get wrong, before anything is built; returns the plugins."""
    check_request(config.metrics, config.weightings, config.sparsities, config.tasks,
                  config.seeds)
    scorer = resolve("scorer", config.scorer)
    if not scorer.per_task or scorer.granularity != "element":
        raise PrunekitError(f"scorer {config.scorer!r} does not score each task's weights; task "
                            "similarity needs a per-task element scorer such as disparse-snip")
    thresholder = resolve("thresholder", config.thresholder)
    if thresholder.learns:
        raise PrunekitError(f"thresholder {config.thresholder!r} learns while training; task "
                            "similarity thresholds saliency at initialisation (use topk or erk)")
    check_scope(thresholder, config.scope)
    if config.score_batches < 1 or config.batch_size < 1 or not config.width > 0:
        raise PrunekitError("width, score batches and batch size must be positive")
    if config.out:
        check_out_dir(config.out)
    return scorer, thresholder


def compute(config: SimilarityConfig, progress=no_progress) -> dict:
    """The similarity record (what ``similarity.json`` holds)."""
    scorer, thresholder = check(config)
    device = resolve_device(config.device)
    data = build_dataset(config.dataset, "train", config.data_root, config.image_size,
                         config.seed)
    tasks = build_tasks(config.tasks, data)
    metrics = {name: resolve("metric", name) for name in config.metrics}
    channels = {name: task.channels for name, task in tasks.items()}
    started, results, layout = time.perf_counter(), [], None
    for seed in range(config.seed, config.seed + config.seeds):
        torch.manual_seed(seed)
        model = build_model(config.model, channels, config.width).to(device)
        layout = model_layout(model).for_tasks(config.tasks).resolve(model)
        loader = torch.utils.data.DataLoader(
            data, batch_size=config.batch_size, shuffle=True,
            generator=torch.Generator().manual_seed(seed))
        batches = Batches(loader, config.score_batches, device, seed)
        saliency = score_tasks(model, layout, tasks, batches, scorer, device, seed, progress,
                               input_shape=(1, *data[0]["image"].shape))
        saliency = {task: {n: s.cpu() for n, s in by_name.items()}
                    for task, by_name in saliency.items()}
        results.append(compare_subnetworks(saliency, layout, thresholder, config.scope,
                                           config.sparsities, metrics, config.weightings))
    summary = summarise(results, list(config.tasks), layout.shared, config.sparsities,
                        config.metrics, config.weightings)
    return {"config": dataclasses.asdict(config), "tasks": list(config.tasks), **summary,
            "seconds": round(time.perf_counter() - started, 3)}


def format_table(record: dict, average_sparsities: bool) -> str:
    """Markdown: rows metric x weighting, columns task pairs (one block per sparsity unless
    averaged)."""
    pairs = list(next(iter(next(iter(record["pairs"].values())).values())))
    sparsities = (["mean"] if average_sparsities
                  else list(record["config"]["sparsities"]) + ["mean"])
    blocks = []
    for sparsity in sparsities:
        title = ("mean over sparsities" if sparsity == "mean" else f"sparsity {sparsity:g}")
        lines = [f"{title}", "", "| metric | weighting | " + " | ".join(pairs) + " |",
                 "|---|---|" + "---:|" * len(pairs)]
        for metric, by_weighting in record["pairs"].items():
            for weighting, by_pair in by_weighting.items():
                values = [by_pair[p]["mean"] if sparsity == "mean"
                          else by_pair[p]["per_sparsity"][str(sparsity)]["mean"] for p in pairs]
                lines.append(f"| {metric} | {weighting} | "
                             + " | ".join(f"{v:.4f}" for v in values) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def describe_watershed(record: dict) -> str:
    point = record["watershed"]
    if point is None:
        return "watershed layer: none (fewer than two shared layers)"
    return (f"watershed layer: {point['layer']} (shared layer {point['index'] + 1} of "
            f"{len(record['layer_iou']['layers'])}; mean IoU {point['before']:.3f} -> "
            f"{point['after']:.3f} after it)")


def run_similarity(config: SimilarityConfig, progress=no_progress) -> tuple[dict, Path, str]:
    """Compute, then write similarity.json, similarity.md and the figures; returns the record,
    the output folder and the table. Nothing is written before ``compute``'s checks pass."""
    out = Path(config.out) if config.out else fresh_run_dir("similarity")
    record = compute(config, progress)
    table = format_table(record, config.average_sparsities)
    out.mkdir(parents=True, exist_ok=True)
    for metric in config.metrics:
        save_similarity_heatmap(record, metric, config.weightings[0],
                                out / f"heatmap-{metric}.png")
    save_layer_iou(record, out / "layer-iou.png")
    atomic_write(out / "similarity.md",
                 lambda temporary: temporary.write_text(table + "\n" + describe_watershed(record)
                                                        + "\n"))
    write_json(out / "similarity.json", record)
    return record, out, table
