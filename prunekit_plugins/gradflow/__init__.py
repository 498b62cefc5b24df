"""Gradient flow for pruning a trained model: |dL/dw| summed over batches, times w^2.

DiSparse's "pretrained" criterion. ``gradflow`` scores the summed multi-task loss;
``disparse-gradflow`` scores each task on the shared tensors and its own head. It is meant for
trained weights, so a run warns when it scores an untrained model with it.
"""
from __future__ import annotations

import torch

from prunekit import GradientScorer, hookimpl


class GradFlowScorer(GradientScorer):
    name = "gradflow"
    description = "gradient flow of a trained model: sum of |dL/dw| times w^2, one joint saliency"
    per_task = False
    needs_trained = True

    @staticmethod
    def criterion(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return grad.abs() * weight.square()  # summed over batches: w^2 * sum |dL/dw|


class DisparseGradFlowScorer(GradFlowScorer):
    name = "disparse-gradflow"
    description = "DiSparse pretrained: per-task |dL_k/dw| times w^2 over shared tensors and head"
    per_task = True


@hookimpl
def prunekit_register_scorers(register):
    register(GradFlowScorer())
    register(DisparseGradFlowScorer())
