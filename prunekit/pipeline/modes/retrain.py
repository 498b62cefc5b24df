"""``--retrain-from-scratch``: structured pruning finds an architecture, which then trains anew.

Training that architecture from fresh weights often beats fine-tuning the inherited ones. Each
learning rate of the sweep (``--lr 1e-3,5e-4,1e-4``) trains the same fresh weights for
``--iterations`` steps; the one with the best ``--select-metric`` on samples held out of the
training split (never the validation split the report measures) is kept.

``--select-metric`` is ``delta_t`` (Delta_T against the dense model on the held-out samples) or
``TASK.METRIC`` such as ``seg.miou``; lower-is-better metrics are negated so higher always wins.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader

from ...errors import PrunekitError
from ...tasks import Task
from ...timing import timed
from ...training.loop import evaluate
from ...training.task_weighting import AdaptiveTaskWeights
from ..context import RunContext
from ..data import hold_out, loader
from ..report import delta_t
from ..steps import Steps
from .structured import Structured

SELECTION_SHARE = 0.1  # of the training split, held out to choose the learning rate


class RetrainFromScratch(Structured):
    name = "retrain"
    options = (Structured.options - {"finetune_iterations"}) | {"select_metric"}
    retrains = True
    selection_loader: DataLoader  # the held-out training samples (training_split)
    dense_selection: dict         # the dense model's metrics on them (before_pruning)

    def training_split(self, ctx: RunContext, train_set):
        train_set, selection_set = hold_out(train_set, SELECTION_SHARE, ctx.config.val_samples)
        self.selection_loader = loader(selection_set, ctx.config, shuffle=False)
        return train_set

    def check_built(self, ctx: RunContext) -> None:
        check_select_metric(ctx.config.select_metric, ctx.tasks)
        super().check_built(ctx)

    def before_pruning(self, ctx: RunContext) -> None:
        with timed(ctx.timings, "selection"):
            self.dense_selection = self.evaluate_selection(ctx)

    def evaluate_selection(self, ctx: RunContext) -> dict[str, dict[str, float]]:
        return evaluate(ctx.model, ctx.tasks, self.selection_loader, ctx.device)

    def after_pruning(self, ctx: RunContext, steps: Steps) -> dict:
        """Train fresh weights at every learning rate of the sweep; keep the best. Returns the
        record."""
        config = ctx.config
        reinitialise(ctx.model, config.seed)
        fresh = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
        candidates, best, best_state, best_weights = [], None, None, None
        for lr in config.retrain_lrs or (config.lr,):
            ctx.model.load_state_dict(fresh)
            # each candidate sees the same data order and starts its loss history afresh
            ctx.train_loader = loader(ctx.train_loader.dataset, config, shuffle=True)
            if ctx.task_weights:
                ctx.task_weights = AdaptiveTaskWeights.for_layout(ctx.layout, config.tasks,
                                                                  config.window)
            steps.train_phase(None, config.iterations, lr, "retraining")
            with timed(ctx.timings, "selection"):
                metrics = self.evaluate_selection(ctx)
            score = selection_score(config.select_metric, metrics, self.dense_selection,
                                    ctx.tasks)
            candidates.append({"lr": lr, "score": score, "metrics": metrics})
            if best is None or score > best["score"]:  # equals: the earlier in the sweep stays
                best, best_weights = candidates[-1], ctx.task_weights
                best_state = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
        ctx.model.load_state_dict(best_state)
        ctx.task_weights = best_weights  # the report shows the chosen candidate's
        return {"select_metric": config.select_metric, "chosen_lr": best["lr"],
                "held_out_samples": len(self.selection_loader.dataset),
                "dense_on_held_out": self.dense_selection,
                "candidates": candidates}


def check_select_metric(name: str, tasks: Mapping[str, Task]) -> None:
    if name == "delta_t":
        return
    task, _, metric = name.partition(".")
    if task not in tasks or metric not in tasks[task].higher_is_better:
        known = ", ".join(f"{t}.{m}" for t, task_ in tasks.items() for m in task_.higher_is_better)
        raise PrunekitError(f"unknown --select-metric {name!r}; use delta_t or one of: {known}")


def selection_score(name: str, metrics: Mapping[str, Mapping[str, float]],
                    dense: Mapping[str, Mapping[str, float]], tasks: Mapping[str, Task]) -> float:
    """Higher is better; NaN (a diverged candidate) loses to any number."""
    if name == "delta_t":
        score = delta_t(metrics, dense, tasks)["overall"]
    else:
        task, _, metric = name.partition(".")
        sign = 1.0 if tasks[task].higher_is_better[metric] else -1.0
        score = sign * metrics[task][metric]
    return score if math.isfinite(score) else -math.inf


@torch.no_grad()
def reinitialise(model: nn.Module, seed: int) -> None:
    """Fresh weights from each layer's own initialiser (BatchNorm statistics reset too)."""
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
