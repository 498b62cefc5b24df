"""The four training paradigms of ``prunekit run --mode``.

- ``static``: score at initialisation, fix the masks, train the sparse model from scratch.
- ``pretrained``: train dense (or load ``--init-checkpoint``), score, prune, fine-tune.
- ``dynamic``: RigL: random masks with ERK densities, drop and grow during training.
- ``iterative``: train dense, then prune a share and fine-tune, round after round, until the
  sparsity is reached; ``--rewind`` resets the survivors to their initial values each round
  (lottery tickets). With a filter scorer (taylor, cosprune) whole channels are removed while
  training, and the model is rebuilt smaller (``prunekit.structured``).

Static mode with a learning thresholder (``soft-threshold``) scores nothing: the thresholds
learn with the weights (``learned``). Each mode returns the final masks of the model it trained.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from .errors import PrunekitError
from .interfaces import Masks
from .core.masks import AppliedMasks
from .plots import save_sparsity_history
from .core.pruning import round_sparsities
from .registry import default_registry, plugin_info
from .core.rigl import RigLSchedule, RigLUpdater
from .core.soft_threshold import ComponentThresholds
from .structured import structured_iterative

if TYPE_CHECKING:
    from .engine import Run


def static(run: "Run") -> Masks:
    config = run.config
    if run.thresholder.learns:
        return learned(run)
    masks = run.prune(config.sparsity).masks
    run.train_phase(AppliedMasks(run.model, masks), config.iterations, config.lr, "training")
    return masks


def learned(run: "Run") -> Masks:
    """Static mode with a learning thresholder: per-component thresholds train with the weights
    from scratch until the overall sparsity reaches the target, then stay; training goes on."""
    config = run.config
    thresholds = ComponentThresholds(run.model, run.layout, config.theta_init)
    record_every = max(1, config.iterations // 100)
    history, frozen_at = [], []

    def after_step(step: int, batch: dict, optimiser) -> None:
        if not thresholds.frozen and thresholds.freeze_at(config.sparsity):
            frozen_at.append(step + 1)
        if (step + 1) % record_every == 0 or step + 1 == config.iterations:
            history.append({"step": step + 1, **thresholds.sparsity()})

    group = {"params": list(thresholds.thetas.values()), "lr": config.theta_lr,
             "weight_decay": config.theta_decay}
    run.train_phase(None, config.iterations, config.lr, "training", after_step, [group])
    reached = thresholds.sparsity()["overall"]
    run.report["soft_threshold"] = {
        "frozen_at_step": frozen_at[0] if frozen_at else None,
        "thresholds": {component: float(torch.sigmoid(theta.detach()))
                       for component, theta in thresholds.thetas.items()},
        "history": history}
    if not frozen_at:
        run.warn(f"the soft thresholds reached sparsity {reached:.3f} of the requested "
                 f"{config.sparsity:g}; raise --theta-lr, --theta-init or --iterations")
    save_sparsity_history(history, run.out_dir / "sparsity.png")
    return thresholds.remove()


def pretrained(run: "Run") -> Masks:
    config = run.config
    run.pretrain()
    masks = run.prune(config.sparsity).masks
    run.train_phase(AppliedMasks(run.model, masks), config.finetune_iterations,
                    config.finetune_lr, "finetuning")
    return masks


def iterative(run: "Run") -> Masks:
    config = run.config
    if run.scorer.granularity == "filter":
        return structured_iterative(run)
    initial = ({k: v.detach().clone() for k, v in run.model.state_dict().items()}
               if config.rewind else None)
    run.pretrain()
    masks = None
    for number, sparsity in enumerate(round_sparsities(config.sparsity, config.prune_rounds), 1):
        result = run.prune(sparsity, within=masks)
        masks = result.masks
        # run.report, not a list held across rounds: a resumed run replaces the report
        run.report.setdefault("rounds", []).append(
            {"round": number, "requested": sparsity, "achieved": result.achieved})
        if config.rewind:  # lottery tickets: the survivors restart from their initial values
            run.model.load_state_dict(initial)
            run.train_phase(AppliedMasks(run.model, masks), config.finetune_iterations,
                            config.lr, "retraining")
        else:
            run.train_phase(AppliedMasks(run.model, masks), config.finetune_iterations,
                            config.finetune_lr, "finetuning")
    return masks


def dynamic(run: "Run") -> Masks:
    config = run.config
    initial = run.prune(config.sparsity, scorer=default_registry().get("scorer", "random"))
    run.report["plugins"]["initial_scorer"] = plugin_info("scorer", "random")
    applied = AppliedMasks(run.model, initial.masks)
    schedule = dynamic_schedule(config)
    updater = RigLUpdater(run.model, run.layout, run.tasks, applied, run.scorer, run.arbiter,
                          schedule, config.seed)
    run.train_phase(applied, config.iterations, config.lr, "training", after_step=updater)
    training = run.timings.get("training", 0.0)
    run.report["rigl"] = {
        "updates": updater.updates, "regrown": updater.regrown,
        "update_seconds": round(updater.seconds, 3),
        "update_share_of_training": updater.seconds / training if training else None,
        "history": updater.history,
    }
    return applied.named_masks()


def check_static(run: "Run") -> None:
    if run.scorer.needs_trained:
        run.warn(f"scorer {run.scorer.name!r} is meant for trained weights, and static mode "
                 "scores the untrained model; use --mode pretrained to train first")


def dynamic_schedule(config) -> RigLSchedule:
    return RigLSchedule.for_training(config.iterations, config.update_interval, config.update_end,
                                     config.drop_fraction)


def check_dynamic(run: "Run") -> None:
    schedule = dynamic_schedule(run.config)
    if schedule.updates == 0:
        raise PrunekitError(f"--mode dynamic would update no mask: the first update is at step "
                            f"{schedule.interval}, updates stop at step {schedule.end} "
                            f"({run.config.update_end:g} of {run.config.iterations}); lower "
                            "--update-interval or raise --iterations")
    if not run.scorer.grows:
        registry = default_registry()
        growers = ", ".join(name for name in registry.names("scorer")
                            if registry.get("scorer", name).grows)
        raise PrunekitError(f"--mode dynamic grows connections by a gradient score; scorer "
                            f"{run.scorer.name!r} has none (use one of: {growers})")


def no_check(run: "Run") -> None:
    pass


@dataclass(frozen=True)
class Mode:
    scorer: str                              # default scorer
    thresholder: str                         # default thresholder
    execute: Callable[["Run"], Masks]
    check: Callable[["Run"], None] = no_check


MODES: dict[str, Mode] = {
    "static": Mode("disparse-snip", "topk", static, check_static),
    "pretrained": Mode("disparse-gradflow", "topk", pretrained),
    "dynamic": Mode("disparse-rigl", "erk", dynamic, check_dynamic),
    "iterative": Mode("magnitude", "topk", iterative),
}
