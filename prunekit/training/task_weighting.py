"""Task-loss weights: fixed ones (``fixed_task_weights``, --task-loss-weights) and adaptive ones
from each task's loss fluctuation (AdapMTL-style); ``combined_weights`` multiplies the two.

Per task t, with its last ``window`` per-step losses L_t(0..n) (n + 1 <= window values):

    r_t(i) = |L_t(i-1) - L_t(i)| / max(|L_t(i)|, EPS)        relative step-to-step change
    m_t    = mean of r_t(1..n)                                 normalised loss fluctuation
    u_t    = s_t / max(m_t, EPS)                               inverse fluctuation, times scale
    w_t    = T * u_t / sum_k u_k                               weights sum to T (number of tasks)

s_t is a per-task scale given by the caller (the parameter-ratio term; default 1). A task whose
loss fluctuates less gets more weight. Warm-up: every weight is 1.0 until each task has ``start``
recorded losses (by default a full window: the steep first descent would dominate a shorter
mean). EPS (1e-12) keeps a zero loss or a zero
fluctuation from dividing by zero: a task with zero fluctuation takes nearly all of the weight,
and tasks that are all flat share it in proportion to their scales. See notes/task-weighting.md.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence

from ..errors import PrunekitError

EPS = 1e-12


def _finite(value: float, what: str) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value}")
    return value


def fixed_task_weights(items: Sequence[str], tasks: Sequence[str]) -> dict[str, float]:
    """Fixed task-loss weights from ``TASK=WEIGHT`` items such as ("seg=1", "normal=20"); a
    task not named weighs 1. An unknown or repeated task, or a weight that is not a positive
    finite number, raises PrunekitError."""
    weights: dict[str, float] = {}
    for item in items:
        task, equals, text = item.partition("=")
        task = task.strip()
        if not equals or task not in tasks:
            raise PrunekitError(f"task loss weights: expected TASK=WEIGHT with TASK one of "
                                f"{','.join(tasks)}, got {item!r}")
        if task in weights:
            raise PrunekitError(f"task loss weights: {task} is given twice")
        try:
            weight = float(text)
        except ValueError:
            weight = math.nan
        if not (math.isfinite(weight) and weight > 0):
            raise PrunekitError(f"task loss weights: the weight of {task} must be a positive "
                                f"number, got {text.strip()!r}")
        weights[task] = weight
    return weights


def combined_weights(fixed: Mapping[str, float],
                     adaptive: "AdaptiveTaskWeights | None") -> dict[str, float]:
    """Each task's loss weight: its fixed weight times its adaptive one (as AdapMTL multiplies
    its fixed priorities by its adaptive weights); tasks named by neither weigh 1. The adaptive
    weights come from the unweighted losses, whose relative fluctuation a fixed factor leaves
    as it is."""
    current = adaptive.weights if adaptive is not None else {}
    return {task: fixed.get(task, 1.0) * current.get(task, 1.0)
            for task in {*fixed, *current}}


def fluctuation(losses: Sequence[float]) -> float:
    """Mean relative change |L(i-1) - L(i)| / max(|L(i)|, EPS) over consecutive losses."""
    values = [_finite(v, "loss") for v in losses]
    if len(values) < 2:
        raise ValueError(f"fluctuation needs at least 2 losses, got {len(values)}")
    ratios = [abs(a - b) / max(abs(b), EPS) for a, b in zip(values, values[1:])]
    return sum(ratios) / len(ratios)


class AdaptiveTaskWeights:
    """Task-loss weights proportional to scale / fluctuation over a sliding window of losses.

    ``update`` records one step's loss per task and returns the weights for the next step; the
    weights sum to the number of tasks (all 1.0 during the warm-up, see the module docstring).
    """

    @classmethod
    def for_layout(cls, layout, tasks: Sequence[str], window: int) -> "AdaptiveTaskWeights":
        """AdapMTL's weighting for a model: each task's scale is the parameters its loss trains
        (the shared trunk and its head, from a ``ResolvedLayout``) over the mean of that count
        across tasks."""
        trained = {task: layout.numel(layout.shared) + layout.numel(names)
                   for task, names in layout.heads.items()}
        mean = sum(trained.values()) / len(trained)
        return cls(tasks, window, {task: n / mean for task, n in trained.items()})

    def __init__(self, tasks: Sequence[str], window: int = 400,
                 scales: Mapping[str, float] | None = None, start: int | None = None):
        self.tasks = list(tasks)
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks must be non-empty and unique, got {self.tasks}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 2:
            raise ValueError(f"window must be an integer >= 2, got {window!r}")
        self.window = window
        self.start = window if start is None else start
        if not 2 <= self.start <= window:
            raise ValueError(f"start must lie between 2 and the window ({window}), got {start!r}")
        scales = dict(scales or {})
        unknown = set(scales) - set(self.tasks)
        if unknown:
            raise ValueError(f"scales for unknown tasks: {sorted(unknown)}")
        self.scales = {t: _finite(scales.get(t, 1.0), f"scale of {t!r}") for t in self.tasks}
        if any(s <= 0 for s in self.scales.values()):
            raise ValueError(f"scales must be > 0, got {self.scales}")
        self._losses = {t: deque(maxlen=window) for t in self.tasks}
        self._weights = {t: 1.0 for t in self.tasks}

    def update(self, losses: Mapping[str, float]) -> dict[str, float]:
        """Record one step's per-task losses (floats); return the weights to use for the next step.

        A missing or extra task, or a non-finite loss, raises ValueError and records nothing.
        """
        if set(losses) != set(self.tasks):
            raise ValueError(f"expected losses for {sorted(self.tasks)}, got {sorted(losses)}")
        step = {t: _finite(losses[t], f"loss of {t!r}") for t in self.tasks}  # check all first
        for t in self.tasks:
            self._losses[t].append(step[t])
        if all(len(h) >= self.start for h in self._losses.values()):
            raw = {t: self.scales[t] / max(fluctuation(self._losses[t]), EPS) for t in self.tasks}
            total = sum(raw.values())
            self._weights = {t: len(self.tasks) * raw[t] / total for t in self.tasks}
        return self.weights

    def state_dict(self) -> dict:
        """The recorded losses and current weights (a resumed run goes on from them)."""
        return {"losses": {t: list(h) for t, h in self._losses.items()},
                "weights": dict(self._weights)}

    def load_state_dict(self, state: dict) -> None:
        for t in self.tasks:
            self._losses[t].clear()
            self._losses[t].extend(state["losses"][t])
        self._weights = dict(state["weights"])

    @property
    def weights(self) -> dict[str, float]:
        """Current weights (a copy): all 1.0 until every task has ``start`` losses; sum to T."""
        return dict(self._weights)
