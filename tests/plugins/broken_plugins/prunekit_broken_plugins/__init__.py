"""Deliberately broken prunekit plugins: each breaks the plugin contract in one way.

tests/test_plugin_contract.py installs this package with pip and runs ``prunekit run`` with each
plugin; every run must end with one ``prunekit: error:`` line naming the plugin and this
distribution, exit code 2 and no report claiming completeness. Every plugin is registered
correctly (names, declarations): what breaks is what its method returns, at run time.

A few ``good-`` plugins keep the contract; they are the controls run through the same install.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from prunekit import JOINT, Arbiter, Metric, Scorer, ScoringContext, Thresholder, hookimpl

META = torch.device("meta")
EXTRA_NAME = "not.a.parameter.weight"
EXTRA_TASK = "not-a-task"


# --- scorers ------------------------------------------------------------------------------------

def magnitude(param: torch.Tensor) -> torch.Tensor:
    """|w| plus a little, so no score is zero: finite floating scores of the param's shape."""
    return param.detach().abs() + 1e-6


def per_task_saliency(context: ScoringContext) -> dict:
    """A correct per-task saliency: each task's tensors (shared and its head)."""
    layout = context.layout
    return {task: {name: magnitude(layout.params[name]) for name in layout.task_params(task)}
            for task in layout.tasks}


def joint_saliency(context: ScoringContext) -> dict:
    return {JOINT: {name: magnitude(p) for name, p in context.layout.params.items()}}


def first_key(mapping: Mapping):
    return next(iter(mapping))


class PerTaskScorer(Scorer):
    """Data-free per-task magnitude; subclasses break what ``score`` returns in ``spoil``."""

    per_task = True
    needs_data = False

    def score(self, context: ScoringContext):
        return self.spoil(per_task_saliency(context), context)

    def spoil(self, saliency: dict, context: ScoringContext):
        return saliency


class GoodPerTaskScorer(PerTaskScorer):
    name = "good-per-task-magnitude"
    description = "control: a correct data-free per-task magnitude scorer"


class BroadcastShapeScorer(PerTaskScorer):
    name = "broken-scorer-broadcast-shape"
    description = "scores of shape (out, 1, 1, 1) for 4-d conv weights: broadcastable, not exact"

    def spoil(self, saliency, context):
        return {task: {name: s.amax(dim=(1, 2, 3), keepdim=True) if s.dim() == 4 else s
                       for name, s in tensors.items()}
                for task, tensors in saliency.items()}


class NoneScorer(PerTaskScorer):
    name = "broken-scorer-none"
    description = "returns None"

    def score(self, context):
        return None


class RaisingScorer(PerTaskScorer):
    name = "broken-scorer-raises"
    description = "raises ValueError with a message over several lines"

    def score(self, context):
        raise ValueError("the scorer fell over\nsecond line of the message\nthird line")


class MissingTensorScorer(PerTaskScorer):
    name = "broken-scorer-missing-tensor"
    description = "leaves one tensor out of the first task's saliency"

    def spoil(self, saliency, context):
        tensors = saliency[first_key(saliency)]
        del tensors[first_key(tensors)]
        return saliency


class ExtraTensorScorer(PerTaskScorer):
    name = "broken-scorer-extra-tensor"
    description = "scores a tensor name that was not asked for"

    def spoil(self, saliency, context):
        tensors = saliency[first_key(saliency)]
        tensors[EXTRA_NAME] = next(iter(tensors.values())).clone()
        return saliency


class ExtraTaskScorer(PerTaskScorer):
    name = "broken-scorer-extra-task"
    description = "returns saliency for a task the run does not have"

    def spoil(self, saliency, context):
        saliency[EXTRA_TASK] = dict(saliency[first_key(saliency)])
        return saliency


class JointKeyScorer(PerTaskScorer):
    name = "broken-scorer-joint-key"
    description = "declares per_task but returns one joint saliency"

    def score(self, context):
        return joint_saliency(context)


class IntegerScorer(PerTaskScorer):
    name = "broken-scorer-int-dtype"
    description = "integer scores"

    def spoil(self, saliency, context):
        return {task: {name: (s * 1000).to(torch.int64) for name, s in tensors.items()}
                for task, tensors in saliency.items()}


class NaNScorer(PerTaskScorer):
    name = "broken-scorer-nan"
    description = "one NaN score in the last task's last tensor"

    def spoil(self, saliency, context):
        tensors = saliency[list(saliency)[-1]]
        tensors[list(tensors)[-1]].view(-1)[3] = float("nan")
        return saliency


class InfScorer(PerTaskScorer):
    name = "broken-scorer-inf"
    description = "one +inf score"

    def spoil(self, saliency, context):
        tensors = saliency[first_key(saliency)]
        tensors[first_key(tensors)].view(-1)[0] = float("inf")
        return saliency


class MetaDeviceScorer(PerTaskScorer):
    name = "broken-scorer-meta-device"
    description = "scores on the meta device instead of the parameters' device"

    def spoil(self, saliency, context):
        return {task: {name: torch.empty(s.shape, dtype=s.dtype, device=META)
                       for name, s in tensors.items()}
                for task, tensors in saliency.items()}


class ListScorer(PerTaskScorer):
    name = "broken-scorer-list"
    description = "returns a list of dicts instead of a dict"

    def spoil(self, saliency, context):
        return list(saliency.values())


class TensorPerTaskScorer(PerTaskScorer):
    name = "broken-scorer-tensor-per-task"
    description = "returns one flat tensor per task instead of a dict of tensors"

    def spoil(self, saliency, context):
        return {task: torch.cat([s.flatten() for s in tensors.values()])
                for task, tensors in saliency.items()}


class NumpyScorer(PerTaskScorer):
    name = "broken-scorer-numpy"
    description = "numpy arrays instead of tensors"

    def spoil(self, saliency, context):
        return {task: {name: s.numpy() for name, s in tensors.items()}
                for task, tensors in saliency.items()}


class NaNSecondRoundScorer(PerTaskScorer):
    name = "broken-scorer-nan-second-round"
    description = "declares two rounds; correct in round 1, NaN scores in round 2"
    rounds = 2

    def spoil(self, saliency, context):
        if context.round == 2:
            tensors = saliency[first_key(saliency)]
            tensors[first_key(tensors)].fill_(float("nan"))
        return saliency


class SparseScorer(PerTaskScorer):
    name = "broken-scorer-sparse"
    description = "sparse COO scores: the right shape, dtype and device, but not a strided tensor"

    def spoil(self, saliency, context):
        return {task: {name: s.to_sparse() for name, s in tensors.items()}
                for task, tensors in saliency.items()}


SCORERS = [GoodPerTaskScorer, BroadcastShapeScorer, NoneScorer, RaisingScorer,
           MissingTensorScorer, ExtraTensorScorer, ExtraTaskScorer, JointKeyScorer,
           IntegerScorer, NaNScorer, InfScorer, MetaDeviceScorer, ListScorer, TensorPerTaskScorer,
           NumpyScorer, NaNSecondRoundScorer, SparseScorer]


# --- thresholders -------------------------------------------------------------------------------

def top(scores: Mapping[str, torch.Tensor], count: int, lowest: bool = False) -> dict:
    """Bool masks keeping the ``count`` highest (or lowest) scores over all the tensors."""
    flat = torch.cat([s.detach().flatten() for s in scores.values()])
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    count = max(0, min(count, flat.numel()))
    if count:
        keep[torch.topk(-flat if lowest else flat, count).indices] = True
    masks, offset = {}, 0
    for name, s in scores.items():
        masks[name] = keep[offset:offset + s.numel()].view(s.shape).clone()
        offset += s.numel()
    return masks


def total(scores: Mapping[str, torch.Tensor]) -> int:
    return sum(s.numel() for s in scores.values())


class TopThresholder(Thresholder):
    """Global top-k; subclasses break what ``masks`` returns in ``spoil``."""

    def masks(self, scores, keep_ratio, scope=None):
        return self.spoil(top(scores, round(keep_ratio * total(scores))), scores, keep_ratio)

    def spoil(self, masks, scores, keep_ratio):
        return masks


class KeepsAllThresholder(TopThresholder):
    name = "broken-thresholder-keeps-all"
    description = "ignores keep_ratio: keeps every element"

    def masks(self, scores, keep_ratio, scope=None):
        return {name: torch.ones_like(s, dtype=torch.bool) for name, s in scores.items()}


class KeepsTooManyThresholder(TopThresholder):
    name = "broken-thresholder-keeps-too-many"
    description = "keeps round(keep_ratio * N) + N / 10 elements"

    def masks(self, scores, keep_ratio, scope=None):
        n = total(scores)
        return top(scores, round(keep_ratio * n) + n // 10)


class KeepsNoneThresholder(TopThresholder):
    name = "broken-thresholder-keeps-none"
    description = "keeps nothing"

    def spoil(self, masks, scores, keep_ratio):
        return {name: torch.zeros_like(m) for name, m in masks.items()}


class FloatMasksThresholder(TopThresholder):
    name = "broken-thresholder-float-masks"
    description = "float masks instead of bool"

    def spoil(self, masks, scores, keep_ratio):
        return {name: m.float() for name, m in masks.items()}


class WrongShapeThresholder(TopThresholder):
    name = "broken-thresholder-wrong-shape"
    description = "flattened masks"

    def spoil(self, masks, scores, keep_ratio):
        return {name: m.flatten() for name, m in masks.items()}


class MissingMaskThresholder(TopThresholder):
    name = "broken-thresholder-missing-tensor"
    description = "leaves one tensor's mask out"

    def spoil(self, masks, scores, keep_ratio):
        del masks[first_key(masks)]
        return masks


class ExtraMaskThresholder(TopThresholder):
    name = "broken-thresholder-extra-tensor"
    description = "returns a mask for a tensor that was not asked for"

    def spoil(self, masks, scores, keep_ratio):
        masks[EXTRA_NAME] = next(iter(masks.values())).clone()
        return masks


class MetaDeviceThresholder(TopThresholder):
    name = "broken-thresholder-meta-device"
    description = "masks on the meta device"

    def spoil(self, masks, scores, keep_ratio):
        return {name: torch.empty(m.shape, dtype=torch.bool, device=META)
                for name, m in masks.items()}


class NoneThresholder(TopThresholder):
    name = "broken-thresholder-none"
    description = "returns None"

    def masks(self, scores, keep_ratio, scope=None):
        return None


class RaisingThresholder(TopThresholder):
    name = "broken-thresholder-raises"
    description = "raises RuntimeError"

    def masks(self, scores, keep_ratio, scope=None):
        raise RuntimeError("the thresholder fell over")


class KeepsLowestThresholder(TopThresholder):
    name = "broken-thresholder-keeps-lowest"
    description = ("keeps the right count, but of the lowest scores: weights already pruned "
                   "(-inf) are kept first, so iterative pruning overshoots the sparsity")

    def masks(self, scores, keep_ratio, scope=None):
        return top(scores, round(keep_ratio * total(scores)), lowest=True)


class SparseThresholder(TopThresholder):
    name = "broken-thresholder-sparse"
    description = "sparse COO bool masks keeping the right count"

    def spoil(self, masks, scores, keep_ratio):
        return {name: m.to_sparse() for name, m in masks.items()}


THRESHOLDERS = [KeepsAllThresholder, KeepsTooManyThresholder, KeepsNoneThresholder,
                FloatMasksThresholder, WrongShapeThresholder, MissingMaskThresholder,
                ExtraMaskThresholder, MetaDeviceThresholder, NoneThresholder, RaisingThresholder,
                KeepsLowestThresholder, SparseThresholder]


# --- arbiters -----------------------------------------------------------------------------------

class UnionArbiter(Arbiter):
    """The union; subclasses break what ``merge`` returns in ``spoil``."""

    def merge(self, masks: Sequence[torch.Tensor]):
        return self.spoil(torch.stack(list(masks)).any(dim=0), masks)

    def spoil(self, merged, masks):
        return merged


class KeepsAllArbiter(UnionArbiter):
    name = "broken-arbiter-keeps-all"
    description = "keeps every weight, also those no task kept"

    def merge(self, masks):
        return torch.ones_like(masks[0])


class WrongShapeArbiter(UnionArbiter):
    name = "broken-arbiter-wrong-shape"
    description = "returns the first mask flattened"

    def merge(self, masks):
        return masks[0].flatten()


class Uint8Arbiter(UnionArbiter):
    name = "broken-arbiter-uint8"
    description = "a uint8 mask instead of bool"

    def spoil(self, merged, masks):
        return merged.to(torch.uint8)


class FloatArbiter(UnionArbiter):
    name = "broken-arbiter-float"
    description = "a float mask instead of bool"

    def spoil(self, merged, masks):
        return merged.float()


class MetaDeviceArbiter(UnionArbiter):
    name = "broken-arbiter-meta-device"
    description = "a mask on the meta device"

    def spoil(self, merged, masks):
        return torch.empty(merged.shape, dtype=torch.bool, device=META)


class NoneArbiter(UnionArbiter):
    name = "broken-arbiter-none"
    description = "returns None"

    def merge(self, masks):
        return None


class RaisingArbiter(UnionArbiter):
    name = "broken-arbiter-raises"
    description = "raises IndexError"

    def merge(self, masks):
        return masks[len(masks) + 5]


class ListArbiter(UnionArbiter):
    name = "broken-arbiter-list"
    description = "returns the list of masks instead of one mask"

    def merge(self, masks):
        return list(masks)


class SparseArbiter(UnionArbiter):
    name = "broken-arbiter-sparse"
    description = "the union as a sparse COO bool mask"

    def spoil(self, merged, masks):
        return merged.to_sparse()


class InPlaceKeepsAllArbiter(UnionArbiter):
    name = "broken-arbiter-keeps-all-in-place"
    description = "fills the tasks' masks it is given with True, then returns the first"

    def merge(self, masks):
        for mask in masks:
            mask.fill_(True)
        return masks[0]


ARBITERS = [KeepsAllArbiter, WrongShapeArbiter, Uint8Arbiter, FloatArbiter, MetaDeviceArbiter,
            NoneArbiter, RaisingArbiter, ListArbiter, SparseArbiter,
            InPlaceKeepsAllArbiter]


# --- metrics ------------------------------------------------------------------------------------

class IoUMetric(Metric):
    """Intersection over union as a float; subclasses break what ``layer_score`` returns."""

    def layer_score(self, mask_a, mask_b, saliency_a, saliency_b):
        union = int((mask_a | mask_b).sum())
        return self.spoil(int((mask_a & mask_b).sum()) / union if union else 1.0)

    def spoil(self, value: float):
        return value


class NaNMetric(IoUMetric):
    name = "broken-metric-nan"
    description = "returns NaN"

    def spoil(self, value):
        return float("nan")


class InfMetric(IoUMetric):
    name = "broken-metric-inf"
    description = "returns -inf"

    def spoil(self, value):
        return float("-inf")


class TensorMetric(IoUMetric):
    name = "broken-metric-tensor"
    description = "returns a 0-d torch tensor instead of a float"

    def spoil(self, value):
        return torch.tensor(value)


class NoneMetric(IoUMetric):
    name = "broken-metric-none"
    description = "returns None"

    def spoil(self, value):
        return None


class RaisingMetric(IoUMetric):
    name = "broken-metric-raises"
    description = "raises ZeroDivisionError"

    def layer_score(self, mask_a, mask_b, saliency_a, saliency_b):
        return 1 / 0


class StringMetric(IoUMetric):
    name = "broken-metric-string"
    description = "returns the value as a string"

    def spoil(self, value):
        return f"{value:.3f}"


class BoolMetric(IoUMetric):
    name = "broken-metric-bool"
    description = "returns a bool"

    def spoil(self, value):
        return value > 0.5


class HugeIntMetric(IoUMetric):
    name = "broken-metric-huge-int"
    description = "returns an int too large for a float"

    def spoil(self, value):
        return 10 ** 400


METRICS = [NaNMetric, InfMetric, TensorMetric, NoneMetric, RaisingMetric, StringMetric,
           BoolMetric, HugeIntMetric]


@hookimpl
def prunekit_register_scorers(register):
    for cls in SCORERS:
        register(cls())


@hookimpl
def prunekit_register_thresholders(register):
    for cls in THRESHOLDERS:
        register(cls())


@hookimpl
def prunekit_register_arbiters(register):
    for cls in ARBITERS:
        register(cls())


@hookimpl
def prunekit_register_metrics(register):
    for cls in METRICS:
        register(cls())
