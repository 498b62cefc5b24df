"""One ``prunekit run``: data, model, scoring, masks, sparse training, evaluation, outputs.

The CLI is a thin layer over ``run(RunConfig(...))``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Subset

from ._version import __version__
from .api import check_arbiter, check_sparsity, compute_masks, resolve
from .data import build_dataset
from .errors import PrunekitError
from .files import save_torch, write_json
from .interfaces import Masks
from .layout import ResolvedLayout
from .masks import AppliedMasks, dense_masks, sparsity_summary
from .pruning import PruneResult
from .models import build_model
from .registry import default_registry
from .report import delta_t, load_baseline
from .tasks import build_tasks
from .training import Progress, evaluate, no_progress, to_device, train

DEFAULT_TASKS = ("seg", "depth", "normal")


@dataclass
class RunConfig:
    """Everything a run depends on; ``report.json`` records it under ``config``."""

    scorer: str = "disparse-snip"
    arbiter: str = "or"
    thresholder: str = "topk"
    sparsity: float = 0.9
    compensate: bool = True          # bisect the per-task keep ratio to hit the sparsity
    dense: bool = False              # train without pruning (a baseline for Delta_T)
    tasks: tuple[str, ...] = DEFAULT_TASKS
    model: str = "deeplab-resnet34"
    width: float = 0.125
    dataset: str = "synthetic"
    data_root: str | None = None
    image_size: tuple[int, int] | None = None   # None: the dataset's own size
    val_samples: int = 128                      # 0: the whole validation split
    iterations: int = 400
    score_batches: int = 10
    batch_size: int = 8
    workers: int = 0                 # data-loading processes (0: load in the main process)
    lr: float = 2e-3
    seed: int = 0
    device: str = "cpu"
    out: str | None = None
    baseline: str | None = None
    metrics: tuple[str, ...] = field(default=("iou",))  # task-overlap metrics for the report

    def validate(self) -> None:
        if not self.dense:
            check_sparsity(self.sparsity)
        if not self.tasks:
            raise PrunekitError("give at least one task")
        if len(set(self.tasks)) != len(self.tasks):
            raise PrunekitError(f"tasks repeat: {','.join(self.tasks)}")
        positive = {"width": self.width, "batch size": self.batch_size, "lr": self.lr,
                    "score batches": self.score_batches}
        for what, value in positive.items():
            if not value > 0:
                raise PrunekitError(f"{what} must be positive, got {value}")
        if self.workers < 0:
            raise PrunekitError(f"workers must be >= 0, got {self.workers}")
        if self.iterations < 0:
            raise PrunekitError(f"iterations must be >= 0, got {self.iterations}")
        if self.val_samples < 0:
            raise PrunekitError(f"val samples must be >= 0, got {self.val_samples}")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# Settings that make a run take seconds: for checking an installation, and for tests.
QUICK = dict(width=0.125, image_size=(32, 40), iterations=4, score_batches=1, batch_size=2,
             val_samples=4)


@dataclass
class RunResult:
    report: dict
    out_dir: Path


def tqdm_progress(items, label: str):
    """A progress bar on stderr when it is a terminal (disable=None); plain iteration otherwise."""
    from tqdm import tqdm
    return tqdm(items, desc=label, file=sys.stderr, leave=False, dynamic_ncols=True, disable=None)


class Batches:
    """The first ``count`` batches of a loader, moved to ``device``; sized for progress bars."""

    def __init__(self, loader: DataLoader, count: int, device: torch.device):
        self.loader, self.count, self.device = loader, count, device

    def __len__(self) -> int:
        return min(self.count, len(self.loader))

    def __iter__(self) -> Iterator[dict]:
        for batch in itertools.islice(self.loader, self.count):
            yield to_device(batch, self.device)


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise PrunekitError(f"unknown device {name!r}; use cpu or cuda") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PrunekitError("--device cuda was asked for, but this machine has no usable CUDA GPU")
    if device.type not in ("cpu", "cuda"):
        raise PrunekitError(f"unsupported device {name!r}; use cpu or cuda")
    return device


def default_out_dir(config: RunConfig, per_task: bool) -> Path:
    """``runs/<time>-<scorer>-<arbiter>`` (no arbiter for joint scorers), never an existing one."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    method = ("dense" if config.dense
              else f"{config.scorer}-{config.arbiter}" if per_task else config.scorer)
    path = Path("runs") / f"{stamp}-{method}"
    for suffix in itertools.count(2):
        if not path.exists():
            return path
        path = Path("runs") / f"{stamp}-{method}-{suffix}"


@contextlib.contextmanager
def timed(timings: dict, phase: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[phase] = round(time.perf_counter() - start, 3)


def plugin_record(config: RunConfig, per_task: bool) -> dict:
    """Name, distribution and version of every plugin the run uses."""
    registry = default_registry()
    used = {} if config.dense else {"scorer": config.scorer, "thresholder": config.thresholder}
    if used and per_task:
        used["arbiter"] = config.arbiter
    used.update({f"metric:{m}": m for m in config.metrics})
    record = {}
    for role, name in used.items():
        info = registry.info(role.split(":")[0], name)
        record[role] = {"name": info.name, "distribution": info.distribution,
                        "version": info.version}
    return record


def task_overlap(result: PruneResult, layout: ResolvedLayout,
                 metric_names: tuple[str, ...]) -> dict:
    """Each metric's mean over the shared tensors for every pair of tasks' own subnetworks."""
    masks, saliency = result.task_masks, result.saliency
    overlap = {}
    for name in metric_names:
        metric = resolve("metric", name)
        for a, b in itertools.combinations(layout.tasks, 2):
            scores = [metric.layer_score(masks[a][n], masks[b][n], saliency[a][n], saliency[b][n])
                      for n in layout.shared]
            overlap.setdefault(name, {})[f"{a}/{b}"] = sum(scores) / len(scores)
    return overlap


class Run:
    """The state of one run.

    ``prepare`` checks everything a user can get wrong and builds data and model, before any
    output exists; ``execute`` does the work; ``finish`` writes report.json.
    """

    def __init__(self, config: RunConfig, progress: Progress):
        self.config, self.progress = config, progress
        self.timings: dict[str, float] = {}
        self.started = time.perf_counter()
        self.report: dict = {"prunekit_version": __version__, "config": config.as_dict(),
                             "complete": False}

    def prepare(self) -> None:
        config = self.config
        config.validate()
        registry = default_registry()
        self.scorer = None if config.dense else registry.get("scorer", config.scorer)
        self.per_task = bool(self.scorer and self.scorer.per_task)
        if self.scorer:
            registry.get("thresholder", config.thresholder)
            check_arbiter(self.scorer, registry.get("arbiter", config.arbiter), len(config.tasks))
        self.report["plugins"] = plugin_record(config, self.per_task)
        self.device = resolve_device(config.device)
        self.baseline = load_baseline(config.baseline) if config.baseline else None
        self.out_dir = Path(config.out) if config.out else default_out_dir(config, self.per_task)
        with timed(self.timings, "setup"):
            self.build()

    def build(self) -> None:
        config = self.config
        torch.manual_seed(config.seed)
        train_set = build_dataset(config.dataset, "train", config.data_root, config.image_size,
                                  config.seed)
        val_set = build_dataset(config.dataset, "val", config.data_root, config.image_size,
                                config.seed)
        if 0 < config.val_samples < len(val_set):
            val_set = Subset(val_set, range(config.val_samples))
        self.tasks = build_tasks(config.tasks, train_set)
        channels = {name: task.channels for name, task in self.tasks.items()}
        self.model = build_model(config.model, channels, config.width).to(self.device)
        self.layout = self.model.layout().for_tasks(config.tasks).resolve(self.model)
        self.train_loader = self.loader(train_set, shuffle=True)
        self.val_loader = self.loader(val_set, shuffle=False)

    def loader(self, dataset, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.config.seed)
        return DataLoader(dataset, batch_size=self.config.batch_size, shuffle=shuffle,
                          drop_last=shuffle and len(dataset) >= self.config.batch_size,
                          generator=generator, num_workers=self.config.workers,
                          persistent_workers=self.config.workers > 0)

    def masks(self) -> Masks:
        config = self.config
        if config.dense:
            return dense_masks(self.layout)
        batches = (Batches(self.train_loader, config.score_batches, self.device)
                   if self.scorer.needs_data else [])
        result = compute_masks(self.model, self.layout, self.tasks, batches, self.scorer,
                               config.arbiter, config.thresholder, config.sparsity,
                               config.compensate, self.device, progress=self.progress)
        self.timings.update({phase: round(s, 3) for phase, s in result.timings.items()})
        self.report["keep_ratio_per_task"] = result.keep_ratio
        if self.per_task and len(self.tasks) > 1:
            self.report["task_overlap"] = task_overlap(result, self.layout, config.metrics)
        return result.masks  # the saliency goes with the result: scores live only this long

    def execute(self) -> dict:
        config = self.config
        masks = self.masks()
        applied = AppliedMasks(self.model, masks)
        with timed(self.timings, "training"):
            history = train(self.model, self.tasks, self.train_loader, config.iterations,
                            config.lr, applied, self.device, self.progress)
        with timed(self.timings, "evaluation"):
            metrics = evaluate(self.model, self.tasks, self.val_loader, self.device,
                               self.progress)
        sparsity = sparsity_summary(masks, self.layout)
        self.report.update({
            "sparsity": {"requested": 0.0 if config.dense else config.sparsity, **sparsity},
            "metrics": metrics,
            "training": {"iterations": config.iterations,
                         "first_loss": history[0] if history else None,
                         "last_loss": history[-1] if history else None},
            "parameters": {"total": sum(p.numel() for p in self.model.parameters()),
                           "prunable": self.layout.numel(self.layout.params)},
        })
        if self.baseline:
            self.report["delta_t"] = delta_t(metrics, self.baseline["metrics"], self.tasks)
        save_torch(self.out_dir / "checkpoint.pt", self.checkpoint(masks))
        return self.report

    def checkpoint(self, masks: Masks) -> dict:
        return {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "masks": {name: mask.cpu() for name, mask in masks.items()},
            "config": {"model": self.config.model, "width": self.config.width,
                       "task_channels": {n: t.channels for n, t in self.tasks.items()}},
        }

    def finish(self, error: BaseException | None) -> None:
        """Write report.json: complete only when the run finished; never a stale checkpoint."""
        self.report["timings"] = {**self.timings,
                                  "total": round(time.perf_counter() - self.started, 3)}
        self.report["complete"] = error is None
        if error is not None:
            self.report["error"] = str(error) or type(error).__name__
            (self.out_dir / "checkpoint.pt").unlink(missing_ok=True)
        write_json(self.out_dir / "report.json", self.report)


def run(config: RunConfig, show_progress: bool = False) -> RunResult:
    """Run the whole pipeline; raises PrunekitError for problems the user can fix."""
    current = Run(config, tqdm_progress if show_progress else no_progress)
    current.prepare()
    current.out_dir.mkdir(parents=True, exist_ok=True)
    try:
        current.execute()
    except BaseException as error:  # record the failure, then let the caller report it
        current.finish(error)
        raise
    current.finish(None)
    return RunResult(current.report, current.out_dir)


def load_checkpoint(path: str | Path, device: str = "cpu"):
    """Rebuild the pruned model from ``checkpoint.pt``; returns ``(model, masks)``."""
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    config = checkpoint["config"]
    model = build_model(config["model"], config["task_channels"], config["width"])
    model.load_state_dict(checkpoint["model"], strict=True)
    return model.to(device), checkpoint["masks"]
