"""``--mode static``: score at initialisation, fix the masks, train the sparse model from
scratch (SNIP, DiSparse static)."""
from __future__ import annotations

from ...api import check_arbiter
from ...core.masks import AppliedMasks
from ...interfaces import Masks
from ..context import RunContext
from ..steps import Steps
from .base import Mode


class Static(Mode):
    name = "static"
    default_scorer, default_thresholder = "disparse-snip", "topk"
    takes_pattern = True

    def check(self, ctx: RunContext) -> None:
        check_arbiter(self.scorer, self.arbiter, len(self.config.tasks))
        if self.scorer.needs_trained:
            ctx.warn(f"scorer {self.scorer.name!r} is meant for trained weights, and static mode "
                     "scores the untrained model; use --mode pretrained to train first")

    def execute(self, ctx: RunContext, steps: Steps) -> Masks:
        config = ctx.config
        masks = steps.prune(config.sparsity).masks
        steps.train_phase(AppliedMasks(ctx.model, masks), config.iterations, config.lr,
                          "training")
        return masks
