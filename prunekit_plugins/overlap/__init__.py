"""How much two tasks' subnetworks overlap on a shared tensor.

Each metric compares one shared tensor: B_k is task k's bool mask, SAL_k its normalised saliency.

- ``iou``:     |B1 & B2| / |B1 | B2|                      (both masks empty -> 1.0)
- ``epi-sim``: 1 - |n1 - n2| / (n1 + n2), n_k = |B_k|      (both zero -> 1.0)
- ``css``:     cosine(SAL1, SAL2) over the flattened tensor, in [-1, 1]
- ``mcss``:    cosine(B1 * SAL1, B2 * SAL2)

For the cosines, two all-zero vectors count as identical (1.0) and exactly one all-zero vector
as unrelated (0.0); they are computed in float64. An empty tensor (no elements) scores 1.0 on
every metric. A metric checks the tensors it uses: their shapes must match, and saliency must be
finite; either failure raises ``PrunekitError``.
"""
from __future__ import annotations

import torch

from prunekit import Metric, PrunekitError, hookimpl


def check_shapes(metric: str, **tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise PrunekitError(f"metric {metric!r}: the tensors of one layer must have the same "
                            f"shape, got {listed}")


def check_saliency(metric: str, name: str, saliency: torch.Tensor | None) -> None:
    if saliency is None:
        raise PrunekitError(f"metric {metric!r} needs both tasks' saliency, but {name} is None")
    bad = saliency.numel() - int(torch.isfinite(saliency).sum())
    if bad:
        raise PrunekitError(f"metric {metric!r}: {name} has {bad} non-finite (NaN or inf) "
                            f"value(s) out of {saliency.numel()}")


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two flattened tensors in float64; all-zero vs all-zero is 1.0,
    all-zero vs non-zero is 0.0."""
    a = a.detach().reshape(-1).to(torch.float64)
    b = b.detach().reshape(-1).to(torch.float64)
    if a.numel() == 0:
        return 1.0
    scale_a, scale_b = a.abs().max(), b.abs().max()
    zero_a, zero_b = bool(scale_a == 0), bool(scale_b == 0)
    if zero_a or zero_b:
        return 1.0 if zero_a and zero_b else 0.0
    a, b = a / scale_a, b / scale_b  # scale-free: keeps the norms away from under- and overflow
    value = float(torch.dot(a, b) / (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)))
    return min(1.0, max(-1.0, value))


def check_both_saliencies(metric: str, saliency_a, saliency_b) -> None:
    check_saliency(metric, "saliency_a", saliency_a)
    check_saliency(metric, "saliency_b", saliency_b)


class IoUMetric(Metric):
    name = "iou"
    description = "intersection over union of two tasks' kept weights"

    def layer_score(self, mask_a: torch.Tensor, mask_b: torch.Tensor,
                    saliency_a: torch.Tensor, saliency_b: torch.Tensor) -> float:
        check_shapes(self.name, mask_a=mask_a, mask_b=mask_b)
        mask_a, mask_b = mask_a.bool(), mask_b.bool()
        union = int((mask_a | mask_b).sum())
        if union == 0:
            return 1.0  # both prune everything (or the tensor is empty): identical subnetworks
        return int((mask_a & mask_b).sum()) / union  # exact counts, not a float32 quotient


class EpiSimMetric(Metric):
    name = "epi-sim"
    description = "similarity of two tasks' kept-weight counts: 1 - |n1 - n2| / (n1 + n2)"

    def layer_score(self, mask_a: torch.Tensor, mask_b: torch.Tensor,
                    saliency_a: torch.Tensor, saliency_b: torch.Tensor) -> float:
        check_shapes(self.name, mask_a=mask_a, mask_b=mask_b)
        n_a, n_b = int(torch.count_nonzero(mask_a)), int(torch.count_nonzero(mask_b))
        if n_a + n_b == 0:
            return 1.0  # both prune everything (or the tensor is empty)
        return 1.0 - abs(n_a - n_b) / (n_a + n_b)


class CosineSaliencyMetric(Metric):
    name = "css"
    description = "cosine similarity of two tasks' saliency, in [-1, 1]"

    def layer_score(self, mask_a: torch.Tensor, mask_b: torch.Tensor,
                    saliency_a: torch.Tensor, saliency_b: torch.Tensor) -> float:
        check_both_saliencies(self.name, saliency_a, saliency_b)
        check_shapes(self.name, saliency_a=saliency_a, saliency_b=saliency_b)
        return cosine(saliency_a, saliency_b)


class MaskedCosineSaliencyMetric(Metric):
    name = "mcss"
    description = "cosine similarity of two tasks' saliency on their kept weights, in [-1, 1]"

    def layer_score(self, mask_a: torch.Tensor, mask_b: torch.Tensor,
                    saliency_a: torch.Tensor, saliency_b: torch.Tensor) -> float:
        check_both_saliencies(self.name, saliency_a, saliency_b)
        check_shapes(self.name, mask_a=mask_a, mask_b=mask_b, saliency_a=saliency_a,
                     saliency_b=saliency_b)
        zero = torch.zeros((), dtype=torch.float64, device=saliency_a.device)
        kept_a = torch.where(mask_a.bool(), saliency_a.to(torch.float64), zero)
        kept_b = torch.where(mask_b.bool(), saliency_b.to(torch.float64), zero)
        return cosine(kept_a, kept_b)


@hookimpl
def prunekit_register_metrics(register):
    for metric in (IoUMetric(), EpiSimMetric(), CosineSaliencyMetric(),
                   MaskedCosineSaliencyMetric()):
        register(metric)
