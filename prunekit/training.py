"""Sparse training and evaluation of a multi-task model."""
from __future__ import annotations

import math
from typing import Callable, Iterable, Iterator, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader

from . import distributed
from .errors import NonFiniteLossError
from .masks import AppliedMasks
from .task_weighting import AdaptiveTaskWeights
from .tasks import Task

Progress = Callable[[Iterable, str], Iterable]
# after_step(step, batch, optimiser): called after every optimiser step (dynamic sparse training)
AfterStep = Callable[[int, dict, torch.optim.Optimizer], None]


def no_progress(items: Iterable, label: str) -> Iterable:
    return items


def check_loss(task: str, loss: torch.Tensor, where: str) -> None:
    value = float(loss.detach())
    if not math.isfinite(value):
        raise NonFiniteLossError(f"the {task!r} loss is {value} during {where}; lower --lr, "
                                 "or check the data and model for NaN/inf")


def to_device(batch: dict, device: torch.device) -> dict:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def endless(loader: DataLoader, device: torch.device) -> Iterator[dict]:
    """The loader's batches, epoch after epoch; under torchrun this rank's share of each epoch
    (every rank walks the same seeded order, so together they see each batch once)."""
    while True:
        for batch in distributed.shard(loader):
            yield to_device(batch, device)


def train(model: nn.Module, tasks: Mapping[str, Task], loader: DataLoader, iterations: int,
          lr: float, masks: AppliedMasks | None, device: torch.device,
          progress: Progress = no_progress, label: str = "training",
          after_step: AfterStep | None = None,
          extra_groups: list[dict] | None = None,
          task_weights: AdaptiveTaskWeights | None = None) -> list[dict[str, float]]:
    """Adam on the summed task losses with cosine learning-rate decay.

    With ``masks``, pruned weights get zero gradients and are re-zeroed after each step, so they
    stay exactly zero. ``label`` names the phase in progress bars and errors. ``extra_groups``
    are Adam parameter groups with their own settings (learnable thresholds); every other
    parameter trains at ``lr``. With ``task_weights`` the sum is weighted by its current weights,
    and each step's losses update them. Returns the per-task losses of every step.
    """
    model.train()
    extra_groups = extra_groups or []
    special = {id(p) for group in extra_groups for p in group["params"]}
    optimiser = torch.optim.Adam(
        [{"params": [p for p in model.parameters() if id(p) not in special]}, *extra_groups],
        lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(iterations, 1))
    history = []
    batches = endless(loader, device)
    for step in progress(range(iterations), label):
        batch = next(batches)
        outputs = model(batch["image"])
        losses = {name: task.loss(outputs[name], batch[name]) for name, task in tasks.items()}
        for name, loss in losses.items():
            check_loss(name, loss, f"{label} step {step}")
        optimiser.zero_grad(set_to_none=True)
        weights = task_weights.weights if task_weights else {}
        sum(weights.get(name, 1.0) * loss for name, loss in losses.items()).backward()
        if masks is not None:
            masks.zero_pruned_gradients()
        optimiser.step()
        schedule.step()
        if masks is not None:
            masks.zero_pruned()
        if after_step is not None:
            after_step(step, batch, optimiser)
        history.append({name: float(loss.detach()) for name, loss in losses.items()})
        if task_weights is not None:
            task_weights.update(history[-1])
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
