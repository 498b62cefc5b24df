"""``--dense``: train without pruning, the baseline a pruned run's Delta_T is measured against."""
from __future__ import annotations

from ...core.masks import dense_masks
from ...errors import PrunekitError
from ...interfaces import Masks
from ..context import RunContext
from ..steps import Steps
from .base import Mode


class Dense(Mode):
    name = "dense"

    def check_options(self) -> None:
        if self.config.mode != "static":
            raise PrunekitError(f"--dense trains without pruning; it takes no --mode "
                                f"{self.config.mode}")
        super().check_options()

    def plugins_used(self) -> dict[str, str]:
        return {}

    def run_name(self) -> str:
        return "dense"

    def requested_sparsity(self) -> float:
        return 0.0

    def execute(self, ctx: RunContext, steps: Steps) -> Masks:
        steps.train_phase(None, ctx.config.iterations, ctx.config.lr, "training")
        return dense_masks(ctx.layout)
