"""The four plugin interfaces. The core owns them; plugins implement them.

Every plugin object carries a stable lower-case hyphenated ``name`` (``disparse-snip``) and a
one-line ``description``; ``kind`` is set by the interface.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar, Iterable, Mapping, Sequence

import torch
from torch import nn

if TYPE_CHECKING:
    from .core.layout import ResolvedLayout
    from .tasks import Task

# {task name, or JOINT for single-loss scorers: {parameter name: score tensor of the param's shape}}
Saliency = dict[str, dict[str, torch.Tensor]]
# {parameter name: bool tensor of the parameter's shape}
Masks = dict[str, torch.Tensor]
JOINT = "joint"


class Plugin(ABC):
    kind: ClassVar[str]
    name: ClassVar[str]
    description: ClassVar[str]


@dataclass
class ScoringContext:
    """What a scorer may use: the model, its resolved layout, the tasks and the scoring batches.

    ``batches`` yields dicts holding ``image`` and one target per task, already on ``device``.
    ``check_loss(task, loss, where)`` raises a clear error for a NaN or infinite loss.
    ``progress`` wraps an iterable in a progress bar (or returns it unchanged).
    ``seed`` is the run's seed, for scorers that draw random numbers.
    ``input_shape`` and ``input_dtype``: one example input of the model, batch dimension first
    (``(1, 3, H, W)``), for data-free scorers that build their own input (None when unknown).
    ``round`` and ``rounds``: which of a scorer's declared pruning rounds this call is (1-based).
    """

    model: nn.Module
    layout: "ResolvedLayout"
    tasks: Mapping[str, "Task"]
    batches: Iterable[dict]
    device: torch.device
    check_loss: Callable[[str, torch.Tensor, str], None]
    progress: Callable[[Iterable, str], Iterable] = lambda items, label: items
    seed: int = 0
    input_shape: tuple[int, ...] | None = None
    input_dtype: torch.dtype = torch.float32
    round: int = 1
    rounds: int = 1


class Scorer(Plugin):
    """Computes saliency: a score per prunable element, higher means more worth keeping.

    ``per_task`` scorers return one entry per task covering the shared tensors and that task's
    head; joint scorers return one entry, ``JOINT``, covering every prunable tensor.
    ``needs_data = False`` marks data-free scorers: a run passes them no batches.
    ``needs_trained = True`` marks criteria meant for trained weights (a run warns when it scores
    an untrained model with one). ``grows = True`` marks gradient scores that rank pruned
    weights too, so dynamic sparse training can grow connections by them.
    ``granularity`` is ``"element"`` (one score per weight) or ``"filter"`` (one score per
    output filter: a tensor of shape ``(out_channels,)`` per prunable tensor).
    ``rounds > 1`` asks the core to prune iteratively (SynFlow, iterative SNIP): score, prune to
    the round's sparsity on the ``schedule`` (``"exponential"``: each round keeps the same share
    of what is left; ``"linear"``), zero the pruned weights, score again; docs/plugins.md.
    """

    kind = "scorer"
    per_task: ClassVar[bool] = True
    granularity: ClassVar[str] = "element"
    needs_data: ClassVar[bool] = True
    needs_trained: ClassVar[bool] = False
    grows: ClassVar[bool] = False
    rounds: ClassVar[int] = 1
    schedule: ClassVar[str] = "exponential"

    @abstractmethod
    def score(self, context: ScoringContext) -> Saliency:
        """Return ``{task or JOINT: {parameter name: finite floating scores}}``, each tensor of
        its parameter's shape (``(out_channels,)`` for filter scorers) and device."""


class Thresholder(Plugin):
    """Turns one saliency map into a mask keeping a given fraction of its elements.

    ``scopes`` lists the scopes it supports, its default first: ``global`` ranks all the tensors
    together, ``layer`` decides each tensor's share on its own. ``learns = True`` marks a
    thresholder that learns the masks during training instead (no saliency is scored).
    """

    kind = "thresholder"
    scopes: ClassVar[tuple[str, ...]] = ("global",)
    learns: ClassVar[bool] = False

    @abstractmethod
    def masks(self, scores: Mapping[str, torch.Tensor], keep_ratio: float,
              scope: str | None = None) -> Masks:
        """Keep ``round(keep_ratio * N)`` of the N elements in ``scores``; return bool masks.

        ``scope`` is one of ``scopes``; None means the default, ``scopes[0]``.
        """


class Arbiter(Plugin):
    """Merges the K per-task masks of one shared tensor into the tensor's final mask."""

    kind = "arbiter"
    min_tasks: ClassVar[int] = 1

    @abstractmethod
    def merge(self, masks: Sequence[torch.Tensor]) -> torch.Tensor:
        """Return one bool mask from K bool masks of the same shape."""


class Metric(Plugin):
    """Compares two tasks' subnetworks on one layer; higher means more alike."""

    kind = "metric"

    @abstractmethod
    def layer_score(self, mask_a: torch.Tensor, mask_b: torch.Tensor,
                    saliency_a: torch.Tensor, saliency_b: torch.Tensor) -> float:
        """Score one shared tensor given both tasks' masks and normalised saliencies."""


INTERFACES: dict[str, type[Plugin]] = {
    cls.kind: cls for cls in (Scorer, Thresholder, Arbiter, Metric)
}
