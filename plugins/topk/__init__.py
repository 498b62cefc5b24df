"""Top-k thresholding: keep the highest-scoring elements, exactly k of them.

Global scope (the default, as in DiSparse and SNIP) ranks all of a task's tensors together; layer
scope keeps the same fraction of every tensor. Ties at the threshold go to the lower flat index,
in the order the tensors are given.
"""
from __future__ import annotations

from typing import Mapping

import torch

from prunekit import Thresholder, hookimpl
from prunekit.ops import topk_mask, topk_masks


def keep_count(keep_ratio: float, total: int) -> int:
    return min(total, max(0, round(keep_ratio * total)))


def global_topk(scores: Mapping[str, torch.Tensor], keep_ratio: float):
    total = sum(s.numel() for s in scores.values())
    if all(s.device.type == "cpu" for s in scores.values()):  # no copy of the scores on CPU
        kept = topk_masks(list(scores.values()), keep_count(keep_ratio, total))
        return dict(zip(scores, kept))
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    kept = topk_mask(flat, keep_count(keep_ratio, flat.numel()))
    pieces = kept.split([s.numel() for s in scores.values()])
    return {n: piece.view(s.shape) for (n, s), piece in zip(scores.items(), pieces)}


class TopKThresholder(Thresholder):
    name = "topk"
    description = "exact top-k of the saliency (global or layer-wise), ties to the lower index"
    scopes = ("global", "layer")

    def masks(self, scores: Mapping[str, torch.Tensor], keep_ratio: float,
              scope: str | None = None):
        if (scope or self.scopes[0]) == "layer":
            return {n: topk_mask(s, keep_count(keep_ratio, s.numel())) for n, s in scores.items()}
        return global_topk(scores, keep_ratio)


@hookimpl
def prunekit_register_thresholders(register):
    register(TopKThresholder())
