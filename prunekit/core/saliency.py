"""Shared machinery for gradient-based scorers: sum a criterion of (weight, gradient) over batches.

Per-task scoring runs one forward pass per batch and then one backward pass per task on the same
graph, each over that task's tensors only (the shared ones and its own head), so K tasks cost one
forward and K backwards rather than K forwards.
"""
from __future__ import annotations

import contextlib
import os
from abc import abstractmethod
from typing import Callable, Iterator

import torch
from torch import nn

from . import distributed
from .layout import ResolvedLayout
from ..errors import PrunekitError
from ..interfaces import JOINT, Saliency, Scorer, ScoringContext
from ..tasks import nearest_resized

# criterion(weight, gradient) -> per-element score
Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Score in training mode, then put the model back as it was.

    Inside, every module is in training mode: BatchNorm normalises with each batch's own
    statistics and updates its running statistics, and dropout is active, as in the DiSparse
    code, which scores a network in training mode. Afterwards every buffer (the BatchNorm
    running statistics) is restored to its value before scoring and every module to its own
    earlier mode, so scoring changes neither the statistics nor a frozen BatchNorm's eval mode.
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
    """Each task's loss on ``batch``: on the model's prediction, or, for a task whose
    ``score_resolution`` is ``"output"``, on its head's own output against the target shrunk
    to that size by nearest neighbour (the DiSparse code's scoring loss)."""
    at_output = [name for name, task in context.tasks.items()
                 if task.score_resolution == "output"]
    with head_outputs(context.model, context.layout, at_output) as heads:
        outputs = context.model(batch["image"])
    losses = {}
    for name, task in context.tasks.items():
        prediction, target = outputs[name], batch[name]
        if name in heads:
            prediction = heads[name]
            target = nearest_resized(target, prediction.shape[-2:])
        losses[name] = task.loss(prediction, target)
        context.check_loss(name, losses[name], "scoring")
    return losses


@contextlib.contextmanager
def head_outputs(model: nn.Module, layout: ResolvedLayout,
                 tasks: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """While inside, each forward pass of ``model`` records what the head of each of ``tasks``
    returns (before the model resizes it to the input), by task."""
    captured: dict[str, torch.Tensor] = {}
    heads = {task: head_module(model, layout.heads[task]) for task in tasks}

    def recorder(task: str):
        def record(module, inputs, output):
            captured[task] = output
        return record

    hooks = [module.register_forward_hook(recorder(task))
             for task, (_, module) in heads.items()]
    try:
        yield captured
    finally:
        for hook in hooks:
            hook.remove()
    for task, (name, _) in heads.items():
        output = captured.get(task)
        if not (isinstance(output, torch.Tensor) and output.dim() == 4):
            got = "was not called" if output is None else f"returned {type(output).__name__}"
            raise PrunekitError(
                f"--score-resolution output needs the head of task {task!r} to return its "
                f"prediction as one [N, C, H, W] tensor; "
                f"{f'module {name!r}' if name else 'the model itself'} {got}")


def head_module(model: nn.Module, param_names: list[str]) -> tuple[str, nn.Module]:
    """The module holding all of a head's parameters: the deepest common one that runs a
    forward of its own (a ModuleList or ModuleDict only holds modules)."""
    common = os.path.commonprefix([name.split(".")[:-1] for name in param_names])
    while common and isinstance(model.get_submodule(".".join(common)),
                                (nn.ModuleList, nn.ModuleDict)):
        common = common[:-1]
    name = ".".join(common)
    return name, model.get_submodule(name)


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
