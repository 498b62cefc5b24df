"""Learned soft thresholds (AdapMTL): ``--mode static`` with a thresholder that learns
(``soft-threshold``). Nothing is scored: per-component thresholds train with the weights from
scratch until the overall sparsity reaches the target, then stay; training goes on."""
from __future__ import annotations

import torch

from ...core.soft_threshold import ComponentThresholds
from ...errors import PrunekitError
from ...interfaces import Masks
from ..context import RunContext
from ...plots import save_sparsity_history
from ..steps import Steps
from .base import Mode


class Learned(Mode):
    name = "learned"
    options = frozenset({"theta_init", "theta_lr", "theta_decay"})
    resumable = False

    def check_options(self) -> None:
        config = self.config
        if config.mode != "static":
            raise PrunekitError(f"thresholder {config.thresholder!r} learns its masks while "
                                f"training from scratch; use it with --mode static, not "
                                f"{config.mode}")
        super().check_options()

    def one_process_reason(self) -> str:
        return (f"thresholder {self.config.thresholder!r} learns thresholds outside the model "
                "and runs in one process; drop --nproc / torchrun")

    def plugins_used(self) -> dict[str, str]:
        return {"thresholder": self.config.thresholder}

    def execute(self, ctx: RunContext, steps: Steps) -> Masks:
        config = ctx.config
        thresholds = ComponentThresholds(ctx.model, ctx.layout, config.theta_init)
        record_every = max(1, config.iterations // 100)
        history, frozen_at = [], []

        def after_step(step: int, batch: dict, optimiser) -> None:
            if not thresholds.frozen and thresholds.freeze_at(config.sparsity):
                frozen_at.append(step + 1)
            if (step + 1) % record_every == 0 or step + 1 == config.iterations:
                history.append({"step": step + 1, **thresholds.sparsity()})

        group = {"params": list(thresholds.thetas.values()), "lr": config.theta_lr,
                 "weight_decay": config.theta_decay}
        steps.train_phase(None, config.iterations, config.lr, "training", after_step, [group])
        reached = thresholds.sparsity()["overall"]
        ctx.report["soft_threshold"] = {
            "frozen_at_step": frozen_at[0] if frozen_at else None,
            "thresholds": {component: float(torch.sigmoid(theta.detach()))
                           for component, theta in thresholds.thetas.items()},
            "history": history}
        if not frozen_at:
            ctx.warn(f"the soft thresholds reached sparsity {reached:.3f} of the requested "
                     f"{config.sparsity:g}; raise --theta-lr, --theta-init or --iterations")
        save_sparsity_history(history, ctx.out_dir / "sparsity.png")
        return thresholds.remove()
