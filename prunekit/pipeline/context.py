"""``RunContext``: every piece of a run's state, declared in one place.

The engine (``prunekit.pipeline.engine``) fills it in order: the configuration and the plugins
when the run is checked, the device and output folder when it is prepared, then data and model
when they are built. The steps (``prunekit.pipeline.steps``) and the modes read and write it;
state only one mode needs (a structured run's budget) lives on that mode's object instead.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..core.batch import Progress
from ..core.layout import ResolvedLayout
from ..interfaces import Arbiter, Scorer, Thresholder
from ..models import model_layout
from ..tasks import Task
from ..training.resume import StopRequest
from ..training.task_weighting import AdaptiveTaskWeights
from .config import RunConfig


@dataclass(eq=False)
class RunContext:
    # --- given: settings and where messages go
    config: RunConfig                       # resolved (``modes.resolved``)
    progress: Progress
    print_warning: Callable[[str], None]
    resume: dict | None = None              # a stopped run's checkpoint; after the restore,
    # only {"phase": index} is kept (prunekit.training.resume)

    # --- results so far: what report.json and resume.pt hold
    report: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    elapsed_before: float = 0.0             # seconds of the stopped run this one resumes
    prunes: list[dict] = field(default_factory=list)  # every prune's masks, for checkpoints
    phases_started: int = 0                 # training phases begun (skipped ones included)
    stop: StopRequest = field(default_factory=StopRequest)

    # --- check: the path the run takes and the plugins it calls
    resumable: bool = True                  # checkpoints can resume the mode (not one that
    # removes channels or learns thresholds while training)
    scorer: Scorer | None = None            # None: nothing is scored (dense, learned)
    arbiter: Arbiter | None = None
    thresholder: Thresholder | None = None

    # --- prepare: where the run goes
    device: torch.device | None = None
    writer: bool = True                     # False on torchrun ranks other than 0
    joined_group: bool = False              # this run started the process group
    out_dir: Path | None = None
    report_name: str = "report.json"        # report.incomplete.json while an earlier
    # complete run's report stays in out_dir (prunekit.pipeline.outputs)
    baseline: dict | None = None            # --baseline's report

    # --- build: data and model
    tasks: dict[str, Task] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None  # one sample's (1, C, H, W), for data-free scorers
    train_loader: DataLoader | None = None
    val_loader: DataLoader | None = None
    model: nn.Module | None = None
    layout: ResolvedLayout | None = None
    task_weights: AdaptiveTaskWeights | None = None  # --task-weighting adaptive

    @property
    def per_task(self) -> bool:
        """Whether the run scores each task apart and merges with the arbiter."""
        return bool(self.scorer and self.scorer.per_task)

    def warn(self, message: str) -> None:
        """Tell the user now and keep the warning in the report."""
        self.report["warnings"].append(message)
        self.print_warning(message)

    def elapsed(self) -> float:
        """Seconds this run has taken, before a stop included."""
        return round(self.elapsed_before + time.perf_counter() - self.started, 3)

    def relayout(self) -> None:
        """Resolve the layout against the model's current modules (after filter removal too)."""
        self.layout = model_layout(self.model).for_tasks(self.config.tasks).resolve(self.model)

    def model_record(self) -> dict:
        """What rebuilds the run's model: builder name, width and the tasks' output channels."""
        return {"model": self.config.model, "width": self.config.width,
                "task_channels": {n: t.channels for n, t in self.tasks.items()}}
