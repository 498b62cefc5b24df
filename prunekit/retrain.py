"""``--retrain-from-scratch``: re-initialise a pruned architecture and train it anew.

Structured pruning finds an architecture; training that architecture from fresh weights often
beats fine-tuning the inherited ones. Each learning rate of the sweep (``--lr 1e-3,5e-4,1e-4``)
trains the same fresh weights for ``--iterations`` steps; the one with the best
``--select-metric`` on samples held out of the training split (never the validation split the
report measures) is kept.

``--select-metric`` is ``delta_t`` (Delta_T against the dense model on the held-out samples) or
``TASK.METRIC`` such as ``seg.miou``; lower-is-better metrics are negated so higher always wins.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Mapping

import torch
from torch import nn

from .errors import PrunekitError
from .report import delta_t
from .tasks import Task
from .timing import timed
from .training.loop import evaluate

if TYPE_CHECKING:
    from .engine import Run

SELECTION_SHARE = 0.1  # of the training split, held out to choose the learning rate


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


def evaluate_selection(run: "Run") -> dict[str, dict[str, float]]:
    return evaluate(run.model, run.tasks, run.selection_loader, run.device)


@torch.no_grad()
def reinitialise(model: nn.Module, seed: int) -> None:
    """Fresh weights from each layer's own initialiser (BatchNorm statistics reset too)."""
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()


def retrain_from_scratch(run: "Run", dense_selection: dict) -> dict:
    """Train fresh weights at every learning rate of the sweep; keep the best. Returns the record."""
    config = run.config
    reinitialise(run.model, config.seed)
    fresh = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
    candidates, best, best_state, best_weights = [], None, None, None
    for lr in config.retrain_lrs or (config.lr,):
        run.model.load_state_dict(fresh)
        # each candidate sees the same data order and starts its loss history afresh
        run.train_loader = run.loader(run.train_loader.dataset, shuffle=True)
        if run.task_weights:
            run.task_weights = run.adaptive_task_weights()
        run.train_phase(None, config.iterations, lr, "retraining")
        with timed(run.timings, "selection"):
            metrics = evaluate_selection(run)
        score = selection_score(config.select_metric, metrics, dense_selection, run.tasks)
        candidates.append({"lr": lr, "score": score, "metrics": metrics})
        if best is None or score > best["score"]:  # equals: the earlier in the sweep stays
            best, best_weights = candidates[-1], run.task_weights
            best_state = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
    run.model.load_state_dict(best_state)
    run.task_weights = best_weights  # the report shows the chosen candidate's
    return {"select_metric": config.select_metric, "chosen_lr": best["lr"],
            "held_out_samples": len(run.selection_loader.dataset),
            "dense_on_held_out": dense_selection,
            "candidates": candidates}
