"""Python entry points of the C++/CUDA kernels in prunekit._C, each with its torch reference.

The references are the test oracles; they are never used as a silent fallback. If the extension
is missing, importing this module fails with instructions.
"""
from __future__ import annotations

import torch

try:
    from . import _C  # noqa: F401  (loading the library registers torch.ops.prunekit.*)
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError("prunekit._C is not built; run `make install` "
                      "(pip install --no-build-isolation -e .)") from exc


def cuda_compiled() -> bool:
    """Whether the extension was built with its CUDA kernels."""
    return _C.cuda_compiled()


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of ``scores.shape`` keeping exactly the ``k`` largest scores.

    Ties at the threshold go to the lower flat (row-major) index, so the result is deterministic.
    ``-0.0`` and ``0.0`` are equal; ``inf`` ranks above every finite value; NaN raises.

    scores: floating tensor of any shape (float64/32/16, bfloat16) on CPU or CUDA.
    k: 0 <= k <= scores.numel().
    """
    return torch.ops.prunekit.topk_mask(scores, int(k))


def topk_mask_reference(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Pure-torch ``topk_mask``: a stable descending sort, then the first ``k`` indices."""
    if not 0 <= k <= scores.numel():
        raise ValueError(f"expected 0 <= k <= {scores.numel()}, got {k}")
    if torch.isnan(scores).any():
        raise ValueError("expected scores without NaN")
    flat = scores.reshape(-1).double() + 0.0  # + 0.0 turns -0.0 into 0.0, so they tie
    order = torch.sort(flat, descending=True, stable=True).indices
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=scores.device)
    mask[order[:k]] = True
    return mask.reshape(scores.shape)
