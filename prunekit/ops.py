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


def topk_masks(scores: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """One bool mask per tensor, keeping exactly the ``k`` largest scores of all of them together.

    The global-scope top-k without concatenating or sorting: a radix search on the floats' bits
    (a histogram of the top 16 bits, then the candidates of one bucket). Ties at the threshold go
    to the lower (tensor, flat index), exactly as ``topk_mask`` of the concatenation would keep
    them. Tensors of several floating dtypes are read at the widest of them; NaN raises and names
    the tensor. CPU tensors only (the CUDA kernel is still to come).
    """
    if not scores:
        if k != 0:
            raise ValueError(f"expected k = 0 for no scores, got {k}")
        return []
    dtype = scores[0].dtype
    for tensor in scores[1:]:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return list(torch.ops.prunekit.topk_masks([s.to(dtype) for s in scores], int(k)))


def topk_masks_reference(scores: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Pure-torch ``topk_masks``: ``topk_mask_reference`` of the concatenation, split back."""
    if not scores:
        return []
    flat = torch.cat([s.reshape(-1).double() for s in scores])
    kept = topk_mask_reference(flat, k).split([s.numel() for s in scores])
    return [piece.reshape(s.shape) for piece, s in zip(kept, scores)]
