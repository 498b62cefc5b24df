"""N:M semi-structured sparsity: in every group of M consecutive weights along a row's reduction
dimension, at most N are kept (2:4 is the pattern GPUs since Ampere run in hardware).

Reduction order: a weight [out, in, kh, kw] (or [out, in] for a linear layer) is read as the
matrix ``weight.reshape(out, -1)``, one row per output channel, columns in (in, kh, kw) order:
the order ``F.unfold`` lays out a convolution's input patches, so a convolution run as a GEMM
(unfolded input times the weight matrix) reduces over each row's groups exactly as stored. A
group is M consecutive columns of one row.

A tensor is covered when it is a matrix of at least two dimensions whose reduction length is a
multiple of M; the others (the first convolution with 3 input channels and a 7x7 kernel: 147
columns) stay dense or are pruned without a pattern, as the run's option says.

Merging per-task N:M masks on a shared tensor with an arbiter keeps the pattern by
``keep_pattern``: of the elements the arbiter keeps, each group keeps at most N, highest priority
first, where an element's priority is the sum, over the tasks that kept it, of each task's
saliency normalised over that task's tensors.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping

import torch

from ..errors import PrunekitError

UNCOVERED_POLICIES = ("dense", "unstructured")


@dataclass(frozen=True)
class Pattern:
    """Keep at most ``n`` of every ``m`` consecutive weights along the reduction dimension."""

    n: int
    m: int

    @classmethod
    def parse(cls, text: str) -> "Pattern":
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(text))
        if not match:
            raise PrunekitError(f"--pattern must be N:M such as 2:4, got {text!r}")
        n, m = int(match[1]), int(match[2])
        if not 0 < n < m:
            raise PrunekitError(f"--pattern N:M needs 0 < N < M, got {n}:{m}")
        return cls(n, m)

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m


def as_rows(tensor: torch.Tensor) -> torch.Tensor:
    """The [out, reduction] matrix view of a weight (see the module docstring)."""
    return tensor.reshape(tensor.shape[0], -1)


def uncovered_reason(shape: torch.Size | tuple[int, ...], m: int) -> str | None:
    """Why a tensor of ``shape`` cannot hold an N:M pattern, or None when it can."""
    if len(shape) < 2:
        return "not a matrix"
    reduction = math.prod(shape[1:])
    if reduction % m:
        return f"reduction length {reduction} is not a multiple of {m}"
    return None


def coverage(params: Mapping[str, torch.Tensor], m: int) -> tuple[list[str], dict[str, str]]:
    """The names of the tensors a pattern covers, and each uncovered one's reason."""
    covered, uncovered = [], {}
    for name, param in params.items():
        reason = uncovered_reason(param.shape, m)
        if reason is None:
            covered.append(name)
        else:
            uncovered[name] = reason
    return covered, uncovered


def grouped(tensor: torch.Tensor, m: int) -> torch.Tensor:
    """[out, reduction / m, m]: each row's groups of ``m`` consecutive reduction elements."""
    rows = as_rows(tensor)
    return rows.reshape(rows.shape[0], rows.shape[1] // m, m)


def ranks_in_group(priority: torch.Tensor, m: int) -> torch.Tensor:
    """Each element's rank inside its group, 0 for the highest ``priority``; ties rank the lower
    index first (a stable sort)."""
    groups = grouped(priority, m)
    return ranks_of(torch.sort(groups, dim=-1, descending=True, stable=True).indices)


def ranks_of(order: torch.Tensor) -> torch.Tensor:
    """Each position's rank in ``order`` (positions in the last dimension, best first)."""
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device)
                   .expand_as(order))
    return ranks


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The ``n`` highest ``scores`` of every group of ``m`` (ties to the lower index), as a bool
    mask of the scores' shape."""
    return (ranks_in_group(scores, m) < n).reshape(scores.shape)


def keep_pattern(candidates: torch.Tensor, priority: torch.Tensor, n: int,
                 m: int) -> torch.Tensor:
    """Of ``candidates`` (bool), at most ``n`` per group: the highest ``priority`` first."""
    ranked = priority.masked_fill(~candidates, -math.inf)
    return nm_mask(ranked, n, m) & candidates


def kept_per_group(mask_or_weight: torch.Tensor, m: int) -> torch.Tensor:
    """How many elements of each group are kept (nonzero)."""
    return (grouped(mask_or_weight, m) != 0).sum(dim=-1)


def holds(mask_or_weight: torch.Tensor, n: int, m: int) -> bool:
    """Whether every group of ``m`` keeps (has nonzero) at most ``n`` elements."""
    return bool((kept_per_group(mask_or_weight, m) <= n).all())


def merge_priority(saliency: Mapping[str, torch.Tensor], task_masks: Mapping[str, torch.Tensor],
                   totals: Mapping[str, float]) -> torch.Tensor:
    """Sum over tasks of their normalised saliency where the task kept the element;
    ``totals[task]`` is the task's saliency summed over all its tensors."""
    priority = None
    for task, scores in saliency.items():
        share = scores.float() / totals[task] if totals[task] else scores.float()
        share = share.masked_fill(~task_masks[task], 0.0)
        priority = share if priority is None else priority + share
    return priority


def round_keeps(pattern: Pattern, rounds: int) -> list[int]:
    """Kept per group after each of ``rounds`` prunes, from M down to N in even steps; the last
    is N (gradual N:M pruning)."""
    return [pattern.m - math.ceil(r * (pattern.m - pattern.n) / rounds)
            for r in range(1, rounds + 1)]


def regrow_in_groups(scores: torch.Tensor, fresh: torch.Tensor, dropped: torch.Tensor,
                     m: int) -> torch.Tensor:
    """Drop-and-grow inside groups: each group grows as many weights as it ``dropped``, the
    highest ``scores`` among its ``fresh`` candidates first, then, if it has too few, among the
    weights it just dropped (which then stay). A group keeps its count, so the pattern holds."""
    need = kept_per_group(dropped, m).unsqueeze(-1)
    tier = grouped(fresh, m).long() * 2 + grouped(dropped, m).long()  # fresh, dropped, neither
    by_score = torch.sort(grouped(scores.float(), m), dim=-1, descending=True, stable=True).indices
    by_tier = torch.sort(tier.gather(-1, by_score), dim=-1, descending=True, stable=True).indices
    ranks = ranks_of(by_score.gather(-1, by_tier))  # positions in the group, best first
    return ((ranks < need) & (tier > 0)).reshape(scores.shape)
