"""``Mode``: one path a run can take, with the options it reads, their checks and its steps."""
from __future__ import annotations

from typing import ClassVar

from ...core.masks import measured_sparsity
from ...errors import PrunekitError
from ...interfaces import Arbiter, Masks, Scorer, Thresholder
from ..config import RunConfig
from ..context import RunContext
from ..pattern import check_saved_pattern
from ..steps import Steps


class Mode:
    """A path through ``prunekit run``. A subclass is one module of ``prunekit.pipeline.modes``.

    Class attributes declare what the engine asks of every mode; the methods are called in the
    run's order: ``check_options`` (settings alone) and ``check`` (with the plugins) before
    anything is built, ``training_split`` and ``check_built`` while data and model are built,
    ``execute`` for the steps, then ``sparsity`` for the report.
    """

    name: ClassVar[str]                       # the path, as docs and messages name it
    options: ClassVar[frozenset[str]] = frozenset()  # mode-specific RunConfig fields it reads
    starts_from_checkpoint: ClassVar[bool] = False  # --init-checkpoint replaces pretraining
    resumable: ClassVar[bool] = True          # checkpoints can resume it
    retrains: ClassVar[bool] = False          # reads --retrain-from-scratch
    takes_pattern: ClassVar[bool] = False     # can keep an N:M --pattern

    def __init__(self, config: RunConfig, scorer: Scorer | None, arbiter: Arbiter,
                 thresholder: Thresholder | None):
        self.config, self.scorer, self.arbiter = config, scorer, arbiter
        self.thresholder = thresholder

    @classmethod
    def options_read(cls, config: RunConfig) -> set[str]:
        """The mode-specific options a run of this mode with ``config`` reads."""
        return set(cls.options)

    def check_options(self) -> None:
        """The options' checks that need no built data or model; ``--rewind`` and
        ``--retrain-from-scratch`` are errors where they would be ignored."""
        config = self.config
        if config.init_checkpoint and not self.starts_from_checkpoint:
            raise PrunekitError("--init-checkpoint is for --mode pretrained or iterative, "
                                f"not {config.mode}")
        if config.rewind:
            self.refuse_rewind()
        if config.pattern and not self.takes_pattern:
            raise PrunekitError(f"--pattern keeps N of every M weights of element-wise masks; "
                                f"the {self.name} path has none (use --mode static, pretrained, "
                                "dynamic or iterative with a weight scorer)")
        if config.retrain_from_scratch and not self.retrains:
            raise PrunekitError("--retrain-from-scratch re-initialises the architecture that "
                                "structured pruning found; use it with a filter scorer (taylor, "
                                "cosprune) in --mode iterative")

    def refuse_rewind(self) -> None:
        raise PrunekitError(f"--rewind is for --mode iterative, not {self.config.mode}")

    def check(self, ctx: RunContext) -> None:
        """Checks with the plugins resolved, before anything is built."""

    def reads_score_batches(self) -> bool:
        """Whether the run scores on ``--score-batches`` training batches."""
        return self.scorer is not None and self.scorer.needs_data

    def one_process_reason(self) -> str | None:
        """Why the mode cannot run under torchrun, if it cannot."""
        return None

    def plugins_used(self) -> dict[str, str]:
        """``{role: plugin name}`` of the plugins the run calls, for the report."""
        used = {"scorer": self.config.scorer, "thresholder": self.config.thresholder}
        if self.scorer.per_task:
            used["arbiter"] = self.config.arbiter
        return used

    def run_name(self) -> str:
        """The default output folder's name: ``<scorer>-<arbiter>``, or the joint scorer's."""
        config = self.config
        return (f"{config.scorer}-{config.arbiter}" if self.scorer and self.scorer.per_task
                else config.scorer)

    def training_split(self, ctx: RunContext, train_set):
        """The training samples the run trains on (a mode may hold some out)."""
        return train_set

    def check_built(self, ctx: RunContext) -> None:
        """Checks that need the built model and data, before any training."""

    def execute(self, ctx: RunContext, steps: Steps) -> Masks:
        """The mode's steps; returns the final masks of the model it trained."""
        raise NotImplementedError

    def requested_sparsity(self) -> float | None:
        if self.config.pattern:
            return self.config.nm_pattern.sparsity
        return self.config.sparsity

    def sparsity(self, ctx: RunContext, checkpoint: dict) -> dict:
        """The report's sparsity, counted from the weights as saved, never taken from a
        plugin; with a pattern, the pattern is checked in them too."""
        if self.config.pattern:
            check_saved_pattern(checkpoint["model"], ctx.report["pattern"]["covered"],
                                self.config.nm_pattern)
        return measured_sparsity(checkpoint["model"], checkpoint["masks"], ctx.layout)
