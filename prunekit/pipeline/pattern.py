"""What a run with ``--pattern N:M`` reports: the tensors the pattern covers and why the others
are not, how much of each task's own choice the merge kept, and the pattern checked in the
weights as saved."""
from __future__ import annotations

from typing import Mapping

import torch

from ..core.layout import ResolvedLayout
from ..core.pruning import PruneResult
from ..core.semi_structured import Pattern, coverage, holds
from ..errors import PrunekitError
from ..interfaces import JOINT


def pattern_record(result: PruneResult, layout: ResolvedLayout, pattern: Pattern,
                   uncovered: str) -> dict:
    """The report's ``pattern`` block for the masks of one prune."""
    covered, reasons = coverage(layout.params, pattern.m)
    shared = [name for name in covered if name in layout.shared]
    record = {"pattern": str(pattern), "uncovered_policy": uncovered, "covered": covered,
              "uncovered": reasons}
    if JOINT not in result.task_masks and shared:
        record["task_choice_kept"] = {
            task: choice_kept(result.task_masks[task], result.masks, shared)
            for task in layout.tasks}
    return record


def choice_kept(own: Mapping[str, torch.Tensor], merged: Mapping[str, torch.Tensor],
                names: list[str]) -> float:
    """The share of a task's own kept weights on ``names`` that the merged masks keep."""
    chosen = sum(int(own[n].sum()) for n in names)
    kept = sum(int((own[n] & merged[n].to(own[n].device)).sum()) for n in names)
    return kept / chosen if chosen else 1.0


def check_saved_pattern(weights: Mapping[str, torch.Tensor], covered: list[str],
                        pattern: Pattern) -> None:
    """Every covered tensor of the saved weights has at most N nonzeros per group of M."""
    broken = [name for name in covered if not holds(weights[name], pattern.n, pattern.m)]
    if broken:
        raise PrunekitError(f"the saved weights of {', '.join(broken[:3])} break the "
                            f"{pattern} pattern: a group of {pattern.m} holds more than "
                            f"{pattern.n} nonzero weights")
