"""``--mode dynamic``: RigL. Random masks with the thresholder's densities (ERK), then drop the
smallest weights and grow the connections with the largest gradient score during training."""
from __future__ import annotations

from ...api import check_arbiter
from ...core.masks import AppliedMasks
from ...core.rigl import RigLSchedule, RigLUpdater
from ...errors import PrunekitError
from ...interfaces import Masks
from ...registry import default_registry, plugin_info
from ..config import RunConfig
from ..context import RunContext
from ..steps import Steps
from .base import Mode


def schedule_of(config: RunConfig) -> RigLSchedule:
    return RigLSchedule.for_training(config.iterations, config.update_interval, config.update_end,
                                     config.drop_fraction)


class Dynamic(Mode):
    name = "dynamic"
    default_scorer, default_thresholder = "disparse-rigl", "erk"
    takes_pattern = True
    options = frozenset({"update_interval", "update_end", "drop_fraction"})

    def reads_score_batches(self) -> bool:
        return False  # random initial masks; each update's grow score reads its own batch

    def check(self, ctx: RunContext) -> None:
        config = self.config
        check_arbiter(self.scorer, self.arbiter, len(config.tasks))
        schedule = schedule_of(config)
        if schedule.updates == 0:
            raise PrunekitError(f"--mode dynamic would update no mask: the first update is at "
                                f"step {schedule.interval}, updates stop at step {schedule.end} "
                                f"({config.update_end:g} of {config.iterations}); lower "
                                "--update-interval or raise --iterations")
        if not self.scorer.grows:
            registry = default_registry()
            growers = ", ".join(name for name in registry.names("scorer")
                                if registry.get("scorer", name).grows)
            raise PrunekitError(f"--mode dynamic grows connections by a gradient score; scorer "
                                f"{self.scorer.name!r} has none (use one of: {growers})")

    def execute(self, ctx: RunContext, steps: Steps) -> Masks:
        config = ctx.config
        initial = steps.prune(config.sparsity, scorer=default_registry().get("scorer", "random"))
        ctx.report["plugins"]["initial_scorer"] = plugin_info("scorer", "random")
        applied = AppliedMasks(ctx.model, initial.masks)
        updater = RigLUpdater(ctx.model, ctx.layout, ctx.tasks, applied, ctx.scorer, ctx.arbiter,
                              schedule_of(config), config.seed, config.nm_pattern)
        steps.train_phase(applied, config.iterations, config.lr, "training", after_step=updater)
        training = ctx.timings.get("training", 0.0)
        ctx.report["rigl"] = {
            "updates": updater.updates, "regrown": updater.regrown,
            "update_seconds": round(updater.seconds, 3),
            "update_share_of_training": updater.seconds / training if training else None,
            "history": updater.history,
        }
        return applied.named_masks()
