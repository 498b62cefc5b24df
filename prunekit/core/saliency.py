"""Shared machinery for gradient-based scorers: sum a criterion of (weight, gradient) over batches.

Per-task scoring runs one forward pass per batch and then one backward pass per task on the same
graph, each over that task's tensors only (the shared ones and its own head), so K tasks cost one
forward and K backwards rather than K forwards.
"""
from __future__ import annotations

import contextlib
from abc import abstractmethod
from typing import Callable, Iterator

import torch
from torch import nn

from . import distributed
from ..interfaces import JOINT, Saliency, Scorer, ScoringContext

# criterion(weight, gradient) -> per-element score
Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Run in training mode; restore buffers (BatchNorm statistics) and every module's mode.

    Modules keep their own modes (a model in training with frozen BatchNorm stays so).
    """
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    modes = {module: module.training for module in model.modules()}
    model.train()
    try:
        yield
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        for module, training in modes.items():
            module.training = training


def task_losses(context: ScoringContext, batch: dict) -> dict[str, torch.Tensor]:
    outputs = context.model(batch["image"])
    losses = {}
    for name, task in context.tasks.items():
        losses[name] = task.loss(outputs[name], batch[name])
        context.check_loss(name, losses[name], "scoring")
    return losses


def score_shape(param: torch.Tensor, granularity: str) -> torch.Size:
    """One score per element, or per output filter (the first dimension)."""
    return param.shape if granularity == "element" else param.shape[:1]


def accumulate_scores(context: ScoringContext, criterion: Criterion, per_task: bool,
                      granularity: str = "element") -> Saliency:
    """Sum ``criterion(w, dL/dw)`` over the scoring batches.

    The criterion returns one score per element, or per output filter for ``"filter"``
    granularity. per_task: one entry per task, from that task's loss, over
    ``layout.task_params(task)``.
    Otherwise one ``JOINT`` entry from the summed loss over every prunable tensor.
    """
    layout, params = context.layout, context.layout.params
    groups = ({task: layout.task_params(task) for task in context.tasks} if per_task
              else {JOINT: list(params)})
    scores = {key: {n: params[n].new_zeros(score_shape(params[n], granularity),
                                           dtype=torch.float32) for n in names}
              for key, names in groups.items()}
    with preserved_state(context.model):
        for batch in context.progress(context.batches, "scoring"):
            losses = task_losses(context, batch)
            if not per_task:
                losses = {JOINT: sum(losses.values())}
            for i, (key, names) in enumerate(groups.items()):
                tensors = [params[n] for n in names]
                grads = torch.autograd.grad(losses[key], tensors, retain_graph=i < len(groups) - 1)
                for name, weight, grad in zip(names, tensors, grads):
                    scores[key][name] += criterion(weight.detach(), grad).float()
    # several processes (torchrun) each scored their share of the batches
    distributed.sum_across(t for tensors in scores.values() for t in tensors.values())
    return scores


def normalise(saliency: Saliency) -> Saliency:
    """Divide each entry, in place, by its sum over all its tensors (DiSparse's normalisation)."""
    for tensors in saliency.values():
        total = sum(float(t.sum()) for t in tensors.values())
        if total > 0:
            for t in tensors.values():
                t.div_(total)
    return saliency


class GradientScorer(Scorer):
    """A scorer that sums ``criterion(w, dL/dw)`` over the scoring batches, then normalises.

    Subclasses give the criterion; ``per_task`` chooses per-task (DiSparse) or joint scoring;
    with ``granularity = "filter"`` the criterion returns one score per output filter.
    """

    @staticmethod
    @abstractmethod
    def criterion(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Per-element score from a weight and its gradient on one batch."""

    def score(self, context: ScoringContext) -> Saliency:
        return normalise(accumulate_scores(context, self.criterion, self.per_task,
                                           self.granularity))
