"""``prunekit run`` (one run, resumed, or launched on several processes), ``compare`` and
``presets``."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import click

from ..core import distributed
from ..core.batch import no_progress
from ..errors import PrunekitError
from ..pipeline import modes
from ..pipeline.config_file import find_preset, presets
from ..pipeline.engine import Run, RunResult, resume_run, run
from ..pipeline.report import format_summary
from ..training.resume import read_resume
from .base import cli
from .options import (DATA_AND_TRAINING_OPTIONS, DEFAULTS, METHOD_OPTIONS, MODE_OPTIONS,
                      config_from, echo_err, given_options)


@cli.command("run")
@click.option("--scorer", default=None,
              help="Scorer plugin (see `prunekit plugins --kind scorer`) [default: the mode's: "
                   "disparse-snip, disparse-gradflow, disparse-rigl or magnitude].")
@METHOD_OPTIONS
@click.option("--dense", is_flag=True, help="Train without pruning (a baseline for Delta_T).")
@DATA_AND_TRAINING_OPTIONS
@click.option("--out", default=None,
              help="Output folder [default: runs/<time>-<scorer>-<arbiter>].")
@click.option("--baseline", default=None,
              help="Folder of a dense run; adds Delta_T against it to the report.")
@MODE_OPTIONS
@click.option("--checkpoint-every", type=int, default=DEFAULTS["checkpoint_every"],
              show_default=True,
              help="Training steps between checkpoints in OUT/resume.pt (0: only when stopped "
                   "by SIGTERM); a stopped run goes on with --resume.")
@click.option("--config", "config_file", default=None, metavar="FILE",
              help="Settings from a JSON or TOML file, keyed by the long option names "
                   "(score_batches or score-batches); options typed here win.")
@click.option("--preset", default=None, metavar="NAME",
              help="A shipped paper configuration (see `prunekit presets`): settings from "
                   "configs/NAME.toml; options typed here win.")
@click.option("--resume", "resume_dir", default=None, metavar="DIR",
              help="Go on with the stopped run in DIR from its last checkpoint, with its own "
                   "settings.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes to run on: launches torchrun (gloo on CPU, NCCL on CUDA); scoring "
                   "batches are shared out and training is data-parallel.")
@click.pass_context
def run_command(ctx, quick, progress, config_file, preset, resume_dir, nproc, **options):
    """Prune a multi-task model, train it sparse and report per-task metrics."""
    if resume_dir is not None:
        if config_file or preset:
            raise PrunekitError("--resume goes on with the stopped run's own settings; leave "
                                f"out {'--config' if config_file else '--preset'}")
        return resume_command(ctx, quick, progress, resume_dir, nproc, options)
    if preset:
        if config_file:
            raise PrunekitError("give --config FILE or --preset NAME, not both")
        config_file = find_preset(preset).path
    config = config_from(ctx, quick, options, config_file)
    if nproc > 1:
        if distributed.launched():
            raise PrunekitError("--nproc launches torchrun; under torchrun leave it out")
        Run(config, no_progress).check(nproc)  # bad input fails here once, not per process
        return launch_processes(nproc, (ctx.obj or {}).get("argv", sys.argv[1:]))
    resolved = modes.resolved(config)
    for name in modes.ignored_options(resolved, given_options(ctx, options)):
        echo_err(f"warning: {modes.ignored_option_warning(resolved, name)}")
    result = run(config, show_progress=progress,
                 warn=lambda message: echo_err(f"warning: {message}"))
    print_result(result)


def resume_command(ctx, quick, progress, folder, nproc, options):
    """``prunekit run --resume DIR``: the stopped run's own settings, nothing else."""
    given = sorted(given_options(ctx, options)) + (["quick"] if quick else [])
    if given:
        raise PrunekitError(f"--resume goes on with the stopped run's own settings; leave out "
                            f"{', '.join('--' + name.replace('_', '-') for name in given)}")
    read_resume(folder)  # a folder with nothing to resume fails here, before any launch
    if nproc > 1:
        if distributed.launched():
            raise PrunekitError("--nproc launches torchrun; under torchrun leave it out")
        return launch_processes(nproc, (ctx.obj or {}).get("argv", sys.argv[1:]))
    print_result(resume_run(folder, show_progress=progress,
                            warn=lambda message: echo_err(f"warning: {message}")))


def print_result(result: RunResult) -> None:
    if not result.writer:  # a rank of a torchrun launch other than rank 0
        return
    click.echo(format_summary(result.report))
    click.echo(f"\nwrote {result.out_dir / 'report.json'} and {result.out_dir / 'checkpoint.pt'}")


@cli.command("presets")
def presets_command():
    """List the shipped paper configurations: name, command, what each reproduces."""
    shipped = presets()
    width = max(len(p.name) for p in shipped)
    for found in shipped:
        click.echo(f"{found.name:<{width}}  prunekit {found.command:<10}  {found.summary}")


@cli.command("compare")
@click.option("--methods", required=True,
              help="Comma-separated SCORER[:ARBITER][@MODE], e.g. "
                   "disparse-snip:or,snip,random,disparse-gradflow:or@pretrained.")
@click.option("--seeds", type=int, default=1, show_default=True,
              help="Seeds per method (from --seed on); the table shows mean ± spread.")
@METHOD_OPTIONS
@DATA_AND_TRAINING_OPTIONS
@click.option("--out", default=None,
              help="Output folder [default: runs/<time>-compare]; one sub-folder per run.")
@MODE_OPTIONS
@click.pass_context
def compare_command(ctx, methods, seeds, quick, progress, **options):
    """Run several methods and a dense baseline on the same data, model and seeds; one table.

    Each method trains on its mode's budget (--iterations, and --finetune-iterations for
    pretrained and iterative methods).
    """
    from ..pipeline.compare import compare, parse_methods

    if distributed.launched():
        raise PrunekitError("prunekit compare runs in one process; start it without torchrun")
    result = compare(config_from(ctx, quick, options), parse_methods(methods), seeds,
                     show_progress=progress,
                     warn=lambda message: echo_err(f"warning: {message}"),
                     announce=lambda message: echo_err(f"compare: {message}"))
    click.echo(result.table, nl=False)
    click.echo(f"\nwrote {result.out_dir / 'compare.json'} and {result.out_dir / 'compare.md'}")


def launch_processes(count: int, args: list[str]) -> int:
    """``prunekit ARGS`` (without --nproc) in ``count`` processes under torchrun; its exit
    code."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={count}", "-m", "prunekit", *without_option(args, "--nproc")]
    # the machine's cores shared out (torchrun would give each process one thread, and say so)
    threads = str(max(1, (os.cpu_count() or 1) // count))
    environment = {"OMP_NUM_THREADS": threads, **os.environ}
    launcher = subprocess.Popen(command, env=environment)
    # SIGTERM to this process goes on to torchrun, which stops the ranks (each checkpoints);
    # Ctrl-C reaches them all through the terminal, so this process only waits
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM,
                                              lambda signum, frame: launcher.terminate()),
                signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
    try:
        return launcher.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def without_option(args: list[str], name: str) -> list[str]:
    """``args`` without ``name VALUE`` and ``name=VALUE``."""
    kept, skip_value = [], False
    for arg in args:
        if skip_value:
            skip_value = False
        elif arg == name:
            skip_value = True
        elif not arg.startswith(f"{name}="):
            kept.append(arg)
    return kept
