"""Learnable soft thresholds per component (STR, as AdapMTL applies it to multi-task models).

Every prunable tensor of a component (the shared backbone, or one task's head) is used in the
forward pass as sign(w) * relu(|w| - sigmoid(theta)), with one learnable theta per component.
Gradients reach both the weights (through the kept ones) and theta, so each component learns its
own sparsity. Once the overall sparsity reaches the target the thresholds are frozen and training
goes on. The ``soft-threshold`` thresholder runs it (``prunekit.pipeline.modes.learned``).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..interfaces import Masks
from .layout import ResolvedLayout

SHARED = "shared"


def soft_threshold(weight: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """sign(w) * relu(|w| - sigmoid(theta)): weights within the threshold become exactly zero."""
    return torch.sign(weight) * torch.relu(weight.abs() - torch.sigmoid(theta))


class SoftThreshold(nn.Module):
    """A parametrization applying ``soft_threshold`` with a (shared) theta parameter."""

    def __init__(self, theta: nn.Parameter):
        super().__init__()
        self.theta = theta

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return soft_threshold(weight, self.theta)


def split_name(name: str) -> tuple[str, str]:
    module, _, attribute = name.rpartition(".")
    return module, attribute


class ComponentThresholds:
    """One learnable threshold per component, installed on a model's prunable tensors.

    ``layout.params`` keeps naming the dense weights (parametrization keeps the same Parameter
    objects), so sparsity is measured on them directly.
    """

    def __init__(self, model: nn.Module, layout: ResolvedLayout, theta_init: float):
        self.model, self.layout = model, layout
        device = next(iter(layout.params.values())).device
        self.components = {SHARED: list(layout.shared), **layout.heads}
        self.thetas = {component: nn.Parameter(torch.tensor(float(theta_init), device=device))
                       for component in self.components}
        self.frozen = False
        for component, names in self.components.items():
            for name in names:
                module_name, attribute = split_name(name)
                parametrize.register_parametrization(model.get_submodule(module_name), attribute,
                                                     SoftThreshold(self.thetas[component]))

    @torch.no_grad()
    def pruned(self, component: str) -> tuple[int, int]:
        """(weights at or under the threshold, all weights) of one component."""
        alpha = torch.sigmoid(self.thetas[component])
        names = self.components[component]
        pruned = sum(int((self.layout.params[n].abs() <= alpha).sum()) for n in names)
        return pruned, self.layout.numel(names)

    def sparsity(self) -> dict[str, float]:
        """Sparsity of each component and ``overall`` (weighted by parameter count)."""
        counts = {component: self.pruned(component) for component in self.components}
        result = {c: pruned / total if total else 0.0 for c, (pruned, total) in counts.items()}
        total = sum(t for _, t in counts.values())
        result["overall"] = sum(p for p, _ in counts.values()) / total if total else 0.0
        return result

    def freeze_at(self, target: float) -> bool:
        """Freeze every threshold once the overall sparsity reaches ``target``; True when frozen."""
        if not self.frozen and self.sparsity()["overall"] >= target:
            for theta in self.thetas.values():
                theta.requires_grad_(False)
                theta.grad = None
            self.frozen = True
        return self.frozen

    def remove(self) -> Masks:
        """Bake the thresholded weights into the model and return their masks (non-zero)."""
        masks = {}
        for names in self.components.values():
            for name in names:
                module_name, attribute = split_name(name)
                parametrize.remove_parametrizations(self.model.get_submodule(module_name),
                                                    attribute, leave_parametrized=True)
                masks[name] = self.layout.params[name].detach() != 0
        return {name: masks[name] for name in self.layout.params}
