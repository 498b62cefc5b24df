"""Run a plugin through its contract on a tiny model, as ``prunekit plugins check NAME`` does.

For plugin authors, in their own tests::

    from .testing import assert_plugin_ok
    def test_my_scorer_keeps_the_contract():
        assert_plugin_ok(MyScorer())

Each check calls the plugin the way a run does (through ``prunekit.contract``) on a
DeepLab-ResNet34 of width 0.125 with the seg, depth and normal heads and a few 32x40 samples of
the embedded synthetic data, plus hand-made inputs at the edges (ties, zeros, negative and
pruned -inf scores, empty and full masks). A check that fails says what the run would say.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import torch

from .core import contract
from .api import compute_masks, resolve
from .errors import PrunekitError, UnknownNameError, one_line
from .interfaces import INTERFACES, Arbiter, Metric, Plugin, Scorer, ScoringContext, Thresholder
from .registry import default_registry

TASKS = ("seg", "depth", "normal")
IMAGE_SIZE = (32, 40)
BATCH_SIZE = 2
SCORE_BATCHES = 2
SPARSITY = 0.9
KEEP_RATIOS = (0.0, 0.1, 0.5, 0.97, 1.0)


@dataclass(frozen=True)
class Finding:
    check: str
    problem: str | None = None    # None: the check passed

    @property
    def ok(self) -> bool:
        return self.problem is None

    def line(self) -> str:
        return f"ok    {self.check}" if self.ok else f"FAIL  {self.check}: {self.problem}"


@dataclass
class Bench:
    """The tiny model, its layout, tasks and scoring batches every check uses."""

    model: torch.nn.Module
    layout: object
    tasks: dict
    batches: list[dict]

    @classmethod
    def build(cls, seed: int = 0) -> "Bench":
        from .data import build_dataset
        from .models import build_model, model_layout
        from .tasks import build_tasks

        torch.manual_seed(seed)
        data = build_dataset("synthetic", "train", size=IMAGE_SIZE, seed=seed)
        tasks = build_tasks(TASKS, data)
        model = build_model("deeplab-resnet34", {n: t.channels for n, t in tasks.items()},
                            0.125)
        layout = model_layout(model).for_tasks(TASKS).resolve(model)
        loader = torch.utils.data.DataLoader(data, batch_size=BATCH_SIZE)
        batches = list(itertools.islice(loader, SCORE_BATCHES))
        return cls(model, layout, tasks, batches)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, *self.batches[0]["image"].shape[1:])

    def context(self, batches=None) -> ScoringContext:
        return ScoringContext(self.model, self.layout, self.tasks,
                              self.batches if batches is None else batches,
                              torch.device("cpu"), lambda task, loss, where: None,
                              input_shape=self.input_shape)

    def random_scores(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {n: torch.randn(p.shape, generator=generator)
                for n, p in self.layout.params.items()}


def checked(name: str, run: Callable[[], None]) -> Finding:
    """Run one check; a PrunekitError (the contract's, or prunekit's) is its finding."""
    try:
        run()
    except PrunekitError as exc:
        return Finding(name, one_line(exc))
    return Finding(name)


def scorer_checks(scorer: Scorer, bench: Bench) -> list[Finding]:
    if scorer.granularity == "filter":
        return [checked("scores one batch per output filter",
                        lambda: contract.score(scorer, bench.context(bench.batches[:1])))]
    batches = bench.batches if scorer.needs_data else []
    arbiter = default_registry().get("arbiter", "or")
    findings = [checked(f"prunes the tiny model to {SPARSITY} with topk"
                        + (" and or" if scorer.per_task else "")
                        + (f" in {scorer.rounds} rounds" if scorer.rounds > 1 else ""),
                        lambda: compute_masks(bench.model, bench.layout, bench.tasks, batches,
                                              scorer, arbiter, "topk", SPARSITY,
                                              input_shape=bench.input_shape))]
    if scorer.grows:
        findings.append(checked("scores one training batch (grow score)",
                                lambda: contract.score(scorer,
                                                       bench.context(bench.batches[:1]))))
    return findings


def thresholder_checks(thresholder: Thresholder, bench: Bench) -> list[Finding]:
    if thresholder.learns:
        return [Finding("learns its masks while training: masks() is never called")]
    generator = torch.Generator().manual_seed(0)
    random = bench.random_scores(generator)
    inputs = {
        "random scores": random,
        "all-equal scores (ties)": {n: torch.zeros_like(s) for n, s in random.items()},
        "negative scores": {n: -s.abs() - 1 for n, s in random.items()},
        "scores with pruned weights at -inf": {
            n: s.masked_fill(torch.rand(s.shape, generator=generator) < 0.5, -float("inf"))
            for n, s in random.items()},
        "one tensor": dict(itertools.islice(random.items(), 1)),
    }
    findings = []
    for (what, scores), scope in itertools.product(inputs.items(), thresholder.scopes):
        for ratio in KEEP_RATIOS:
            findings.append(checked(f"{what}, scope {scope}, keep ratio {ratio}",
                                    lambda: contract.threshold(thresholder, scores, ratio,
                                                               scope)))
    findings.append(checked("scope left to the thresholder (None)",
                            lambda: contract.threshold(thresholder, random, 0.1, None)))
    return findings


def arbiter_checks(arbiter: Arbiter, bench: Bench) -> list[Finding]:
    generator = torch.Generator().manual_seed(0)
    count = max(arbiter.min_tasks, len(TASKS))
    shapes = {"a conv weight": (8, 4, 3, 3), "a vector": (7,), "an empty tensor": (0, 3)}
    findings = []
    for what, shape in shapes.items():
        masks = [torch.rand(shape, generator=generator) < 0.3 for _ in range(count)]
        findings.append(checked(f"{count} random masks of {what}",
                                lambda: contract.merge(arbiter, masks, what)))
    for what, fill in (("empty", False), ("full", True)):
        masks = [torch.full((5, 5), fill) for _ in range(count)]
        findings.append(checked(f"{count} {what} masks",
                                lambda: contract.merge(arbiter, masks, f"{what} masks")))
    if count <= len(TASKS):
        scorer = default_registry().get("scorer", "disparse-snip")
        findings.append(checked(f"merges disparse-snip's masks of the tiny model to {SPARSITY}",
                                lambda: compute_masks(bench.model, bench.layout, bench.tasks,
                                                      bench.batches, scorer, arbiter, "topk",
                                                      SPARSITY)))
    return findings


def metric_checks(metric: Metric, bench: Bench) -> list[Finding]:
    generator = torch.Generator().manual_seed(0)
    name, param = next(iter(bench.layout.params.items()))
    shape = param.shape

    def masks(share: float) -> torch.Tensor:
        return torch.rand(shape, generator=generator) < share

    def saliency() -> torch.Tensor:
        scores = torch.rand(shape, generator=generator)
        return scores / scores.sum()

    same = masks(0.3)
    cases = {
        "two random subnetworks": (masks(0.3), masks(0.3), saliency(), saliency()),
        "the same subnetwork": (same, same.clone(), saliency(), saliency()),
        "two empty masks": (masks(0.0), masks(0.0), saliency(), saliency()),
        "zero saliencies": (masks(0.3), masks(0.3), torch.zeros(shape), torch.zeros(shape)),
    }
    return [checked(f"{what} of {name}", lambda: contract.layer_score(metric, *args, name))
            for what, args in cases.items()]


CHECKS = {"scorer": scorer_checks, "thresholder": thresholder_checks,
          "arbiter": arbiter_checks, "metric": metric_checks}


def find_plugin(plugin: str | Plugin, kind: str | None) -> Plugin:
    """A plugin object: given, or by name (of ``kind``, or of the one kind that has it)."""
    if not isinstance(plugin, str):
        kind = kind or next((k for k, i in INTERFACES.items() if isinstance(plugin, i)), None)
        if kind is None:
            raise PrunekitError(f"{plugin!r} is not a scorer, thresholder, arbiter or metric")
        return resolve(kind, plugin)
    if kind is not None:
        return default_registry().get(kind, plugin)
    kinds = [k for k in INTERFACES if plugin in default_registry().names(k)]
    if len(kinds) > 1:
        raise PrunekitError(f"{plugin!r} names a {' and a '.join(kinds)}; give --kind")
    if not kinds:
        everything = {n for k in INTERFACES for n in default_registry().names(k)}
        raise UnknownNameError("plugin", plugin, everything)
    return default_registry().get(kinds[0], plugin)


def check_plugin(plugin: str | Plugin, kind: str | None = None) -> list[Finding]:
    """Every check of the plugin's kind, passed or failed, in order."""
    obj = find_plugin(plugin, kind)
    return CHECKS[obj.kind](obj, Bench.build())


def assert_plugin_ok(plugin: str | Plugin, kind: str | None = None) -> None:
    """Fail (AssertionError listing every failed check) unless the plugin keeps its contract."""
    failed = [f for f in check_plugin(plugin, kind) if not f.ok]
    assert not failed, "\n".join(f.line() for f in failed)
