"""The paths of ``prunekit run``, one module each, and the choice between them.

``--mode`` names four training paradigms; with the plugins' declarations a run takes one of
eight paths:

| path | chosen by | module |
|---|---|---|
| dense | ``--dense`` | ``dense`` |
| static | ``--mode static`` | ``static`` |
| learned | a thresholder that ``learns`` (``soft-threshold``) | ``learned`` |
| pretrained | ``--mode pretrained`` | ``pretrained`` |
| dynamic | ``--mode dynamic`` | ``dynamic`` |
| iterative | ``--mode iterative`` (``--rewind``: lottery tickets) | ``iterative`` |
| structured | a scorer of ``granularity = "filter"`` | ``structured`` |
| retrain | a filter scorer with ``--retrain-from-scratch`` | ``retrain`` |

This package is the one place that reads the plugins' ``learns`` and ``granularity`` to choose
a path. A new path is a new module with a ``Mode`` subclass, listed in ``path_for``.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

from ...errors import PrunekitError, UnknownNameError
from ...interfaces import Scorer, Thresholder
from ...models import canonical_name
from ...registry import Registry, default_registry
from ..config import RunConfig
from .base import Mode
from .dense import Dense
from .dynamic import Dynamic
from .iterative import Iterative
from .learned import Learned
from .pretrained import Pretrained
from .retrain import RetrainFromScratch
from .static import Static
from .structured import Structured

MODES: dict[str, type[Mode]] = {mode.name: mode
                                for mode in (Static, Pretrained, Dynamic, Iterative)}
PATHS: tuple[type[Mode], ...] = (Dense, Static, Learned, Pretrained, Dynamic, Iterative,
                                 Structured, RetrainFromScratch)
# read whatever the path when --task-weighting is adaptive
TASK_WEIGHTING_OPTIONS = {"window"}


def resolved(config: RunConfig) -> RunConfig:
    """A copy with the mode's default scorer and thresholder and the fine-tuning budget."""
    if config.mode not in MODES:
        raise UnknownNameError("mode", config.mode, MODES)
    mode = MODES[config.mode]
    fine_tunes = "finetune_iterations" in mode.options  # pretrained, iterative
    return dataclasses.replace(
        config,
        scorer=config.scorer or mode.default_scorer,
        model=canonical_name(config.model),  # a user's file by its absolute path
        thresholder=config.thresholder or mode.default_thresholder,
        finetune_iterations=(None if not fine_tunes
                             else config.iterations // 2 if config.finetune_iterations is None
                             else config.finetune_iterations),
        finetune_lr=(None if not fine_tunes
                     else config.lr / 10 if config.finetune_lr is None else config.finetune_lr),
    )


def path_for(config: RunConfig, scorer: Scorer | None,
             thresholder: Thresholder | None) -> type[Mode]:
    """The path a resolved ``config`` takes with these plugins (None: unknown yet)."""
    if config.dense:
        return Dense
    if thresholder is not None and thresholder.learns:
        return Learned
    if scorer is not None and scorer.granularity == "filter":
        return RetrainFromScratch if config.retrain_from_scratch else Structured
    return MODES[config.mode]


def select(config: RunConfig, registry: Registry | None = None) -> Mode:
    """The mode object of a resolved ``config``, its plugins looked up (unknown names are
    errors) and its options checked."""
    registry = registry or default_registry()
    scorer = None if config.dense else registry.get("scorer", config.scorer)
    arbiter = registry.get("arbiter", config.arbiter)
    thresholder = None if config.dense else registry.get("thresholder", config.thresholder)
    path = path_for(config, scorer, thresholder)
    mode = path(config, None if path is Learned else scorer, arbiter, thresholder)
    mode.check_options()
    return mode


def path_named_in(config: RunConfig) -> type[Mode]:
    """``path_for`` by the plugin names in a resolved ``config``; a name that is not registered
    counts as an element-wise plugin (the run itself reports it)."""
    registry = default_registry()

    def known(kind: str, name: str | None):
        try:
            return registry.get(kind, name) if name else None
        except PrunekitError:
            return None

    return path_for(config, known("scorer", config.scorer),
                    known("thresholder", config.thresholder))


def options_read(config: RunConfig) -> set[str]:
    """The mode-specific options a resolved ``config`` reads."""
    read = path_named_in(config).options_read(config)
    if config.task_weighting == "adaptive":
        read |= TASK_WEIGHTING_OPTIONS
    return read


def removes_channels(config: RunConfig) -> bool:
    """Whether a resolved ``config`` runs structured pruning (with or without retraining)."""
    return issubclass(path_named_in(config), Structured)


def ignored_options(config: RunConfig, given: Iterable[str]) -> list[str]:
    """Those of ``given`` (option names) that only other paths read; ``--sparsity`` when a
    pattern sets the sparsity instead, ``--uncovered`` without a pattern."""
    specific = TASK_WEIGHTING_OPTIONS.union(*(path.options for path in PATHS))
    read = options_read(config)
    pattern_only = {"sparsity": bool(config.pattern), "uncovered": not config.pattern}
    return [name for name in given
            if name in specific and name not in read or pattern_only.get(name, False)]


def ignored_option_warning(config: RunConfig, name: str) -> str:
    """The warning for an option ``ignored_options`` found."""
    if name == "sparsity":
        return (f"--sparsity does not apply with --pattern {config.pattern}, which keeps "
                f"{config.pattern.replace(':', ' of every ')} weights; ignored")
    if name == "uncovered":
        return "--uncovered applies to tensors an N:M --pattern cannot cover; without one, ignored"
    method = (f"--scorer {config.scorer}" if removes_channels(config)
              else f"--thresholder {config.thresholder}")
    return (f"--{name.replace('_', '-')} does not apply to --mode {config.mode} with {method}"
            f"{' and --rewind' if config.rewind else ''}"
            f"{' and --retrain-from-scratch' if config.retrain_from_scratch else ''}; ignored")
