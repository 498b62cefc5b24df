"""Sparse training and evaluation of a multi-task model."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..core import distributed
from ..core.batch import Progress, check_loss, no_progress, to_device
from ..core.masks import AppliedMasks
from .task_weighting import AdaptiveTaskWeights, combined_weights
from ..tasks import Task

# after_step(step, batch, optimiser): called after every optimiser step (dynamic sparse training)
AfterStep = Callable[[int, dict, torch.optim.Optimizer], None]


class Epochs:
    """The loader's batches, epoch after epoch, and where they stand (``position``) so that a
    resumed run goes on with the batch it would have had next.

    A shuffling loader draws each epoch's order from its generator when the epoch starts, so
    the position is that generator's state then and the batches taken since. Under torchrun
    each rank takes an equal share of each epoch (every rank walks the same seeded order, so
    together they see the epoch's batches once; a remainder of fewer than N batches is left).
    """

    def __init__(self, loader: DataLoader, device: torch.device, position: dict | None = None):
        self.loader, self.device = loader, device
        self.epoch_start: torch.Tensor | None = None
        self.taken = 0
        self.resumed_epoch = None
        if position is not None:
            generator = getattr(loader, "generator", None)  # any iterable of batches serves
            if generator is not None and position["generator"] is not None:
                generator.set_state(position["generator"])
            # The epoch is started and the batches trained on before the stop are read now,
            # so the loader draws from its generator what it had drawn then (its order when
            # the first batch is read), even if no further batch is asked for.
            self.resumed_epoch = self.next_epoch()
            for _ in range(position["taken"]):
                next(self.resumed_epoch)
            self.taken = position["taken"]

    def position(self) -> dict:
        return {"generator": self.epoch_start, "taken": self.taken}

    def next_epoch(self) -> Iterator[dict]:
        generator = getattr(self.loader, "generator", None)
        self.epoch_start = generator.get_state() if generator is not None else None
        self.taken = 0
        return self.share_of(iter(self.loader))  # iter: the loader draws from its generator

    def share_of(self, batches: Iterator[dict]) -> Iterator[dict]:
        """This rank's equal share of an epoch. The epoch is read to its end (the remainder
        is loaded and left): a sampler draws from its generator once more as it finishes, and
        the next epoch's order depends on that draw."""
        ranks = distributed.world_size()
        shared = len(self.loader) // ranks * ranks
        for index, batch in enumerate(batches):
            if index < shared and index % ranks == distributed.rank():
                yield batch

    def __iter__(self) -> Iterator[dict]:
        epoch = self.resumed_epoch or self.next_epoch()
        while True:
            for batch in epoch:
                self.taken += 1
                yield to_device(batch, self.device)
            epoch = self.next_epoch()


LR_SCHEDULES = ("cosine", "step")


@dataclass(frozen=True)
class OptimiserSettings:
    """What every training phase's Adam does besides its learning rate: weight decay on the
    model's weights (parameter groups of ``extra_groups`` keep their own) and the schedule,
    ``cosine`` (decayed to zero over the phase) or ``step`` (times ``step_factor`` every
    ``step_every`` steps of the phase)."""
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    step_every: int | None = None
    step_factor: float | None = None

    def scheduler(self, optimiser: torch.optim.Optimizer,
                  iterations: int) -> torch.optim.lr_scheduler.LRScheduler:
        if self.lr_schedule == "step":
            return torch.optim.lr_scheduler.StepLR(optimiser, step_size=self.step_every,
                                                   gamma=self.step_factor)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(iterations, 1))


@dataclass
class Resumption:
    """Where a training phase restarts: its steps done, optimiser and schedule states, losses so
    far, random generator states and the batch position (``Epochs.position``)."""
    step: int
    optimiser: dict
    schedule: dict
    history: list
    rng: dict
    batches: dict


class Checkpoints:
    """What ``train`` asks of the caller that keeps resumable checkpoints."""

    def due(self, steps_done: int) -> bool:
        """Whether to write a checkpoint after ``steps_done`` steps (or stop: SIGTERM)."""
        return False

    def write(self, state: Resumption) -> None:
        """Write the checkpoint; may raise to stop the run (after a SIGTERM)."""


def rng_states(device: torch.device) -> dict:
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_states(states: dict, device: torch.device) -> None:
    torch.set_rng_state(states["cpu"])
    if device.type == "cuda" and states["cuda"] is not None:
        torch.cuda.set_rng_state(states["cuda"], device)


def train(model: nn.Module, tasks: Mapping[str, Task], loader: DataLoader, iterations: int,
          lr: float, masks: AppliedMasks | None, device: torch.device, *,
          progress: Progress = no_progress, label: str = "training",
          after_step: AfterStep | None = None,
          extra_groups: list[dict] | None = None,
          task_weights: AdaptiveTaskWeights | None = None,
          loss_weights: Mapping[str, float] | None = None,
          settings: OptimiserSettings = OptimiserSettings(),
          resume: Resumption | None = None,
          checkpoints: Checkpoints | None = None) -> list[dict[str, float]]:
    """Adam on the summed task losses, its learning rate scheduled by ``settings`` (cosine
    decay by default).

    With ``masks``, pruned weights get zero gradients and are re-zeroed after each step, so they
    stay exactly zero. ``label`` names the phase in progress bars and errors. ``extra_groups``
    are Adam parameter groups with their own settings (learnable thresholds); every other
    parameter trains at ``lr`` with ``settings.weight_decay``. Each task's loss is multiplied by
    its fixed weight in ``loss_weights`` (1 for a task not named) and, with ``task_weights``,
    by its current adaptive weight; each step's losses update those. ``resume`` continues a
    phase a stopped run had begun; ``checkpoints`` is asked after every step whether to write
    one. Returns the per-task (unweighted) losses of every step.
    """
    model.train()
    extra_groups = extra_groups or []
    special = {id(p) for group in extra_groups for p in group["params"]}
    model_group = {"params": [p for p in model.parameters() if id(p) not in special],
                   "weight_decay": settings.weight_decay}
    optimiser = torch.optim.Adam([model_group, *extra_groups], lr=lr)
    schedule = settings.scheduler(optimiser, iterations)
    history, first = [], 0
    epochs = Epochs(loader, device, resume.batches if resume else None)
    if resume is not None:
        optimiser.load_state_dict(resume.optimiser)
        schedule.load_state_dict(resume.schedule)
        history, first = list(resume.history), resume.step
        set_rng_states(resume.rng, device)
    batches = iter(epochs)
    for step in progress(range(first, iterations), label):
        batch = next(batches)
        outputs = model(batch["image"])
        losses = {name: task.loss(outputs[name], batch[name]) for name, task in tasks.items()}
        for name, loss in losses.items():
            check_loss(name, loss, f"{label} step {step}")
        optimiser.zero_grad(set_to_none=True)
        weights = combined_weights(loss_weights or {}, task_weights)
        sum(weights.get(name, 1.0) * loss for name, loss in losses.items()).backward()
        if masks is not None:
            masks.zero_pruned_gradients()
        optimiser.step()
        schedule.step()
        if masks is not None:
            masks.zero_pruned()
        if after_step is not None:
            after_step(step, batch, optimiser)
        # under torchrun the mean over the ranks, so that every rank weighs the tasks alike
        history.append(distributed.mean_across(
            {name: float(loss.detach()) for name, loss in losses.items()}))
        if task_weights is not None:
            task_weights.update(history[-1])
        if checkpoints is not None and checkpoints.due(step + 1):
            checkpoints.write(Resumption(step + 1, optimiser.state_dict(), schedule.state_dict(),
                                         history, rng_states(device), epochs.position()))
    return history


@torch.no_grad()
def evaluate(model: nn.Module, tasks: Mapping[str, Task], loader: DataLoader,
             device: torch.device, progress: Progress = no_progress) -> dict[str, dict[str, float]]:
    model.eval()
    meters = {name: task.meter() for name, task in tasks.items()}
    for batch in progress(loader, "evaluating"):
        batch = to_device(batch, device)
        outputs = model(batch["image"])
        for name, meter in meters.items():
            meter.update(outputs[name], batch[name])
    return {name: meter.compute() for name, meter in meters.items()}
