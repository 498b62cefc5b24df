"""``--mode iterative``: train dense, then prune a share and fine-tune, round after round,
until the sparsity is reached; ``--rewind`` resets the survivors to their initial values each
round and retrains them at ``--lr`` (lottery tickets). With ``--pattern N:M`` the rounds keep
fewer weights of every group of M each time, down to N (gradual N:M pruning)."""
from __future__ import annotations

from ...api import check_arbiter
from ...core.masks import AppliedMasks
from ...core.pruning import round_sparsities
from ...core.semi_structured import round_keeps
from ...errors import PrunekitError
from ...interfaces import Masks
from ..config import RunConfig
from ..context import RunContext
from ..steps import Steps
from .base import Mode
from .pretrained import FINE_TUNING


class Iterative(Mode):
    name = "iterative"
    default_scorer, default_thresholder = "magnitude", "topk"
    takes_pattern = True
    options = FINE_TUNING | {"prune_rounds"}
    starts_from_checkpoint = True

    @classmethod
    def options_read(cls, config: RunConfig) -> set[str]:
        read = set(cls.options)
        if config.rewind:
            read.discard("finetune_lr")  # rewound rounds retrain at --lr
        return read

    def refuse_rewind(self) -> None:
        if self.config.init_checkpoint:
            raise PrunekitError("--rewind resets weights to their values before dense "
                                "training, which a run starting from --init-checkpoint does not "
                                "have")

    def check(self, ctx: RunContext) -> None:
        check_arbiter(self.scorer, self.arbiter, len(self.config.tasks))

    def execute(self, ctx: RunContext, steps: Steps) -> Masks:
        config = ctx.config
        initial = ({k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
                   if config.rewind else None)
        steps.pretrain()
        masks = None
        for number, (sparsity, keep) in enumerate(round_targets(config), 1):
            result = steps.prune(sparsity, within=masks, keep=keep)
            masks = result.masks
            # ctx.report, not a list held across rounds: a resumed run replaces the report
            ctx.report.setdefault("rounds", []).append(
                {"round": number, "requested": sparsity, "achieved": result.achieved})
            if config.rewind:  # lottery tickets: the survivors restart from their initial values
                ctx.model.load_state_dict(initial)
                steps.train_phase(AppliedMasks(ctx.model, masks), config.finetune_iterations,
                                  config.lr, "retraining")
            else:
                steps.train_phase(AppliedMasks(ctx.model, masks), config.finetune_iterations,
                                  config.finetune_lr, "finetuning")
        return masks


def round_targets(config: RunConfig) -> list[tuple[float, int | None]]:
    """Each round's (sparsity, weights kept per group of M): with a pattern the groups go from
    M kept down to N in even steps (gradual N:M), else the rounds' sparsities."""
    if config.pattern:
        pattern = config.nm_pattern
        return [(1.0 - keep / pattern.m, keep)
                for keep in round_keeps(pattern, config.prune_rounds)]
    return [(sparsity, None) for sparsity in round_sparsities(config.sparsity,
                                                              config.prune_rounds)]
