"""One ``prunekit run``: data, model, scoring, masks, sparse training, evaluation, outputs.

The CLI is a thin layer over ``run(RunConfig(...))``.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Subset

from .core import contract
from .core import distributed
from ._version import __version__
from .api import check_arbiter, check_scope, check_sparsity, compute_masks, resolve
from .data import build_dataset
from .data.augment import Augmented, SeededSampler
from .errors import NonFiniteLossError, PrunekitError, UnknownNameError, one_line, user_message
from .files import non_finite_keys, save_torch, write_json
from .interfaces import Masks, Scorer, Thresholder
from .core.layout import ResolvedLayout
from .core.masks import AppliedMasks, dense_masks, measured_sparsity
from .modes import MODES
from .core.pruning import PruneResult
from .models import build_model, canonical_name, model_layout
from .registry import default_registry, plugin_info
from .models.surgery import kept_channels, shrink_to
from .report import delta_t, load_baseline
from .training.resume import RESUME_FILE, PhaseCheckpoints, RunStopped, StopRequest, read_resume
from .retrain import SELECTION_SHARE, check_select_metric
from .structured import check_structured
from .training.task_weighting import AdaptiveTaskWeights
from .tasks import build_tasks
from .timing import add_seconds, timed
from .training.loop import Resumption, evaluate, train
from .core.batch import Progress, no_progress, to_device

DEFAULT_TASKS = ("seg", "depth", "normal")
REPORT = "report.json"
# where the report of a run not (yet) complete goes when the folder holds an earlier complete
# run: its report.json and checkpoint.pt stay until this run completes
INCOMPLETE_REPORT = "report.incomplete.json"
BATCH_SEEDS = 1_000_003  # scoring batch i of seed s draws from seed s * BATCH_SEEDS + i
# options that only some modes read (--rewind and --init-checkpoint elsewhere are errors)
MODE_OPTIONS = {
    "finetune_iterations": ("pretrained", "iterative"),
    "finetune_lr": ("pretrained", "iterative"),
    "prune_rounds": ("iterative",),
    "update_interval": ("dynamic",),
    "update_end": ("dynamic",),
    "drop_fraction": ("dynamic",),
}
LEARNED_THRESHOLD_OPTIONS = {"theta_init", "theta_lr", "theta_decay"}  # soft-threshold
# iterative mode with a filter scorer (prunekit.structured) reads these instead of the rounds'
TASK_WEIGHTINGS = ("fixed", "adaptive")
# (--retrain-from-scratch elsewhere is an error, not ignored)
STRUCTURED_OPTIONS = {"params_ratio", "prune_interval", "filters_per_prune", "select_metric"}


@dataclass
class RunConfig:
    """Everything a run depends on; ``report.json`` records it, resolved, under ``config``.

    ``scorer``, ``thresholder`` and ``finetune_*`` left as None take the mode's defaults
    (see ``resolved``); ``scope`` None takes the thresholder's default scope.
    """

    mode: str = "static"             # static | pretrained | dynamic | iterative
    scorer: str | None = None
    arbiter: str = "or"
    thresholder: str | None = None
    scope: str | None = None
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
    augment: bool = False            # random scale, crop and flip of training samples
    lr: float = 2e-3
    seed: int = 0
    device: str = "cpu"
    out: str | None = None
    baseline: str | None = None
    metrics: tuple[str, ...] = field(default=("iou",))  # task-overlap metrics for the report
    init_checkpoint: str | None = None       # pretrained, iterative: start from these weights
    finetune_iterations: int | None = None   # pretrained, iterative: None is iterations // 2
    finetune_lr: float | None = None         # pretrained, iterative: None is lr / 10
    prune_rounds: int = 3                    # iterative
    rewind: bool = False                     # iterative: reset survivors to their initial values
    update_interval: int = 25                # dynamic: steps between RigL updates
    update_end: float = 0.75                 # dynamic: last update at this share of training
    drop_fraction: float = 0.3               # dynamic: RigL's alpha
    theta_init: float = -6.0                 # soft-threshold: initial theta, alpha = sigmoid(theta)
    theta_lr: float = 0.1                    # soft-threshold: Adam learning rate of the thetas
    theta_decay: float = 0.1                 # soft-threshold: L2 decay pushing the thresholds up
    params_ratio: float | None = None        # structured: parameters kept; None: 1 - sparsity
    prune_interval: int = 10                 # structured: training steps between removals
    filters_per_prune: int | None = None     # structured: None is 5% of the candidate channels
    retrain_from_scratch: bool = False       # structured: fresh weights instead of fine-tuning
    retrain_lrs: tuple[float, ...] | None = None  # structured: the sweep; None is (lr,)
    select_metric: str = "delta_t"           # structured: how the sweep's winner is chosen
    task_weighting: str = "fixed"            # fixed (every loss weighs 1) | adaptive (AdapMTL)
    window: int = 400                        # adaptive task weighting: losses per task averaged
    checkpoint_every: int = 100              # training steps between resume checkpoints (0: none)

    def resolved(self) -> "RunConfig":
        """A copy with the mode's default scorer and thresholder and the fine-tuning budget."""
        if self.mode not in MODES:
            raise UnknownNameError("mode", self.mode, MODES)
        defaults = MODES[self.mode]
        fine_tunes = self.mode in MODE_OPTIONS["finetune_iterations"]
        return dataclasses.replace(
            self,
            scorer=self.scorer or defaults.scorer,
            model=canonical_name(self.model),  # a user's file by its absolute path
            thresholder=self.thresholder or defaults.thresholder,
            finetune_iterations=(None if not fine_tunes
                                 else self.iterations // 2 if self.finetune_iterations is None
                                 else self.finetune_iterations),
            finetune_lr=(None if not fine_tunes
                         else self.lr / 10 if self.finetune_lr is None else self.finetune_lr),
        )

    def options_used(self) -> set[str]:
        """The mode- and thresholder-specific options this run reads."""
        used = {name for name, modes in MODE_OPTIONS.items() if self.mode in modes}
        if self.rewind:
            used.discard("finetune_lr")  # rewound rounds retrain at --lr
        if self.thresholder_learns():
            used |= LEARNED_THRESHOLD_OPTIONS
        if self.task_weighting == "adaptive":
            used.add("window")
        if self.mode == "iterative" and self.scorer_removes_filters():
            used = (used - {"prune_rounds"}) | STRUCTURED_OPTIONS
            if self.retrain_from_scratch:
                used.discard("finetune_iterations")  # retraining runs for --iterations
            else:
                used.discard("select_metric")
        return used

    def thresholder_learns(self) -> bool:
        return self.plugin_flag("thresholder", self.thresholder, "learns", False)

    def scorer_removes_filters(self) -> bool:
        return self.plugin_flag("scorer", self.scorer, "granularity", "element") == "filter"

    @staticmethod
    def plugin_flag(kind: str, name: str | None, flag: str, unknown):
        """A plugin's class attribute, or ``unknown`` when the name is unset or unknown."""
        if name is None:  # not resolved yet
            return unknown
        try:
            return getattr(default_registry().get(kind, name), flag)
        except PrunekitError:  # unknown: the run's own checks report it
            return unknown

    def ignored_options(self, given: Iterable[str]) -> list[str]:
        """Those of ``given`` (option names) that only other modes read."""
        specific = (MODE_OPTIONS.keys() | LEARNED_THRESHOLD_OPTIONS | STRUCTURED_OPTIONS
                    | {"window"})
        return [name for name in given if name in specific and name not in self.options_used()]

    def validate(self) -> None:
        for setting in dataclasses.fields(self):
            value = getattr(self, setting.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise PrunekitError(f"{setting.name.replace('_', ' ')} must be a finite number, "
                                    f"got {value}")
        if self.image_size is not None and min(self.image_size) < 8:
            raise PrunekitError(f"images must be at least 8x8, got "
                                f"{'x'.join(map(str, self.image_size))}")
        if not self.dense:
            check_sparsity(self.sparsity)
        if not self.tasks:
            raise PrunekitError("give at least one task")
        if len(set(self.tasks)) != len(self.tasks):
            raise PrunekitError(f"tasks repeat: {','.join(self.tasks)}")
        positive = {"width": self.width, "batch size": self.batch_size, "lr": self.lr,
                    "score batches": self.score_batches, "prune rounds": self.prune_rounds,
                    "update interval": self.update_interval, "finetune lr": self.finetune_lr,
                    "theta lr": self.theta_lr, "prune interval": self.prune_interval,
                    "filters per prune": self.filters_per_prune,
                    **{f"lr {i} of the sweep": lr
                       for i, lr in enumerate(self.retrain_lrs or (), 1)}}
        for what, value in positive.items():
            if value is not None and not value > 0:
                raise PrunekitError(f"{what} must be positive, got {value}")
        at_least_zero = {"workers": self.workers, "iterations": self.iterations,
                         "val samples": self.val_samples,
                         "checkpoint every": self.checkpoint_every,
                         "finetune iterations": self.finetune_iterations}
        for what, value in at_least_zero.items():
            if value is not None and value < 0:
                raise PrunekitError(f"{what} must be >= 0, got {value}")
        if not 0 < self.update_end <= 1:
            raise PrunekitError(f"update end must be in (0, 1], got {self.update_end}")
        if not 0 < self.drop_fraction <= 1:
            raise PrunekitError(f"drop fraction must be in (0, 1], got {self.drop_fraction}")
        if self.theta_decay < 0:
            raise PrunekitError(f"theta decay must be >= 0, got {self.theta_decay}")
        if self.task_weighting not in TASK_WEIGHTINGS:
            raise UnknownNameError("task weighting", self.task_weighting, TASK_WEIGHTINGS)
        if self.window < 2:
            raise PrunekitError(f"window must be at least 2 losses, got {self.window}")
        if self.params_ratio is not None and not 0 < self.params_ratio < 1:
            raise PrunekitError(f"params ratio must be strictly between 0 and 1, "
                                f"got {self.params_ratio}")
        if self.retrain_lrs and len(self.retrain_lrs) > 1 and not self.retrain_from_scratch:
            raise PrunekitError("several --lr values are a learning-rate sweep for "
                                "--retrain-from-scratch; give one --lr, or add the flag")
        self.validate_mode()

    def validate_mode(self) -> None:
        if self.dense and self.mode != "static":
            raise PrunekitError(f"--dense trains without pruning; it takes no --mode {self.mode}")
        if self.init_checkpoint and self.mode not in ("pretrained", "iterative"):
            raise PrunekitError("--init-checkpoint is for --mode pretrained or iterative, "
                                f"not {self.mode}")
        if self.rewind and self.mode != "iterative":
            raise PrunekitError(f"--rewind is for --mode iterative, not {self.mode}")
        if self.rewind and self.init_checkpoint:
            raise PrunekitError("--rewind resets weights to their values before dense training, "
                                "which a run starting from --init-checkpoint does not have")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# Settings that make a run take seconds: for checking an installation, and for tests.
QUICK = dict(width=0.125, image_size=(32, 40), iterations=4, score_batches=1, batch_size=2,
             val_samples=4, prune_rounds=2, update_interval=1, prune_interval=1)


@dataclass
class RunResult:
    report: dict
    out_dir: Path
    writer: bool = True  # False on the ranks of a torchrun launch that write nothing


def tqdm_progress(items, label: str):
    """A progress bar on stderr when it is a terminal (disable=None); plain iteration otherwise."""
    from tqdm import tqdm
    return tqdm(items, desc=label, file=sys.stderr, leave=False, dynamic_ncols=True, disable=None)


class Batches:
    """The first ``count`` batches of a loader, moved to ``device``; sized for progress bars.

    While the caller works on batch i, random draws (dropout) come from a generator seeded by
    (``seed``, i) and the global one is restored after: a batch's gradients do not depend on
    the batches before it, so under torchrun, where each rank gets its share of the batches
    (``distributed.shard``), the ranks' sums equal one process's.
    """

    def __init__(self, loader: DataLoader, count: int, device: torch.device, seed: int = 0):
        self.loader, self.count, self.device, self.seed = loader, count, device, seed

    def __len__(self) -> int:
        return distributed.shard_size(min(self.count, len(self.loader)))

    def __iter__(self) -> Iterator[dict]:
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        numbered = enumerate(itertools.islice(self.loader, self.count))
        for index, batch in distributed.shard(numbered):
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(self.seed * BATCH_SEEDS + index)
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


def fresh_run_dir(name: str) -> Path:
    """``runs/<time>-<name>``, with a numeric suffix when that folder already exists."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / f"{stamp}-{name}"
    for suffix in itertools.count(2):
        if not path.exists():
            return path
        path = Path("runs") / f"{stamp}-{name}-{suffix}"


def default_out_dir(config: RunConfig, per_task: bool) -> Path:
    """``runs/<time>-<scorer>-<arbiter>`` (no arbiter for joint scorers), never an existing one."""
    return fresh_run_dir("dense" if config.dense
                         else f"{config.scorer}-{config.arbiter}" if per_task else config.scorer)


def plugin_record(config: RunConfig, per_task: bool, thresholder: Thresholder | None) -> dict:
    """Name, distribution and version of every plugin the run uses."""
    used = ({} if config.dense
            else {"thresholder": config.thresholder} if thresholder.learns
            else {"scorer": config.scorer} if config.scorer_removes_filters()
            else {"scorer": config.scorer, "thresholder": config.thresholder})
    if used and per_task:
        used["arbiter"] = config.arbiter
    used.update({f"metric:{m}": m for m in config.metrics})
    return {role: plugin_info(role.split(":")[0], name) for role, name in used.items()}


def task_overlap(result: PruneResult, layout: ResolvedLayout,
                 metric_names: tuple[str, ...]) -> dict:
    """Each metric's mean over the shared tensors for every pair of tasks' own subnetworks."""
    masks, saliency = result.task_masks, result.saliency
    overlap = {}
    for name in metric_names:
        metric = resolve("metric", name)
        for a, b in itertools.combinations(layout.tasks, 2):
            scores = [contract.layer_score(metric, masks[a][n], masks[b][n], saliency[a][n],
                                           saliency[b][n], n)
                      for n in layout.shared]
            overlap.setdefault(name, {})[f"{a}/{b}"] = sum(scores) / len(scores)
    return overlap


def print_warning(message: str) -> None:
    print(f"prunekit: warning: {message}", file=sys.stderr)


class Run:
    """The state of one run.

    ``prepare`` checks everything a user can get wrong and builds data and model, before any
    output exists; ``execute`` runs the mode (see ``prunekit.modes``); ``finish`` writes
    report.json. The modes build on ``prune``, ``train_phase`` and ``pretrain``.
    """

    def __init__(self, config: RunConfig, progress: Progress, warn=print_warning,
                 resume: dict | None = None):
        self.config = config.resolved()
        self.progress, self.print_warning = progress, warn
        self.timings: dict[str, float] = {}
        self.achieved_sparsity: dict | None = None  # set by modes that remove whole channels
        self.started = time.perf_counter()
        if distributed.launched_rank() != 0:  # under torchrun rank 0 alone prints
            self.progress, self.print_warning = no_progress, lambda message: None
        self.resume = resume      # the checkpoint of a stopped run (prunekit.resume)
        self.elapsed_before = resume["elapsed"] if resume else 0.0
        self.prunes: list[dict] = []  # every prune's masks so far, for checkpoints
        self.phases_started = 0
        self.stop = StopRequest()
        self.report: dict = {"prunekit_version": __version__, "config": self.config.as_dict(),
                             "complete": False, "warnings": [], "training": []}

    def warn(self, message: str) -> None:
        """Tell the user now and keep the warning in the report."""
        self.report["warnings"].append(message)
        self.print_warning(message)

    def check(self, processes: int = 1) -> None:
        """Validate the configuration and the plugins it names, without building anything;
        ``processes``: how many a launch is about to start (torchrun's own launch counts)."""
        config = self.config
        config.validate()
        registry = default_registry()
        self.scorer = None if config.dense else registry.get("scorer", config.scorer)
        self.per_task = bool(self.scorer and self.scorer.per_task)
        self.arbiter = registry.get("arbiter", config.arbiter)
        self.thresholder = None if config.dense else registry.get("thresholder",
                                                                    config.thresholder)
        if self.thresholder:
            check_scope(self.thresholder, config.scope)
        if self.thresholder and self.thresholder.learns:
            if config.mode != "static":
                raise PrunekitError(f"thresholder {config.thresholder!r} learns its masks while "
                                    f"training from scratch; use it with --mode static, not "
                                    f"{config.mode}")
            self.scorer, self.per_task = None, False  # nothing is scored
        elif self.scorer and self.scorer.granularity == "filter":
            check_filter_mode(config, self.scorer)
        elif self.scorer:
            check_arbiter(self.scorer, self.arbiter, len(config.tasks))
            MODES[config.mode].check(self)
        if config.retrain_from_scratch and not self.removes_filters():
            raise PrunekitError("--retrain-from-scratch re-initialises the architecture that "
                                "structured pruning found; use it with a filter scorer (taylor, "
                                "cosprune) in --mode iterative")
        if config.init_checkpoint:
            check_checkpoint_path(config.init_checkpoint)
        if processes > 1 or distributed.launched():
            check_distributed(self)
        if self.resume is not None and not self.resumable():
            raise PrunekitError("this run removed channels or learned thresholds while "
                                "training, which a checkpoint cannot resume")
        if config.out:
            check_out_dir(config.out)
        self.report["plugins"] = plugin_record(config, self.per_task, self.thresholder)

    def resumable(self) -> bool:
        """Whether checkpoints can resume this run (not one that changes the model or learns
        thresholds while training)."""
        return not self.removes_filters() and not (self.thresholder and self.thresholder.learns)

    def removes_filters(self) -> bool:
        """Whether this run prunes whole channels (structured iterative mode)."""
        return self.scorer is not None and self.scorer.granularity == "filter"

    def prepare(self) -> None:
        self.check()
        config = self.config
        self.device = resolve_device(config.device)
        self.joined_group = distributed.launched() and not distributed.active()
        self.device = distributed.start(self.device)
        self.writer = distributed.is_writer()
        if self.writer:
            self.out_dir = (Path(config.out) if config.out
                            else default_out_dir(config, self.per_task))
        else:  # the other ranks of a torchrun launch keep their few files in a folder that is
            # removed at the end
            self.out_dir = Path(tempfile.mkdtemp(prefix=f"prunekit-rank{distributed.rank()}-"))
        if self.resume is not None and self.resume["world_size"] != distributed.world_size():
            raise PrunekitError(f"the run was checkpointed in {self.resume['world_size']} "
                                f"process(es); resume it in as many (--nproc)")
        if self.resume is None and self.writer:  # a folder used again: not the old run's
            (self.out_dir / RESUME_FILE).unlink(missing_ok=True)
        self.report_name = (INCOMPLETE_REPORT if self.writer and holds_complete_run(self.out_dir)
                            else REPORT)
        self.baseline = load_baseline(config.baseline) if config.baseline else None
        with timed(self.timings, "setup"):
            self.build()
            if config.retrain_from_scratch:
                check_select_metric(config.select_metric, self.tasks)
            if self.removes_filters():
                check_structured(self)

    def build(self) -> None:
        config = self.config
        torch.manual_seed(config.seed)
        train_set = build_dataset(config.dataset, "train", config.data_root, config.image_size,
                                  config.seed)
        val_set = build_dataset(config.dataset, "val", config.data_root, config.image_size,
                                config.seed)
        if 0 < config.val_samples < len(val_set):  # evenly spread: splits are often ordered
            # by scene or building
            val_set = Subset(val_set, evenly_spaced(len(val_set), config.val_samples))
        self.tasks = build_tasks(config.tasks, train_set)
        example = train_set[0]["image"]
        self.input_shape = (1, *example.shape)  # for data-free scorers (ScoringContext)
        self.report["data"] = data_record(example, train_set, val_set)
        if self.baseline is not None:
            self.check_baseline_data()
        if config.retrain_from_scratch:  # the sweep is judged on training samples held out
            train_set, selection_set = hold_out(train_set, SELECTION_SHARE, config.val_samples)
            self.selection_loader = self.loader(selection_set, shuffle=False)
        if config.augment:
            train_set = Augmented(train_set)
        channels = {name: task.channels for name, task in self.tasks.items()}
        self.model = build_model(config.model, channels, config.width).to(self.device)
        if config.init_checkpoint:
            load_weights(self.model, config.init_checkpoint, self.model_record())
        self.relayout()
        self.task_weights = None
        if config.task_weighting == "adaptive":
            self.task_weights = self.adaptive_task_weights()
            if config.window >= config.iterations:
                self.warn(f"adaptive task weighting starts once --window {config.window} losses "
                          f"are in, and --iterations is {config.iterations}; the weights may "
                          "stay 1")
        self.train_loader = self.loader(train_set, shuffle=True)
        self.val_loader = self.loader(val_set, shuffle=False)
        if len(self.train_loader) < distributed.world_size():
            raise PrunekitError(f"the training split gives {len(self.train_loader)} batch(es) of "
                                f"{config.batch_size} per epoch, fewer than the "
                                f"{distributed.world_size()} processes; lower --batch-size or "
                                "the number of processes")

    def adaptive_task_weights(self) -> AdaptiveTaskWeights:
        """AdapMTL weighting; each task's scale is the parameters its loss trains (the shared
        trunk and its head) over the mean of that count across tasks."""
        layout, config = self.layout, self.config
        trained = {task: layout.numel(layout.shared) + layout.numel(names)
                   for task, names in layout.heads.items()}
        mean = sum(trained.values()) / len(trained)
        return AdaptiveTaskWeights(config.tasks, config.window,
                                   {task: n / mean for task, n in trained.items()})

    def relayout(self) -> None:
        """Resolve the layout against the model's current modules (after filter removal too)."""
        self.layout = model_layout(self.model).for_tasks(self.config.tasks).resolve(self.model)

    def check_baseline_data(self) -> None:
        """Warn when the --baseline run was evaluated on other data: its Delta_T would compare
        metrics of different samples."""
        theirs = self.baseline.get("config", {})
        differ = [f"--{key.replace('_', '-')}" for key in ("dataset", "image_size", "val_samples")
                  if theirs.get(key) != as_json(getattr(self.config, key))]
        if self.baseline.get("data", self.report["data"]) != self.report["data"]:
            differ.append("the data read (report 'data')")
        if differ:
            self.warn(f"the baseline run differs in {', '.join(differ)}: Delta_T compares "
                      "metrics of different evaluations")
        elif "data" not in self.baseline:
            self.warn("the baseline report has no 'data' record (an older prunekit, which "
                      "evaluated the first --val-samples samples, not samples spread over the "
                      "split): Delta_T may compare different evaluations")

    def loader(self, dataset, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.config.seed)
        # An augmented set takes each epoch's seed with its shuffled indices.
        augmented = isinstance(dataset, Augmented)
        if augmented and not shuffle:
            raise ValueError("an augmented dataset is read in a shuffled order")
        sampler = SeededSampler(dataset, generator) if augmented else None
        return DataLoader(dataset, batch_size=self.config.batch_size,
                          shuffle=shuffle and sampler is None, sampler=sampler,
                          drop_last=shuffle and len(dataset) >= self.config.batch_size,
                          generator=generator, num_workers=self.config.workers,
                          # workers start afresh each epoch: a persistent loader draws its
                          # workers' seed from the generator at its first epoch only, so a
                          # resumed run's batch order would differ from the uninterrupted one's
                          persistent_workers=False)

    def prune(self, sparsity: float, scorer: Scorer | None = None,
              within: Masks | None = None) -> PruneResult:
        """Score the model as it is now and threshold to ``sparsity`` (inside ``within``).
        When resuming, a prune the stopped run had made returns its recorded masks."""
        if self.replaying():
            result = self.recorded_prune(len(self.prunes))
        else:
            result = self.compute_prune(sparsity, scorer or self.scorer, within)
        self.prunes.append({"masks": {k: m.cpu() for k, m in result.masks.items()},
                            "keep_ratio": result.keep_ratio, "requested": result.requested,
                            "achieved": result.achieved})
        return result

    def compute_prune(self, sparsity: float, scorer: Scorer, within: Masks | None) -> PruneResult:
        config = self.config
        batches = (Batches(self.train_loader, config.score_batches, self.device, config.seed)
                   if scorer.needs_data else [])
        result = compute_masks(self.model, self.layout, self.tasks, batches, scorer,
                               self.arbiter, config.thresholder, sparsity, config.compensate,
                               self.device, progress=self.progress, seed=config.seed,
                               scope=config.scope, within=within, input_shape=self.input_shape)
        if abs(result.achieved - sparsity) > contract.SPARSITY_TOLERANCE:  # --no-compensate
            self.warn(f"the merged masks are {result.achieved:.3f} sparse, {sparsity:g} was "
                      "requested: --no-compensate keeps each task's own keep ratio")
        for phase, seconds in result.timings.items():
            add_seconds(self.timings, phase, seconds)
        self.report["keep_ratio_per_task"] = result.keep_ratio
        if scorer.per_task and len(self.tasks) > 1:
            self.report["task_overlap"] = task_overlap(result, self.layout, config.metrics)
        result.saliency = None  # one float per weight and task: free it once the masks exist
        return result

    def replaying(self) -> bool:
        """Whether a resumed run is still before the training phase it stopped in."""
        return self.resume is not None and self.phases_started <= self.resume["phase"]

    def recorded_prune(self, index: int) -> PruneResult:
        recorded = self.resume["prunes"][index]
        params = dict(self.model.named_parameters())
        for name, mask in recorded["masks"].items():
            if name not in params or params[name].shape != mask.shape:
                raise PrunekitError(f"{str(self.out_dir / RESUME_FILE)!r} does not fit the run "
                                    f"it describes: its mask of {name} is "
                                    f"{list(mask.shape)}, the model has "
                                    f"{list(params[name].shape) if name in params else 'none'}")
        masks = {k: m.to(self.device) for k, m in recorded["masks"].items()}
        return PruneResult(masks, {}, recorded["keep_ratio"], recorded["requested"],
                           recorded["achieved"])

    def train_phase(self, masks: AppliedMasks | None, iterations: int, lr: float, phase: str,
                    after_step=None, extra_groups: list[dict] | None = None) -> None:
        """Train for ``iterations`` steps; the seconds go to ``timings[phase]``. When resuming,
        a phase the stopped run had finished is skipped, and the one it stopped in goes on
        from its checkpoint."""
        index = self.phases_started
        self.phases_started += 1
        resumption = None
        if self.resume is not None and index < self.resume["phase"]:
            return  # trained before the stop; the restored report has its entry
        if self.resume is not None and index == self.resume["phase"]:
            resumption = self.restore(masks, after_step)
        checkpoints = (PhaseCheckpoints(self, index, phase, masks, after_step)
                       if self.resumable() else None)
        with timed(self.timings, phase):
            self.stop.in_training = checkpoints is not None
            try:
                history = train(distributed.for_training(self.model), self.tasks,
                                self.train_loader, iterations, lr, masks,
                                self.device, self.progress, phase, after_step, extra_groups,
                                self.task_weights, resumption, checkpoints)
            except NonFiniteLossError as error:
                raise self.with_checkpoint_kept(error) from error
            finally:
                self.stop.in_training = False
            if self.stop.requested:  # SIGTERM after the phase's last step was checked
                raise RunStopped(f"stopped by SIGTERM at the end of {phase}; resume with: "
                                 f"prunekit run --resume {self.out_dir}")
            # DistributedDataParallel hands rank 0's buffers (BatchNorm statistics) to the
            # others before each forward; after the last one each rank has its own
            distributed.from_writer(self.model.buffers())
        self.report["training"].append({
            "phase": phase, "iterations": iterations, "lr": lr,
            "first_loss": history[0] if history else None,
            "last_loss": history[-1] if history else None})

    def restore(self, masks: AppliedMasks | None, after_step) -> Resumption:
        """The state of the phase the resumed run stopped in: weights, live masks, hooks, the
        report and timings so far; returns where its training goes on."""
        state = self.resume
        try:
            self.model.load_state_dict(state["model"])
            if masks is not None and state["masks"] is not None:
                for name, live in masks.named_masks().items():
                    live.copy_(state["masks"][name])
            hooks = {"after_step": after_step, "task_weights": self.task_weights}
            for name, hook_state in state["hooks"].items():
                hooks[name].load_state_dict(hook_state)
            resumption = Resumption(**state["resumption"])
        except (RuntimeError, KeyError, TypeError, AttributeError) as exc:
            raise PrunekitError(f"{str(self.out_dir / RESUME_FILE)!r} does not fit the run it "
                                f"describes: {one_line(exc, 300)}") from exc
        self.report, self.timings = state["report"], state["timings"]
        self.resume = {"phase": state["phase"]}  # the rest is in place: let it go
        return resumption

    def with_checkpoint_kept(self, error: NonFiniteLossError) -> NonFiniteLossError:
        path = self.out_dir / RESUME_FILE
        if self.writer and path.is_file():
            return NonFiniteLossError(f"{error}; the last checkpoint before it is kept in {path}")
        return error

    def elapsed(self) -> float:
        """Seconds this run has taken, before a stop included."""
        return round(self.elapsed_before + time.perf_counter() - self.started, 3)

    def pretrain(self) -> None:
        """Dense weights to prune: trained here, unless ``build`` loaded ``init_checkpoint``."""
        if not self.config.init_checkpoint:
            self.train_phase(None, self.config.iterations, self.config.lr, "pretraining")

    def execute(self) -> Masks:
        """Run the mode, evaluate, write the checkpoint; returns the final masks."""
        config = self.config
        if config.dense:
            masks = dense_masks(self.layout)
            self.train_phase(None, config.iterations, config.lr, "training")
        else:
            masks = MODES[config.mode].execute(self)
        with timed(self.timings, "evaluation"):
            metrics = evaluate(self.model, self.tasks, self.val_loader, self.device,
                               self.progress)
        checkpoint = self.checkpoint(masks)
        # counted from the weights as saved, never taken from a plugin
        sparsity = self.achieved_sparsity or measured_sparsity(checkpoint["model"],
                                                               checkpoint["masks"], self.layout)
        self.report.update({
            "sparsity": {"requested": self.requested_sparsity(), **sparsity},
            "metrics": metrics,
            "parameters": {"total": sum(p.numel() for p in self.model.parameters()),
                           "prunable": self.layout.numel(self.layout.params)},
        })
        if self.task_weights:
            self.report["task_weighting"] = {"window": config.window,
                                             "scales": self.task_weights.scales,
                                             "final_weights": self.task_weights.weights}
        if self.baseline:
            self.report["delta_t"] = delta_t(metrics, self.baseline["metrics"], self.tasks)
        if self.writer:
            save_torch(self.out_dir / "checkpoint.pt", checkpoint)
        return masks

    def requested_sparsity(self) -> float | None:
        """None when a structured run's budget is a share of parameters instead."""
        config = self.config
        if config.dense:
            return 0.0
        return None if self.achieved_sparsity and config.params_ratio else config.sparsity

    def checkpoint(self, masks: Masks) -> dict:
        return {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "masks": {name: mask.cpu() for name, mask in masks.items()},
            "config": {**self.model_record(),
                       # a structured run's model (or one started from it) is smaller than
                       # the one the builder makes
                       "channels": kept_channels(self.model)},
        }

    def model_record(self) -> dict:
        """What rebuilds the run's model: builder name, width and the tasks' output channels."""
        return {"model": self.config.model, "width": self.config.width,
                "task_channels": {n: t.channels for n, t in self.tasks.items()}}

    def leave(self) -> None:
        """Remove a non-writing rank's folder and leave the process group this run joined."""
        if not getattr(self, "writer", True) and hasattr(self, "out_dir"):
            shutil.rmtree(self.out_dir, ignore_errors=True)
        if getattr(self, "joined_group", False):
            distributed.stop()

    def finish(self, error: BaseException | None) -> None:
        """Write report.json: complete only when the run finished; never a stale checkpoint.
        A finished run needs no resume.pt; a failed or stopped one keeps its last one."""
        if error is not None:
            self.report["error"] = user_message(error) or type(error).__name__
            self.report["stopped"] = isinstance(error, RunStopped)
            if self.report_name == REPORT:  # else the checkpoint is an earlier run's: it stays
                (self.out_dir / "checkpoint.pt").unlink(missing_ok=True)
        elif self.writer:
            (self.out_dir / RESUME_FILE).unlink(missing_ok=True)
        self.write_report(complete=error is None)
        if error is None and self.writer:
            (self.out_dir / INCOMPLETE_REPORT).unlink(missing_ok=True)

    def write_report(self, complete: bool) -> None:
        """report.json when complete; before that (at checkpoints, after a failure) the
        incomplete report, in ``report_name``. Strict JSON: a value that is not a finite number
        is written as null, with a warning naming it."""
        self.report["timings"] = {**self.timings, "total": self.elapsed()}
        self.report["complete"] = complete
        for key in non_finite_keys(self.report):
            message = f"report.json: {key} is not a finite number; written as null"
            if message not in self.report["warnings"]:
                self.warn(message)
        if self.writer:
            write_json(self.out_dir / (REPORT if complete else self.report_name), self.report)


def run(config: RunConfig, show_progress: bool = False, warn=print_warning,
        resume: dict | None = None) -> RunResult:
    """Run the whole pipeline; raises PrunekitError for problems the user can fix.

    ``warn`` receives one line for each warning (by default printed on stderr). ``resume``:
    the checkpoint of a stopped run to go on with (see ``resume_run``).
    """
    current = Run(config, tqdm_progress if show_progress else no_progress, warn, resume)
    try:
        current.prepare()
        current.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            with current.stop:
                current.execute()
        except BaseException as error:  # record the failure, then let the caller report it
            try:
                current.finish(error)
            except PrunekitError:  # no report.json either (a full disk): the first error tells
                pass
            raise
        current.finish(None)
        return RunResult(current.report, current.out_dir, current.writer)
    finally:
        current.leave()


def resume_run(folder: str | Path, show_progress: bool = False,
               warn=print_warning) -> RunResult:
    """Go on with the stopped run in ``folder`` from its last checkpoint, with its settings."""
    state = read_resume(folder)
    try:
        config = RunConfig(**{**state["config"], "out": str(folder)})
    except TypeError as exc:
        raise PrunekitError(f"{str(Path(folder) / RESUME_FILE)!r} was written by another "
                            f"prunekit version ({one_line(exc, 200)})") from exc
    return run(config, show_progress, warn, resume=state)


def check_distributed(run: Run) -> None:
    """What a torchrun launch cannot do yet: runs that change the model or learn thresholds
    outside DistributedDataParallel's gradient averaging."""
    if run.removes_filters():
        raise PrunekitError("structured pruning (a filter scorer) removes channels while "
                            "training and runs in one process; drop --nproc / torchrun")
    if run.thresholder and run.thresholder.learns:
        raise PrunekitError(f"thresholder {run.config.thresholder!r} learns thresholds outside "
                            "the model and runs in one process; drop --nproc / torchrun")


def check_filter_mode(config: RunConfig, scorer: Scorer) -> None:
    if scorer.per_task:
        raise PrunekitError(f"scorer {config.scorer!r} scores filters per task; structured "
                            "pruning ranks channels by one joint score ({JOINT: ...})")
    if config.mode != "iterative":
        raise PrunekitError(f"scorer {config.scorer!r} scores whole filters; use --mode "
                            f"iterative, which removes the lowest-scored channels while training, "
                            f"not --mode {config.mode}")
    if config.rewind:
        raise PrunekitError("--rewind resets surviving weights of an element-wise mask; a "
                            "structured run changes the architecture (see --retrain-from-scratch)")


def data_record(example: torch.Tensor, train_set, val_set) -> dict:
    """What the run read: the loader (which tells a dataset's layouts apart), the samples'
    size (from the first one, ``example``) and the splits' lengths, as the report keeps them."""
    return {"loader": type(train_set).__name__,
            "image_size": list(example.shape[-2:]),
            "train_samples": len(train_set), "val_samples": len(val_set)}


def as_json(value):
    """``value`` as it reads back from report.json (tuples become lists)."""
    return json.loads(json.dumps(value))


def evenly_spaced(length: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(length)``, the first one 0."""
    return [index * length // count for index in range(count)]


def hold_out(dataset, share: float, most: int) -> tuple[Subset, Subset]:
    """The dataset without its last ``share`` (at least one sample, at most ``most`` when
    positive), and those samples."""
    held = max(1, min(int(len(dataset) * share), most if most > 0 else len(dataset)))
    if held >= len(dataset):
        raise PrunekitError(f"the training split has {len(dataset)} sample(s); holding some out "
                            "to choose the retraining learning rate needs at least 2")
    cut = len(dataset) - held
    return Subset(dataset, range(cut)), Subset(dataset, range(cut, len(dataset)))


def holds_complete_run(folder: Path) -> bool:
    """Whether ``folder`` holds the report of an earlier run that completed."""
    try:
        return json.loads((folder / REPORT).read_text()).get("complete") is True
    except (OSError, ValueError, AttributeError):
        return False


def check_out_dir(path: str | Path) -> None:
    if Path(path).exists() and not Path(path).is_dir():
        raise PrunekitError(f"output folder {str(path)!r} is an existing file")


def check_checkpoint_path(path: str | Path) -> None:
    path = Path(path)
    if not path.exists():
        raise PrunekitError(f"checkpoint {str(path)!r} does not exist")
    if not path.is_file():
        raise PrunekitError(f"checkpoint {str(path)!r} is not a file")


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    check_checkpoint_path(path)
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors alike: the file is not a checkpoint
        raise PrunekitError(f"{str(path)!r} could not be read as a checkpoint "
                            f"({type(exc).__name__}: {one_line(exc, 200)})") from exc
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise PrunekitError(f"{str(path)!r} is not a prunekit checkpoint (no 'model' state dict)")
    return checkpoint


def load_weights(model: torch.nn.Module, path: str | Path, expected: dict | None = None) -> None:
    """Load a checkpoint's weights into ``model``; a mismatch is one clear error.

    ``expected`` (model name, width, task channels) is compared with what the checkpoint was
    written for. A checkpoint of a structured run first shrinks ``model`` to its channel counts.
    """
    apply_checkpoint(model, read_checkpoint(path, next(model.parameters()).device), path,
                     expected)


def apply_checkpoint(model: torch.nn.Module, checkpoint: dict, path: str | Path,
                     expected: dict | None = None) -> None:
    """``load_weights`` for a checkpoint already read from ``path``."""
    written_for = checkpoint.get("config", {})
    for key, value in (expected or {}).items():
        if key in written_for and written_for[key] != value:
            raise PrunekitError(f"checkpoint {str(path)!r} does not fit this model: it was "
                                f"written for {key} {written_for[key]}, not {value}")
    try:
        channels = written_for.get("channels")
        if channels:
            shrink_to(model, channels)
        model.load_state_dict(checkpoint["model"], strict=True)
    except (RuntimeError, TypeError, AttributeError, KeyError, PrunekitError) as exc:
        raise PrunekitError(f"checkpoint {str(path)!r} does not fit this model (same --model, "
                            f"--width and --tasks?): {one_line(exc, 300)}") from exc


def load_checkpoint(path: str | Path, device: str = "cpu"):
    """Rebuild the pruned model from ``checkpoint.pt``; returns ``(model, masks)``."""
    checkpoint = read_checkpoint(path, device)
    config = checkpoint["config"]
    model = build_model(config["model"], config["task_channels"], config["width"]).to(device)
    apply_checkpoint(model, checkpoint, path)
    return model, checkpoint["masks"]
