"""Erdős–Rényi-Kernel (ERK) allocation of per-layer density, then top-k inside each layer.

From RigL (Evci et al., 2020). A layer of shape (d1, ..., dn) gets density proportional to
((d1 + ... + dn) / (d1 * ... * dn)) ** power; layers whose density would exceed one are made
dense and the rest re-solved. The real-valued counts are rounded by largest remainder, so the
kept total is exactly round(keep_ratio * N).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from prunekit import Thresholder, hookimpl
from prunekit.ops import topk_masks


def erk_keep_counts(shapes: Sequence[Sequence[int]], keep_ratio: float,
                    power: float = 1.0) -> list[int]:
    """Elements to keep per layer: ERK densities, overflowing layers dense, exact total."""
    sizes = [math.prod(shape) for shape in shapes]
    target = min(sum(sizes), max(0, round(keep_ratio * sum(sizes))))
    raw = [(sum(shape) / size) ** power if size else 0.0 for shape, size in zip(shapes, sizes)]
    dense: set[int] = set()
    while True:
        sparse = [i for i, size in enumerate(sizes) if size and i not in dense]
        budget = target - sum(sizes[i] for i in dense)
        weight = sum(raw[i] * sizes[i] for i in sparse)
        scale = budget / weight if weight else 0.0
        overflowing = {i for i in sparse if scale * raw[i] > 1.0}
        if not overflowing:
            break
        dense |= overflowing  # making a layer dense only raises the others' scale
    # scale * raw * size, written so that equal real-valued counts come out equal (power 1)
    exact = [float(size) if i in dense else scale * sum(shape) ** power * size ** (1 - power)
             for i, (shape, size) in enumerate(zip(shapes, sizes))]
    counts = [min(sizes[i], math.floor(e)) for i, e in enumerate(exact)]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (counts[i] - exact[i], i))
    missing = target - sum(counts)
    for i in by_remainder:
        if missing and counts[i] < sizes[i]:
            counts[i] += 1
            missing -= 1
    return counts


class ERKThresholder(Thresholder):
    name = "erk"
    description = "Erdős–Rényi-Kernel density per layer (RigL), top-k of the saliency within each"
    scopes = ("layer",)

    def __init__(self, power: float = 1.0):
        self.power = power

    def masks(self, scores: Mapping[str, torch.Tensor], keep_ratio: float,
              scope: str | None = None):
        counts = erk_keep_counts([s.shape for s in scores.values()], keep_ratio, self.power)
        return dict(zip(scores, topk_masks(list(scores.values()), counts, scope="layer").masks))


@hookimpl
def prunekit_register_thresholders(register):
    register(ERKThresholder())
