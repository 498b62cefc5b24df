"""Python entry points of the C++/CUDA kernels in prunekit._C, each with its torch reference.

The references are the test oracles; they are never used as a silent fallback. If the extension
is missing, importing this module fails with instructions.
"""
from __future__ import annotations

import contextlib
import math
import numbers
from typing import NamedTuple, Sequence

import torch

try:
    from .. import _C  # noqa: F401  (loading the library registers torch.ops.prunekit.*)
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError("prunekit._C is not built; run `make install` "
                      "(pip install --no-build-isolation -e .)") from exc

from .sparse_conv import (SparseConv2d, sparse_conv2d, sparse_conv2d_plan,  # noqa: E402,F401
                          sparse_conv2d_reference, sparse_conv2d_schedule)


def cuda_compiled() -> bool:
    """Whether the extension was built with its CUDA kernels."""
    return _C.cuda_compiled()


def simd_level() -> str:
    """Which build of the CPU hot loops runs: ``"avx2"`` (x86-64 CPUs with AVX2 and FMA) or
    ``"default"`` (any CPU). The choice is made by the CPU, at run time."""
    return _C.simd_level()


@contextlib.contextmanager
def default_simd():
    """Runs the default build of the CPU hot loops inside the block, even on an AVX2 CPU (to test
    or compare the builds). Process-wide: not for concurrent use from several threads."""
    forced_before = _C.default_simd_forced()
    _C.force_default_simd(True)
    try:
        yield
    finally:
        _C.force_default_simd(forced_before)


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


class TopK(NamedTuple):
    """What ``topk_masks`` returns."""

    masks: list[torch.Tensor]   # one bool mask per input, of its shape
    thresholds: torch.Tensor    # float64, one per group: the smallest kept score (inf: none kept)


CRITERIA = ("score", "magnitude", "snip", "gradflow")
SCOPES = ("global", "layer")


def topk_masks(inputs: Sequence[torch.Tensor], k: int | Sequence[int] | None = None, *,
               keep_ratio: float | None = None, scope: str = "global", criterion: str = "score",
               grads: Sequence[torch.Tensor] | None = None) -> TopK:
    """Bool masks keeping the largest scores of many tensors, without concatenating or sorting.

    A radix search on the floats' bits: a histogram of the top 16 bits, then the candidates of one
    bucket; on the CPU, groups from 2^20 elements first try one pass over a key range bracketed by
    a strided sample. Extra memory is the histograms and the candidates, not a copy of the inputs.

    inputs: the scores, or the weights when ``criterion`` computes the scores from them.
    criterion: ``score`` (the inputs are the scores), ``magnitude`` (|w|), ``snip`` (|w*g|) or
        ``gradflow`` (|g|*w^2); the last two need ``grads``, one per input, of its shape. Scores
        are computed in float32 (float64 for float64 inputs), never stored.
    scope: ``global`` ranks all inputs together (threshold: one value); ``layer`` ranks each
        input on its own (thresholds: one per input).
    k: how many to keep: an int for ``global``, one int per input for ``layer`` (as ERK gives).
    keep_ratio: instead of ``k``: ``round(keep_ratio * n)`` of the n elements of the scope.

    Exactly k are kept; ties at the threshold go to the lower (input, flat index), as
    ``topk_mask`` of the concatenation would keep them. ``-0.0`` equals ``0.0``, inf ranks above
    every finite score, and a NaN score raises naming the input and index. Tensors of several
    floating dtypes are read at the widest of them; all on one device (CPU or CUDA).
    """
    inputs, grads = _same_dtype(inputs, grads, criterion)
    counts, groups = _group_counts(inputs, k, keep_ratio, scope)
    if not inputs:  # nothing to dispatch on
        if any(counts):
            raise ValueError(f"expected k = 0 for no inputs, got {k}")
        return TopK([], torch.full((len(counts),), math.inf, dtype=torch.float64))
    masks, thresholds = torch.ops.prunekit.topk_masks(inputs, grads, criterion, counts, groups)
    return TopK(list(masks), thresholds)


def topk_masks_reference(inputs: Sequence[torch.Tensor], k: int | Sequence[int] | None = None, *,
                         keep_ratio: float | None = None, scope: str = "global",
                         criterion: str = "score",
                         grads: Sequence[torch.Tensor] | None = None) -> TopK:
    """Pure-torch ``topk_masks``: the criterion's scores, concatenated and stably sorted."""
    inputs, grads = _same_dtype(inputs, grads, criterion)
    counts, groups = _group_counts(inputs, k, keep_ratio, scope)
    scores = [criterion_scores(x, g, criterion)
              for x, g in zip(inputs, grads or [None] * len(inputs))]
    masks, thresholds = [None] * len(inputs), []
    for group, count in enumerate(counts):
        members = [t for t, g in enumerate(groups) if g == group]
        flat = torch.cat([scores[t].reshape(-1) for t in members]) if members else torch.empty(0)
        kept = topk_mask_reference(flat, count)
        thresholds.append(float(flat[kept].min()) if count else math.inf)
        for t, piece in zip(members, kept.split([scores[t].numel() for t in members])):
            masks[t] = piece.reshape(inputs[t].shape)
    device = inputs[0].device if inputs else "cpu"
    return TopK(masks, torch.tensor(thresholds, dtype=torch.float64, device=device))


def criterion_scores(x: torch.Tensor, grad: torch.Tensor | None, criterion: str) -> torch.Tensor:
    """The scores ``topk_masks`` ranks: the criterion in float32 (float64 for float64 inputs)."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(dtype)
    if criterion == "score":
        return x
    if criterion == "magnitude":
        return x.abs()
    grad = grad.to(dtype)
    if criterion == "snip":
        return (x * grad).abs()
    return grad.abs() * x.square()


def _same_dtype(inputs, grads, criterion):
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    inputs, grads = list(inputs), list(grads or [])
    if criterion in ("snip", "gradflow") and len(grads) != len(inputs):
        raise ValueError(f"criterion {criterion} needs one gradient per input, got {len(grads)} "
                         f"for {len(inputs)} inputs")
    if criterion in ("score", "magnitude") and grads:
        raise ValueError(f"criterion {criterion} takes no gradients")
    if not inputs:
        return inputs, grads
    dtype = inputs[0].dtype
    for tensor in inputs[1:] + grads:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return [x.to(dtype) for x in inputs], [g.to(dtype) for g in grads]


def _group_counts(inputs, k, keep_ratio, scope) -> tuple[list[int], list[int]]:
    """How many each group keeps, and each input's group: one group, or one per input."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if (k is None) == (keep_ratio is None):
        raise ValueError("give exactly one of k and keep_ratio")
    if keep_ratio is not None and not 0.0 <= keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must lie in [0, 1], got {keep_ratio}")
    sizes = [x.numel() for x in inputs]
    if scope == "global":
        if not (keep_ratio is not None or isinstance(k, numbers.Integral)):
            raise ValueError("global scope takes one count k (an int)")
        return [round(keep_ratio * sum(sizes)) if k is None else int(k)], [0] * len(inputs)
    if k is None:
        return [round(keep_ratio * n) for n in sizes], list(range(len(inputs)))
    if isinstance(k, numbers.Integral) or len(k) != len(inputs):
        raise ValueError(f"layer scope takes one count per input ({len(inputs)}), got {k!r}")
    return [int(c) for c in k], list(range(len(inputs)))
