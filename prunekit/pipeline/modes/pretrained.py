"""``--mode pretrained``: train dense (or load ``--init-checkpoint``), score the trained
weights, prune once and fine-tune (gradient flow, DiSparse pretrained)."""
from __future__ import annotations

from ...api import check_arbiter
from ...core.masks import AppliedMasks
from ...interfaces import Masks
from ..context import RunContext
from ..steps import Steps
from .base import Mode

FINE_TUNING = frozenset({"finetune_iterations", "finetune_lr"})


class Pretrained(Mode):
    name = "pretrained"
    default_scorer, default_thresholder = "disparse-gradflow", "topk"
    takes_pattern = True
    options = FINE_TUNING
    starts_from_checkpoint = True

    def check(self, ctx: RunContext) -> None:
        check_arbiter(self.scorer, self.arbiter, len(self.config.tasks))

    def execute(self, ctx: RunContext, steps: Steps) -> Masks:
        config = ctx.config
        steps.pretrain()
        masks = steps.prune(config.sparsity).masks
        steps.train_phase(AppliedMasks(ctx.model, masks), config.finetune_iterations,
                          config.finetune_lr, "finetuning")
        return masks
