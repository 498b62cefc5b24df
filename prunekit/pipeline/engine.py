"""One ``prunekit run``, top to bottom: check, prepare, build, execute the mode, report.

    check    the settings and the plugins they name; the mode (``modes.select``)
    prepare  device, process group, output folder, baseline; then build
    build    data splits and loaders, tasks, model (``--init-checkpoint``), task weights
    execute  the mode's steps (``prunekit.pipeline.steps``), evaluation, checkpoint.pt
    finish   report.json (complete or not), resume.pt kept or removed

Every piece of state goes into one ``RunContext``. The CLI is a thin layer over
``run(RunConfig(...))``.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .._version import __version__
from ..api import check_scope
from ..core import distributed
from ..core.batch import Progress, no_progress, tqdm_progress
from ..data import build_dataset
from ..data.augment import Augmented
from ..errors import PrunekitError, one_line, user_message
from ..files import save_torch
from ..interfaces import Masks
from ..models import build_model
from ..registry import plugin_info
from ..tasks import build_tasks
from ..timing import timed
from ..training.loop import evaluate
from ..training.resume import RESUME_FILE, RunStopped, read_resume
from ..training.task_weighting import AdaptiveTaskWeights
from . import modes
from .config import RunConfig
from .context import RunContext
from .data import (baseline_differences, check_not_empty, data_record, evaluation_subset,
                   loader, resolve_device, small_data_warnings)
from .outputs import (CHECKPOINT, INCOMPLETE_REPORT, REPORT, check_checkpoint_path,
                      check_out_dir, checkpoint_contents, fresh_run_dir, holds_complete_run,
                      load_weights, print_warning)
from .report import delta_t, load_baseline, write_report
from .steps import Steps


@dataclass
class RunResult:
    report: dict
    out_dir: Path
    writer: bool = True  # False on the ranks of a torchrun launch that write nothing


class Run:
    """One run: ``check`` and ``prepare`` catch everything a user can get wrong before any
    output exists; ``execute`` runs the mode; ``finish`` writes report.json."""

    def __init__(self, config: RunConfig, progress: Progress, warn=print_warning,
                 resume: dict | None = None):
        config = modes.resolved(config)
        if distributed.launched_rank() != 0:  # under torchrun rank 0 alone prints
            progress, warn = no_progress, lambda message: None
        self.ctx = RunContext(config, progress, warn, resume,
                              elapsed_before=resume["elapsed"] if resume else 0.0)
        self.ctx.report.update({"prunekit_version": __version__, "config": config.as_dict(),
                                "complete": False, "warnings": [], "training": []})
        self.steps = Steps(self.ctx)
        self.mode: modes.Mode | None = None

    @property
    def config(self) -> RunConfig:
        return self.ctx.config

    @property
    def report(self) -> dict:
        return self.ctx.report

    def check(self, processes: int = 1) -> None:
        """Validate the configuration and the plugins it names, without building anything;
        ``processes``: how many a launch is about to start (torchrun's own launch counts)."""
        ctx, config = self.ctx, self.ctx.config
        config.validate()
        mode = self.mode = modes.select(config)
        ctx.scorer, ctx.arbiter, ctx.thresholder = mode.scorer, mode.arbiter, mode.thresholder
        ctx.resumable = mode.resumable
        if ctx.thresholder:
            check_scope(ctx.thresholder, config.scope)
        mode.check(ctx)
        if config.init_checkpoint:
            check_checkpoint_path(config.init_checkpoint)
        if (processes > 1 or distributed.launched()) and mode.one_process_reason():
            raise PrunekitError(mode.one_process_reason())
        if ctx.resume is not None and not mode.resumable:
            raise PrunekitError("this run removed channels or learned thresholds while "
                                "training, which a checkpoint cannot resume")
        if config.out:
            check_out_dir(config.out)
        used = {**mode.plugins_used(), **{f"metric:{m}": m for m in config.metrics}}
        ctx.report["plugins"] = {role: plugin_info(role.split(":")[0], name)
                                 for role, name in used.items()}

    def prepare(self) -> None:
        self.check()
        ctx, config = self.ctx, self.ctx.config
        ctx.joined_group = distributed.launched() and not distributed.active()
        ctx.device = distributed.start(resolve_device(config.device))
        ctx.writer = distributed.is_writer()
        if ctx.writer:
            ctx.out_dir = Path(config.out) if config.out else fresh_run_dir(self.mode.run_name())
        else:  # the other ranks of a torchrun launch keep their few files in a folder that is
            # removed at the end
            ctx.out_dir = Path(tempfile.mkdtemp(prefix=f"prunekit-rank{distributed.rank()}-"))
        if ctx.resume is not None and ctx.resume["world_size"] != distributed.world_size():
            raise PrunekitError(f"the run was checkpointed in {ctx.resume['world_size']} "
                                f"process(es); resume it in as many (--nproc)")
        if ctx.resume is None and ctx.writer:  # a folder used again: not the old run's
            (ctx.out_dir / RESUME_FILE).unlink(missing_ok=True)
        ctx.report_name = (INCOMPLETE_REPORT if ctx.writer and holds_complete_run(ctx.out_dir)
                           else REPORT)
        ctx.baseline = load_baseline(config.baseline) if config.baseline else None
        with timed(ctx.timings, "setup"):
            self.build()
            self.mode.check_built(ctx)

    def build(self) -> None:
        ctx, config = self.ctx, self.ctx.config
        torch.manual_seed(config.seed)
        train_set = build_dataset(config.dataset, "train", config.data_root, config.image_size,
                                  config.seed)
        val_split = build_dataset(config.dataset, "val", config.data_root, config.image_size,
                                  config.seed)
        for split, samples in (("train", train_set), ("val", val_split)):
            check_not_empty(config.dataset, split, len(samples))
        val_set = evaluation_subset(val_split, config.val_samples)
        ctx.tasks = build_tasks(config.tasks, train_set, config.score_resolution)
        example = train_set[0]["image"]
        ctx.input_shape = (1, *example.shape)  # for data-free scorers (ScoringContext)
        ctx.report["data"] = data_record(example, train_set, val_set)
        if ctx.baseline is not None:
            difference = baseline_differences(ctx.baseline, config, ctx.report["data"])
            if difference:
                ctx.warn(difference)
        train_set = self.mode.training_split(ctx, train_set)
        for message in small_data_warnings(config, len(train_set), len(val_split),
                                           self.mode.reads_score_batches()):
            ctx.warn(message)
        if config.augment:
            train_set = Augmented(train_set)
        channels = {name: task.channels for name, task in ctx.tasks.items()}
        ctx.model = build_model(config.model, channels, config.width).to(ctx.device)
        if config.init_checkpoint:
            load_weights(ctx.model, config.init_checkpoint, ctx.model_record())
        ctx.relayout()
        if config.task_weighting == "adaptive":
            ctx.task_weights = AdaptiveTaskWeights.for_layout(ctx.layout, config.tasks,
                                                              config.window)
            if config.window >= config.iterations:
                ctx.warn(f"adaptive task weighting starts once --window {config.window} losses "
                         f"are in, and --iterations is {config.iterations}; the weights may "
                         "stay 1")
        ctx.train_loader = loader(train_set, config, shuffle=True)
        ctx.val_loader = loader(val_set, config, shuffle=False)
        if len(ctx.train_loader) < distributed.world_size():
            raise PrunekitError(f"the training split gives {len(ctx.train_loader)} batch(es) of "
                                f"{config.batch_size} per epoch, fewer than the "
                                f"{distributed.world_size()} processes; lower --batch-size or "
                                "the number of processes")

    def execute(self) -> Masks:
        """Run the mode, evaluate, write the checkpoint; returns the final masks."""
        ctx, config = self.ctx, self.ctx.config
        masks = self.mode.execute(ctx, self.steps)
        with timed(ctx.timings, "evaluation"):
            metrics = evaluate(ctx.model, ctx.tasks, ctx.val_loader, ctx.device, ctx.progress)
        checkpoint = checkpoint_contents(ctx.model, masks, ctx.model_record())
        ctx.report.update({
            "sparsity": {"requested": self.mode.requested_sparsity(),
                         **self.mode.sparsity(ctx, checkpoint)},
            "metrics": metrics,
            "parameters": {"total": sum(p.numel() for p in ctx.model.parameters()),
                           "prunable": ctx.layout.numel(ctx.layout.params)},
        })
        if ctx.task_weights:
            ctx.report["task_weighting"] = {"window": config.window,
                                            "scales": ctx.task_weights.scales,
                                            "final_weights": ctx.task_weights.weights}
        if ctx.baseline:
            ctx.report["delta_t"] = delta_t(metrics, ctx.baseline["metrics"], ctx.tasks)
        if ctx.writer:
            save_torch(ctx.out_dir / CHECKPOINT, checkpoint)
        return masks

    def finish(self, error: BaseException | None) -> None:
        """Write report.json: complete only when the run finished; never a stale checkpoint.
        A finished run needs no resume.pt; a failed or stopped one keeps its last one."""
        ctx = self.ctx
        if error is not None:
            ctx.report["error"] = user_message(error) or type(error).__name__
            ctx.report["stopped"] = isinstance(error, RunStopped)
            if ctx.report_name == REPORT:  # else the checkpoint is an earlier run's: it stays
                (ctx.out_dir / CHECKPOINT).unlink(missing_ok=True)
        elif ctx.writer:
            (ctx.out_dir / RESUME_FILE).unlink(missing_ok=True)
        write_report(ctx, complete=error is None)
        if error is None and ctx.writer:
            (ctx.out_dir / INCOMPLETE_REPORT).unlink(missing_ok=True)

    def leave(self) -> None:
        """Remove a non-writing rank's folder and leave the process group this run joined."""
        ctx = self.ctx
        if not ctx.writer and ctx.out_dir is not None:
            shutil.rmtree(ctx.out_dir, ignore_errors=True)
        if ctx.joined_group:
            distributed.stop()


def run(config: RunConfig, show_progress: bool = False, warn=print_warning,
        resume: dict | None = None) -> RunResult:
    """Run the whole pipeline; raises PrunekitError for problems the user can fix.

    ``warn`` receives one line for each warning (by default printed on stderr). ``resume``:
    the checkpoint of a stopped run to go on with (see ``resume_run``).
    """
    current = Run(config, tqdm_progress if show_progress else no_progress, warn, resume)
    try:
        current.prepare()
        ctx = current.ctx
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            with ctx.stop:
                current.execute()
        except BaseException as error:  # record the failure, then let the caller report it
            try:
                current.finish(error)
            except PrunekitError:  # no report.json either (a full disk): the first error tells
                pass
            raise
        current.finish(None)
        return RunResult(ctx.report, ctx.out_dir, ctx.writer)
    finally:
        current.leave()


def resume_run(folder: str | Path, show_progress: bool = False,
               warn=print_warning) -> RunResult:
    """Go on with the stopped run in ``folder`` from its last checkpoint, with its settings."""
    state = read_resume(folder)
    try:
        config = RunConfig(**{**state["config"], "out": str(folder)})
    except TypeError as exc:
        raise PrunekitError(f"{str(Path(folder) / RESUME_FILE)!r} was written by another "
                            f"prunekit version ({one_line(exc, 200)})") from exc
    return run(config, show_progress, warn, resume=state)
