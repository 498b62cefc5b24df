"""The steps every mode is made of: prune (score and threshold) and train a phase, both
resumable, and dense pretraining.

A resumed run executes its mode again from the start: a prune the stopped run had made returns
its recorded masks, a phase it had finished is skipped, and the phase it stopped in goes on from
its checkpoint (``PhaseCheckpoints``), so the run ends as the uninterrupted one would have.
"""
from __future__ import annotations

import dataclasses
import itertools
import time

from ..api import compute_masks, resolve
from ..core import contract, distributed
from ..core.layout import ResolvedLayout
from ..core.masks import AppliedMasks
from ..core.pruning import PruneResult
from ..errors import NonFiniteLossError, PrunekitError, one_line
from ..files import save_torch
from ..interfaces import Masks, Scorer
from ..timing import add_seconds, timed
from ..training.loop import Checkpoints, Resumption, train
from ..training.resume import FORMAT, RESUME_FILE, KeepsState, RunStopped
from ..training.task_weighting import fixed_task_weights
from .context import RunContext
from .data import Batches, scoring_loader
from .pattern import pattern_record
from .report import write_report


class Steps:
    """The steps of the run in ``ctx``, in the order a mode calls them."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx

    def pretrain(self) -> None:
        """Dense weights to prune: trained here, unless the run loaded ``--init-checkpoint``."""
        config = self.ctx.config
        if not config.init_checkpoint:
            self.train_phase(None, config.iterations, config.lr, "pretraining")

    def prune(self, sparsity: float, scorer: Scorer | None = None,
              within: Masks | None = None, keep: int | None = None) -> PruneResult:
        """Score the model as it is now and threshold to ``sparsity`` (inside ``within``);
        with ``--pattern`` keep ``keep`` (default N) of every M instead. When resuming, a prune
        the stopped run had made returns its recorded masks."""
        ctx = self.ctx
        if self.replaying():
            result = self.recorded_prune(len(ctx.prunes))
        else:
            result = self.compute_prune(sparsity, scorer or ctx.scorer, within, keep)
        ctx.prunes.append({"masks": {k: m.cpu() for k, m in result.masks.items()},
                           "keep_ratio": result.keep_ratio, "requested": result.requested,
                           "achieved": result.achieved})
        return result

    def compute_prune(self, sparsity: float, scorer: Scorer, within: Masks | None,
                      keep: int | None = None) -> PruneResult:
        ctx, config = self.ctx, self.ctx.config
        batches = (Batches(scoring_loader(ctx.train_loader, config), config.score_batches,
                           ctx.device, config.seed)
                   if scorer.needs_data else [])
        result = compute_masks(ctx.model, ctx.layout, ctx.tasks, batches, scorer,
                               ctx.arbiter, config.thresholder, sparsity, config.compensate,
                               ctx.device, progress=ctx.progress, seed=config.seed,
                               scope=config.scope, within=within, input_shape=ctx.input_shape,
                               pattern=config.pattern, keep=keep, uncovered=config.uncovered)
        if config.pattern:
            ctx.report["pattern"] = pattern_record(result, ctx.layout,
                                                   config.nm_pattern,
                                                   config.uncovered)
        elif abs(result.achieved - sparsity) > contract.SPARSITY_TOLERANCE:  # --no-compensate
            ctx.warn(f"the merged masks are {result.achieved:.3f} sparse, {sparsity:g} was "
                     "requested: --no-compensate keeps each task's own keep ratio")
        for phase, seconds in result.timings.items():
            add_seconds(ctx.timings, phase, seconds)
        ctx.report["keep_ratio_per_task"] = result.keep_ratio
        if scorer.per_task and len(ctx.tasks) > 1:
            ctx.report["task_overlap"] = task_overlap(result, ctx.layout, config.metrics)
        result.saliency = None  # one float per weight and task: free it once the masks exist
        return result

    def replaying(self) -> bool:
        """Whether a resumed run is still before the training phase it stopped in."""
        ctx = self.ctx
        return ctx.resume is not None and ctx.phases_started <= ctx.resume["phase"]

    def recorded_prune(self, index: int) -> PruneResult:
        ctx = self.ctx
        recorded = ctx.resume["prunes"][index]
        params = dict(ctx.model.named_parameters())
        for name, mask in recorded["masks"].items():
            if name not in params or params[name].shape != mask.shape:
                raise PrunekitError(f"{str(ctx.out_dir / RESUME_FILE)!r} does not fit the run "
                                    f"it describes: its mask of {name} is "
                                    f"{list(mask.shape)}, the model has "
                                    f"{list(params[name].shape) if name in params else 'none'}")
        masks = {k: m.to(ctx.device) for k, m in recorded["masks"].items()}
        return PruneResult(masks, {}, recorded["keep_ratio"], recorded["requested"],
                           recorded["achieved"])

    def train_phase(self, masks: AppliedMasks | None, iterations: int, lr: float, phase: str,
                    after_step=None, extra_groups: list[dict] | None = None) -> None:
        """Train for ``iterations`` steps; the seconds go to ``timings[phase]``. When resuming,
        a phase the stopped run had finished is skipped, and the one it stopped in goes on
        from its checkpoint."""
        ctx, config = self.ctx, self.ctx.config
        index = ctx.phases_started
        ctx.phases_started += 1
        resumption = None
        if ctx.resume is not None and index < ctx.resume["phase"]:
            return  # trained before the stop; the restored report has its entry
        if ctx.resume is not None and index == ctx.resume["phase"]:
            resumption = self.restore(masks, after_step)
        checkpoints = (PhaseCheckpoints(ctx, index, phase, masks, after_step)
                       if ctx.resumable else None)
        with timed(ctx.timings, phase):
            ctx.stop.in_training = checkpoints is not None
            try:
                history = train(distributed.for_training(ctx.model), ctx.tasks,
                                ctx.train_loader, iterations, lr, masks, ctx.device,
                                progress=ctx.progress, label=phase, after_step=after_step,
                                extra_groups=extra_groups, task_weights=ctx.task_weights,
                                loss_weights=fixed_task_weights(config.task_loss_weights,
                                                                config.tasks),
                                settings=config.optimiser_settings(),
                                resume=resumption, checkpoints=checkpoints)
            except NonFiniteLossError as error:
                raise self.with_checkpoint_kept(error) from error
            finally:
                ctx.stop.in_training = False
            if ctx.stop.requested:  # SIGTERM after the phase's last step was checked
                raise RunStopped(f"stopped by SIGTERM at the end of {phase}; resume with: "
                                 f"prunekit run --resume {ctx.out_dir}")
            # DistributedDataParallel hands rank 0's buffers (BatchNorm statistics) to the
            # others before each forward; after the last one each rank has its own
            distributed.from_writer(ctx.model.buffers())
        ctx.report["training"].append({
            "phase": phase, "iterations": iterations, "lr": lr,
            "first_loss": history[0] if history else None,
            "last_loss": history[-1] if history else None})

    def restore(self, masks: AppliedMasks | None, after_step) -> Resumption:
        """The state of the phase the resumed run stopped in: weights, live masks, hooks, the
        report and timings so far; returns where its training goes on."""
        ctx = self.ctx
        state = ctx.resume
        try:
            ctx.model.load_state_dict(state["model"])
            if masks is not None and state["masks"] is not None:
                for name, live in masks.named_masks().items():
                    live.copy_(state["masks"][name])
            hooks = {"after_step": after_step, "task_weights": ctx.task_weights}
            for name, hook_state in state["hooks"].items():
                hooks[name].load_state_dict(hook_state)
            resumption = Resumption(**state["resumption"])
        except (RuntimeError, KeyError, TypeError, AttributeError) as exc:
            raise PrunekitError(f"{str(ctx.out_dir / RESUME_FILE)!r} does not fit the run it "
                                f"describes: {one_line(exc, 300)}") from exc
        ctx.report, ctx.timings = state["report"], state["timings"]
        ctx.resume = {"phase": state["phase"]}  # the rest is in place: let it go
        return resumption

    def with_checkpoint_kept(self, error: NonFiniteLossError) -> NonFiniteLossError:
        ctx = self.ctx
        path = ctx.out_dir / RESUME_FILE
        if ctx.writer and path.is_file():
            return NonFiniteLossError(f"{error}; the last checkpoint before it is kept in {path}")
        return error


class PhaseCheckpoints(Checkpoints):
    """The checkpoints of one training phase: ``resume.pt`` with everything the run needs to
    go on (``prunekit.training.resume`` reads it), and the incomplete report beside it."""

    def __init__(self, ctx: RunContext, phase: int, label: str, masks, after_step):
        self.ctx, self.phase, self.label = ctx, phase, label
        self.masks, self.after_step = masks, after_step
        self.every = ctx.config.checkpoint_every
        self.stopping = False
        self.started = time.perf_counter()

    def due(self, steps_done: int) -> bool:
        stop = distributed.any_rank(self.ctx.stop.requested)
        self.stopping = stop
        return stop or (self.every > 0 and steps_done % self.every == 0)

    def write(self, state: Resumption) -> None:
        ctx = self.ctx
        if ctx.writer:
            save_torch(ctx.out_dir / RESUME_FILE, {
                "format": FORMAT,
                "config": dataclasses.asdict(ctx.config),
                "world_size": distributed.world_size(),
                "phase": self.phase,
                # fields, not asdict: that would copy the optimiser's state first
                "resumption": {f.name: getattr(state, f.name)
                               for f in dataclasses.fields(state)},
                "model": {k: v.detach().cpu() for k, v in ctx.model.state_dict().items()},
                "masks": ({k: m.cpu() for k, m in self.masks.named_masks().items()}
                          if self.masks is not None else None),
                "prunes": ctx.prunes,
                "hooks": {name: hook.state_dict() for name, hook in self.hooks().items()},
                "report": ctx.report,
                "timings": {**ctx.timings,  # with this phase's seconds so far
                            self.label: round(ctx.timings.get(self.label, 0.0)
                                              + time.perf_counter() - self.started, 3)},
                "elapsed": ctx.elapsed(),
            })
            write_report(ctx, complete=False)
        if self.stopping:
            raise RunStopped(f"stopped by SIGTERM after step {state.step} of {self.label}; "
                             f"resume with: prunekit run --resume {ctx.out_dir}")

    def hooks(self) -> dict[str, KeepsState]:
        found = {"after_step": self.after_step, "task_weights": self.ctx.task_weights}
        return {name: hook for name, hook in found.items() if hasattr(hook, "state_dict")}


def task_overlap(result: PruneResult, layout: ResolvedLayout,
                 metric_names: tuple[str, ...]) -> dict:
    """Each metric's mean over the shared tensors for every pair of tasks' own subnetworks."""
    masks, saliency = result.task_masks, result.saliency
    overlap = {}
    for name in metric_names:
        metric = resolve("metric", name)
        for a, b in itertools.combinations(layout.tasks, 2):
            scores = [contract.layer_score(metric, masks[a][n], masks[b][n], saliency[a][n],
                                           saliency[b][n], n)
                      for n in layout.shared]
            overlap.setdefault(name, {})[f"{a}/{b}"] = sum(scores) / len(scores)
    return overlap
