"""Layer weights for aggregating per-layer scores (task-overlap metrics) into one number.

The L shared layers are taken in model order, i = 0..L-1; every weighting returns L weights
that sum to 1, for ``weighted_mean``:

- ``equal``:    w_i = 1 / L
- ``linear``:   w_i proportional to i (the first layer gets 0); L == 1 gives [1.0]
- ``step``:     the first ``STEP_SKIP`` (5) layers get 0, the rest share equally; needs L > 5
- ``sparsity``: w_i proportional to the layer's sparsity (the mean of the two tasks' sparsities
  on it, each in [0, 1]); all zero gives equal weights
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from ..errors import PrunekitError, UnknownNameError

WEIGHTINGS = ("equal", "linear", "step", "sparsity")
STEP_SKIP = 5


def _normalised(raw: Sequence[float]) -> list[float]:
    total = math.fsum(raw)
    return [value / total for value in raw]


def _check_sparsities(sparsities: Sequence[float] | None, count: int) -> list[float]:
    if sparsities is None:
        raise PrunekitError("sparsity weighting needs the per-layer sparsities")
    values = list(sparsities)
    if len(values) != count:
        raise PrunekitError(f"sparsity weighting needs one sparsity per layer: {count} layers, "
                            f"{len(values)} sparsities")
    for i, value in enumerate(values):
        value = float(value)
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise PrunekitError(f"sparsity of layer {i} must lie in [0, 1], got {value}")
        values[i] = value
    return values


def layer_weights(weighting: str, count: int,
                  sparsities: Sequence[float] | None = None) -> list[float]:
    """``count`` weights for the shared layers in model order, summing to 1.

    ``sparsities`` (one per layer, in [0, 1]) is required by ``sparsity`` and ignored otherwise.
    """
    if weighting not in WEIGHTINGS:
        raise UnknownNameError("weighting", str(weighting), WEIGHTINGS)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise PrunekitError(f"layer weighting needs at least one layer, got {count!r}")
    if weighting == "equal":
        return _normalised([1.0] * count)
    if weighting == "linear":
        return [1.0] if count == 1 else _normalised([float(i) for i in range(count)])
    if weighting == "step":
        if count <= STEP_SKIP:
            raise PrunekitError(f"step weighting skips the first {STEP_SKIP} layers; this model "
                                f"has only {count} shared layers")
        return _normalised([0.0] * STEP_SKIP + [1.0] * (count - STEP_SKIP))
    values = _check_sparsities(sparsities, count)  # sparsity
    if math.fsum(values) == 0:
        return _normalised([1.0] * count)
    return _normalised(values)


def weighted_mean(scores: Sequence[float], weights: Sequence[float]) -> float:
    """sum(w_i * s_i) / sum(w_i); the weights need not be normalised but must not be negative."""
    scores, weights = [float(s) for s in scores], [float(w) for w in weights]
    if len(scores) != len(weights):
        raise PrunekitError(f"weighted mean needs one weight per score: {len(scores)} scores, "
                            f"{len(weights)} weights")
    if not scores:
        raise PrunekitError("weighted mean of no scores")
    if not all(math.isfinite(w) and w >= 0 for w in weights):
        raise PrunekitError(f"weights must be finite and non-negative, got {weights}")
    total = math.fsum(weights)
    if total == 0:
        raise PrunekitError("weights sum to zero")
    if not all(math.isfinite(s) for s in scores):
        raise PrunekitError(f"scores must be finite, got {scores}")
    return math.fsum(s * w for s, w in zip(scores, weights)) / total
