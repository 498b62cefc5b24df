"""How much two tasks' subnetworks overlap on a shared tensor."""
from __future__ import annotations

import torch

from prunekit import Metric, hookimpl


class IoUMetric(Metric):
    name = "iou"
    description = "intersection over union of two tasks' kept weights"

    def layer_score(self, mask_a: torch.Tensor, mask_b: torch.Tensor,
                    saliency_a: torch.Tensor, saliency_b: torch.Tensor) -> float:
        union = (mask_a | mask_b).sum()
        if union == 0:
            return 1.0  # both prune everything: identical subnetworks
        return float((mask_a & mask_b).sum() / union)


@hookimpl
def prunekit_register_metrics(register):
    register(IoUMetric())
