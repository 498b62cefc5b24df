"""The Dice coefficient of two tasks' subnetworks."""
from __future__ import annotations

import torch

from prunekit import Metric


class DiceMetric(Metric):
    name = "example-dice"
    description = "Dice coefficient 2|A and B| / (|A| + |B|) of the two tasks' kept weights"

    def layer_score(self, mask_a: torch.Tensor, mask_b: torch.Tensor,
                    saliency_a: torch.Tensor, saliency_b: torch.Tensor) -> float:
        kept = int(mask_a.sum()) + int(mask_b.sum())
        if kept == 0:  # two empty subnetworks are alike, as the built-in metrics score them
            return 1.0
        return 2.0 * int((mask_a & mask_b).sum()) / kept
