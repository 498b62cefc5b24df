"""What a run depends on: ``RunConfig``, its checks that need no plugin, and the QUICK settings.

The checks that depend on the path a run takes (``--mode`` with its plugins) belong to that
path's module in ``prunekit.pipeline.modes``, which also fills in the mode's defaults
(``modes.resolved``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ..api import check_sparsity, check_uncovered
from ..core.semi_structured import Pattern
from ..errors import PrunekitError, UnknownNameError
from ..tasks import SCORE_RESOLUTIONS
from ..training.loop import LR_SCHEDULES, OptimiserSettings
from ..training.task_weighting import fixed_task_weights

DEFAULT_TASKS = ("seg", "depth", "normal")
TASK_WEIGHTINGS = ("fixed", "adaptive")


@dataclass
class RunConfig:
    """Everything a run depends on; ``report.json`` records it, resolved, under ``config``.

    ``scorer``, ``thresholder`` and ``finetune_*`` left as None take the mode's defaults
    (``prunekit.pipeline.modes.resolved``); ``scope`` None takes the thresholder's default
    scope.
    """

    mode: str = "static"             # static | pretrained | dynamic | iterative
    scorer: str | None = None
    arbiter: str = "or"
    thresholder: str | None = None
    scope: str | None = None
    sparsity: float = 0.9
    compensate: bool = True          # bisect the per-task keep ratio to hit the sparsity
    pattern: str | None = None       # N:M semi-structured sparsity, e.g. "2:4" (replaces sparsity)
    uncovered: str = "dense"         # with a pattern: tensors it cannot cover (dense|unstructured)
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
    score_batch_size: int | None = None   # None: batch_size
    score_resolution: str = "input"  # scoring losses at the input size | the net's output size
    batch_size: int = 8
    workers: int = 0                 # data-loading processes (0: load in the main process)
    augment: bool = False            # random scale, crop and flip of training samples
    lr: float = 2e-3
    weight_decay: float = 0.0        # Adam's weight decay on the model's weights, every phase
    lr_schedule: str = "cosine"      # cosine (decayed to zero per phase) | step
    lr_step_every: int | None = None      # step schedule: steps between decays
    lr_step_factor: float | None = None   # step schedule: what each decay multiplies lr by
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
    task_loss_weights: tuple[str, ...] = ()  # TASK=WEIGHT fixed factors of the training losses
    window: int = 400                        # adaptive task weighting: losses per task averaged
    checkpoint_every: int = 100              # training steps between resume checkpoints (0: none)

    def validate(self) -> None:
        """The checks every run needs, whatever its mode."""
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
        if self.nm_pattern is not None:  # a pattern that does not parse is an error
            check_uncovered(self.uncovered)
        if not self.tasks:
            raise PrunekitError("give at least one task")
        if len(set(self.tasks)) != len(self.tasks):
            raise PrunekitError(f"tasks repeat: {','.join(self.tasks)}")
        positive = {"width": self.width, "batch size": self.batch_size, "lr": self.lr,
                    "score batch size": self.score_batch_size,
                    "lr step every": self.lr_step_every, "lr step factor": self.lr_step_factor,
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
        if self.weight_decay < 0:
            raise PrunekitError(f"weight decay must be >= 0, got {self.weight_decay}")
        self.check_lr_schedule()
        fixed_task_weights(self.task_loss_weights, self.tasks)
        if self.task_weighting not in TASK_WEIGHTINGS:
            raise UnknownNameError("task weighting", self.task_weighting, TASK_WEIGHTINGS)
        if self.score_resolution not in SCORE_RESOLUTIONS:
            raise UnknownNameError("score resolution", self.score_resolution, SCORE_RESOLUTIONS)
        if self.window < 2:
            raise PrunekitError(f"window must be at least 2 losses, got {self.window}")
        if self.params_ratio is not None and not 0 < self.params_ratio < 1:
            raise PrunekitError(f"params ratio must be strictly between 0 and 1, "
                                f"got {self.params_ratio}")
        if self.retrain_lrs and len(self.retrain_lrs) > 1 and not self.retrain_from_scratch:
            raise PrunekitError("several --lr values are a learning-rate sweep for "
                                "--retrain-from-scratch; give one --lr, or add the flag")

    def check_lr_schedule(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise UnknownNameError("lr schedule", self.lr_schedule, LR_SCHEDULES)
        if self.lr_schedule == "step" and None in (self.lr_step_every, self.lr_step_factor):
            raise PrunekitError("--lr-schedule step needs --lr-step-every N and "
                                "--lr-step-factor F")

    def optimiser_settings(self) -> OptimiserSettings:
        """Weight decay and schedule of every training phase (--lr-step-* apply to step)."""
        step = self.lr_schedule == "step"
        return OptimiserSettings(self.weight_decay, self.lr_schedule,
                                 self.lr_step_every if step else None,
                                 self.lr_step_factor if step else None)

    @property
    def nm_pattern(self) -> Pattern | None:
        """``pattern`` parsed (None without one)."""
        return Pattern.parse(self.pattern) if self.pattern is not None else None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# Settings that make a run take seconds: for checking an installation, and for tests.
QUICK = dict(width=0.125, image_size=(32, 40), iterations=4, score_batches=1, batch_size=2,
             val_samples=4, prune_rounds=2, update_interval=1, prune_interval=1)
