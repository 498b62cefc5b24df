"""The plugin contract, checked where prunekit calls a plugin (docs/plugins.md is its reference).

A plugin is code prunekit does not control. Every call of a plugin method goes through one
function here, which checks what came back before anything uses it: the tensors asked for and
no others, exact shapes (never broadcast), floating scores, bool masks on the right device,
finite values, the keep counts asked for, arbiter masks inside the union of the tasks' masks,
finite metric values. A broken contract, an exception or a None from a plugin is one
``PluginError`` line naming the kind, the plugin, its distribution and version, the tensor,
and what was expected against what came back.

Inputs a plugin changes in place are refused too (version counters; for a scorer, the model's
prunable weights compared bit for bit). The checks are a type test, a shape compare and one pass
over each tensor, plus one copy of the weights around a scorer: always on.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import math
import numbers
from typing import Iterator, Mapping, Sequence

import torch

from ..errors import PrunekitError, one_line
from ..interfaces import JOINT, Arbiter, Masks, Metric, Plugin, Saliency, Scorer, ScoringContext, \
    Thresholder

# |achieved - requested| sparsity a pruning may miss by before the run stops (half a point)
SPARSITY_TOLERANCE = 5e-3
GRANULARITIES = ("element", "filter")
SCOPES = ("global", "layer")
SCHEDULES = ("exponential", "linear")


class PluginError(PrunekitError):
    """A plugin broke its contract: it raised, returned None or returned the wrong thing."""

    def __init__(self, plugin: Plugin, problem: str):
        self.plugin = plugin
        super().__init__(f"{describe(plugin)}: {problem}")


@functools.lru_cache(maxsize=None)
def installed_distribution(module: str) -> tuple[str, str] | None:
    """The distribution, and its version, that installed the top-level package of ``module``
    (the one whose entry point registered it, for an installed plugin)."""
    names = importlib.metadata.packages_distributions().get(module.split(".")[0])
    if not names:
        return None
    return names[0], importlib.metadata.version(names[0])


def describe(plugin: Plugin) -> str:
    """``scorer 'name' (distribution version)``: where a plugin object came from."""
    kind = getattr(plugin, "kind", "plugin")
    name = getattr(plugin, "name", type(plugin).__name__)
    found = installed_distribution(type(plugin).__module__)
    source = " ".join(found) if found else f"module {type(plugin).__module__}, not installed"
    return f"{kind} {name!r} ({source})"


def call(plugin: Plugin, method: str, *args, inputs: Mapping[str, torch.Tensor] | None = None,
         **kwargs):
    """``plugin.method(*args, **kwargs)``; an exception it raises becomes a PluginError.

    ``inputs`` (named tensors among the arguments) must come back as they went in: changing
    them in place (seen by their version counters, no copy) is a PluginError too.
    prunekit's own errors (a NaN loss found by ``context.check_loss``) pass unchanged.
    """
    inputs = inputs or {}
    versions = [tensor._version for tensor in inputs.values()]
    try:
        result = getattr(plugin, method)(*args, **kwargs)
    except PrunekitError:
        raise
    except Exception as exc:
        raise PluginError(plugin, f"{method}() raised {type(exc).__name__}: "
                                  f"{one_line(exc, 300)}") from exc
    for (name, tensor), version in zip(inputs.items(), versions):
        if tensor._version != version:
            raise PluginError(plugin, f"{method}() changed its input {name} in place; "
                                      "leave inputs as they are and return new tensors")
    if result is None:
        raise PluginError(plugin, f"{method}() returned None")
    return result


def shape_of(tensor: torch.Tensor) -> list[int]:
    return list(tensor.shape)


def check_keys(plugin: Plugin, got: object, expected: Sequence[str], what: str,
               subset: bool = False) -> None:
    """``got`` is a dict whose keys are ``expected`` (or, with ``subset``, some of them)."""
    if not isinstance(got, Mapping):
        raise PluginError(plugin, f"returned a {type(got).__name__}, expected a dict of {what}")
    extra = [k for k in got if k not in expected]
    if extra:
        raise PluginError(plugin, f"returned {what} for {extra[0]!r}, which was not asked for "
                                  f"(expected: {', '.join(map(repr, expected[:6]))}"
                                  f"{', ...' if len(expected) > 6 else ''})")
    missing = [k for k in expected if k not in got]
    if missing and not subset:
        raise PluginError(plugin, f"returned no {what} for {missing[0]!r}"
                                  f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}")
    if subset and not got:
        raise PluginError(plugin, f"returned no {what} at all")


def check_tensor(plugin: Plugin, value: object, where: str, shape: torch.Size,
                 device: torch.device, floating: bool) -> None:
    """A tensor of exactly ``shape`` on ``device``: floating and finite, or bool."""
    if not isinstance(value, torch.Tensor):
        raise PluginError(plugin, f"{where}: expected a tensor, got {type(value).__name__}")
    if value.layout != torch.strided:
        raise PluginError(plugin, f"{where}: expected a dense (strided) tensor, got layout "
                                  f"{value.layout}")
    if value.shape != shape:
        raise PluginError(plugin, f"{where}: expected shape {list(shape)}, got "
                                  f"{shape_of(value)}")
    if floating and not value.is_floating_point():
        raise PluginError(plugin, f"{where}: expected a floating dtype, got {value.dtype}")
    if not floating and value.dtype != torch.bool:
        raise PluginError(plugin, f"{where}: expected dtype torch.bool, got {value.dtype}")
    if value.device != device:
        raise PluginError(plugin, f"{where}: expected device {device}, got {value.device}")
    if floating and value.numel() and not bool(torch.isfinite(value).all()):
        bad = value[~torch.isfinite(value)].flatten()[0].item()
        raise PluginError(plugin, f"{where}: expected finite values, got {bad}")


# --- declarations: the class attributes, checked when a plugin registers -------------------------

def declaration_problem(plugin: Plugin) -> str | None:
    """What is wrong with the attributes prunekit reads from a method object, or None."""
    checks: list[tuple[str, bool, str]] = []
    if isinstance(plugin, Scorer):
        checks += [("per_task", isinstance(plugin.per_task, bool), "True or False"),
                   ("needs_data", isinstance(plugin.needs_data, bool), "True or False"),
                   ("needs_trained", isinstance(plugin.needs_trained, bool), "True or False"),
                   ("grows", isinstance(plugin.grows, bool), "True or False"),
                   ("granularity", plugin.granularity in GRANULARITIES,
                    " or ".join(map(repr, GRANULARITIES))),
                   ("rounds", is_count(plugin.rounds), "a positive int"),
                   ("schedule", plugin.schedule in SCHEDULES, " or ".join(map(repr, SCHEDULES)))]
    elif isinstance(plugin, Thresholder):
        scopes = plugin.scopes
        checks += [("scopes", isinstance(scopes, tuple) and bool(scopes)
                    and all(s in SCOPES for s in scopes),
                    f"a non-empty tuple of {' and '.join(map(repr, SCOPES))}"),
                   ("learns", isinstance(plugin.learns, bool), "True or False")]
    elif isinstance(plugin, Arbiter):
        checks.append(("min_tasks", is_count(plugin.min_tasks), "a positive int"))
    for attribute, valid, expected in checks:
        if not valid:
            return f"{attribute} must be {expected}, got {getattr(plugin, attribute)!r}"
    return None


def is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# --- the four calls ------------------------------------------------------------------------------

def asked_saliency(scorer: Scorer, context: ScoringContext) -> dict[str, list[str]]:
    """The tensors a scorer scores: per task its shared tensors and head, or all of them."""
    layout = context.layout
    if scorer.per_task:
        return {task: layout.task_params(task) for task in layout.tasks}
    return {JOINT: list(layout.params)}


@contextlib.contextmanager
def weights_kept(scorer: Scorer, params: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """The prunable weights must be bit for bit what they were after the scorer ran.

    Compared by value, not by version counter: pruning code often writes through ``.data``,
    which version counters do not see, and a model left changed would be trained as it is.
    """
    before = {name: param.detach().clone() for name, param in params.items()}
    yield
    for name, param in params.items():
        if not torch.equal(bits(param.detach()), bits(before[name])):
            raise PluginError(scorer, f"score() changed the model's weights {name!r}; score "
                                      "a copy, or restore them before returning")


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes: equal exactly when the values are, NaN included."""
    return tensor.contiguous().flatten().view(torch.uint8)


def score(scorer: Scorer, context: ScoringContext) -> Saliency:
    """``scorer.score(context)``, checked: the model's prunable weights untouched, every key and
    tensor asked for, exact shapes, finite floating scores on each parameter's device. A filter
    scorer may leave tensors out."""
    with weights_kept(scorer, context.layout.params):
        saliency = call(scorer, "score", context)
    asked = asked_saliency(scorer, context)
    check_keys(scorer, saliency, list(asked), "saliency")
    params = context.layout.params
    filters = scorer.granularity == "filter"
    for key, names in asked.items():
        what = "saliency" if key == JOINT else f"saliency of task {key!r}"
        check_keys(scorer, saliency[key], names, f"{what} tensors", subset=filters)
        for name, scores in saliency[key].items():
            param = params[name]
            check_tensor(scorer, scores, f"{what} of {name!r}",
                         param.shape[:1] if filters else param.shape, param.device, floating=True)
    return saliency


def keep_count_slack(scores: Mapping[str, torch.Tensor]) -> int:
    """Kept elements a thresholder may be off by: one per tensor, for per-tensor rounding."""
    return len(scores)


def threshold(thresholder: Thresholder, scores: Mapping[str, torch.Tensor], keep_ratio: float,
              scope: str | None) -> Masks:
    """``thresholder.masks(...)``, checked: a bool mask of each score's shape and device,
    keeping ``round(keep_ratio * N)`` of the N elements (give or take one per tensor).

    ``scope`` is passed only when one was asked for, so thresholders without scopes still work.
    """
    inputs = {f"scores of {name!r}": tensor for name, tensor in scores.items()}
    masks = (call(thresholder, "masks", scores, keep_ratio, inputs=inputs) if scope is None
             else call(thresholder, "masks", scores, keep_ratio, scope=scope, inputs=inputs))
    check_keys(thresholder, masks, list(scores), "masks")
    for name, mask in masks.items():
        check_tensor(thresholder, mask, f"mask of {name!r}", scores[name].shape,
                     scores[name].device, floating=False)
    total = sum(s.numel() for s in scores.values())
    asked = round(keep_ratio * total)
    kept = sum(int(m.sum()) for m in masks.values())
    slack = keep_count_slack(scores)
    if abs(kept - asked) > slack:
        raise PluginError(thresholder, f"kept {kept} of {total} elements at keep ratio "
                                       f"{keep_ratio:.6g}; expected {asked} (give or take "
                                       f"{slack}, one per tensor)")
    return masks


def merge(arbiter: Arbiter, masks: Sequence[torch.Tensor], name: str) -> torch.Tensor:
    """``arbiter.merge(masks)`` for the shared tensor ``name``, checked: one bool mask of the
    tasks' shape and device, keeping nothing that no task kept."""
    merged = call(arbiter, "merge", masks,
                  inputs={f"mask {i} of {name!r}": mask for i, mask in enumerate(masks)})
    first = masks[0]
    check_tensor(arbiter, merged, f"merged mask of {name!r}", first.shape, first.device,
                 floating=False)
    union = torch.stack(list(masks)).any(dim=0)
    outside = int((merged & ~union).sum())
    if outside:
        raise PluginError(arbiter, f"merged mask of {name!r}: expected a subset of the tasks' "
                                   f"union, got {outside} element(s) that no task kept")
    return merged


def layer_score(metric: Metric, mask_a: torch.Tensor, mask_b: torch.Tensor,
                saliency_a: torch.Tensor, saliency_b: torch.Tensor, name: str) -> float:
    """``metric.layer_score(...)`` for the shared tensor ``name``, checked: a finite number."""
    inputs = {f"{what} of {name!r}": tensor for what, tensor in
              (("mask_a", mask_a), ("mask_b", mask_b), ("saliency_a", saliency_a),
               ("saliency_b", saliency_b))}
    value = call(metric, "layer_score", mask_a, mask_b, saliency_a, saliency_b, inputs=inputs)
    if isinstance(value, torch.Tensor) or isinstance(value, bool) \
            or not isinstance(value, numbers.Real):
        raise PluginError(metric, f"layer_score of {name!r}: expected a float, got "
                                  f"{type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:  # an int past float's range
        number = math.inf
    if not math.isfinite(number):
        raise PluginError(metric, f"layer_score of {name!r}: expected a finite number, "
                                  f"got {one_line(value, 40)}")
    return number


def check_sparsity_reached(requested: float, achieved: float, plugins: Sequence[Plugin]) -> None:
    """Stop when the masks miss the requested sparsity by more than SPARSITY_TOLERANCE."""
    if abs(achieved - requested) > SPARSITY_TOLERANCE:
        raise PrunekitError(f"the masks are {achieved:.3f} sparse, {requested:.3f} was requested "
                            f"(tolerance {SPARSITY_TOLERANCE}): the plugins in play are "
                            f"{', '.join(describe(p) for p in plugins)}")
