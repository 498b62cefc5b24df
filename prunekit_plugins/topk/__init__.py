"""Top-k thresholding: keep the highest-scoring elements, exactly k of them.

Global scope (the default, as in DiSparse and SNIP) ranks all of a task's tensors together; layer
scope keeps the same fraction of every tensor. Ties at the threshold go to the lower flat index,
in the order the tensors are given. Both are one call of the radix top-k kernel (``topk_masks``),
which never concatenates or sorts the scores.
"""
from __future__ import annotations

from typing import Mapping

import torch

from prunekit import Thresholder, hookimpl
from prunekit.ops import topk_masks


class TopKThresholder(Thresholder):
    name = "topk"
    description = "exact top-k of the saliency (global or layer-wise), ties to the lower index"
    scopes = ("global", "layer")

    def masks(self, scores: Mapping[str, torch.Tensor], keep_ratio: float,
              scope: str | None = None):
        kept = topk_masks(list(scores.values()), keep_ratio=keep_ratio,
                          scope=scope or self.scopes[0]).masks
        return dict(zip(scores, kept))


@hookimpl
def prunekit_register_thresholders(register):
    register(TopKThresholder())
