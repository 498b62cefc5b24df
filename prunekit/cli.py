"""``prunekit`` command line: a thin layer over the Python API.

Errors the user can fix print one line on stderr and exit with code 2.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import traceback

import click
from click.core import ParameterSource

from ._version import __version__
from .cli_options import (comma_list, echo_err, float_list, image_size, learning_rates,
                          options)
from . import distributed
from .engine import QUICK, Run, RunConfig, RunResult, resume_run, run
from .errors import PrunekitError, one_line, user_message
from .interfaces import INTERFACES
from .config_file import read_config_file
from .report import format_summary
from .registry import EXTRA_PLUGINS, default_registry, extra_plugin_modules
from .resume import RunStopped, read_resume
from .training import no_progress

DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)}
USAGE_ERROR = 2
CHECK_FAILED = 1  # `prunekit plugins check`: the plugin broke its contract
DEBUG_SWITCH = "PRUNEKIT_DEBUG"
STOPPED = 128 + 15  # the exit status of a process ended by SIGTERM


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="prunekit")
@click.option("-p", "--plugin", "plugin_modules", multiple=True, metavar="MODULE",
              help="Load this plugin module (a module name or a .py file) without installing "
                   "it; repeatable. Same as PRUNEKIT_PLUGINS=MODULE[,MODULE].")
@click.option("--debug", is_flag=True,
              help="Show the Python traceback of an error (or set PRUNEKIT_DEBUG=1).")
def cli(plugin_modules, debug):
    """Prune multi-task neural networks: score, threshold, merge, train, report."""
    if plugin_modules:  # the environment carries them to torchrun's processes too
        os.environ[EXTRA_PLUGINS] = ",".join([*extra_plugin_modules(), *plugin_modules])
        default_registry.cache_clear()
    if debug:
        os.environ[DEBUG_SWITCH] = "1"


METHOD_OPTIONS = options(
    click.option("--mode", default=DEFAULTS["mode"], show_default=True,
                 help="static, pretrained, dynamic or iterative (see docs/methods.md)."),
    click.option("--arbiter", default=DEFAULTS["arbiter"], show_default=True,
                 help="Arbiter merging per-task masks of shared tensors."),
    click.option("--thresholder", default=None,
                 help="Thresholder turning saliency into masks [default: topk; erk in dynamic "
                      "mode]."),
    click.option("--scope", default=None,
                 help="Thresholder scope: global or layer [default: the thresholder's]."),
    click.option("--sparsity", type=float, default=DEFAULTS["sparsity"], show_default=True,
                 help="Fraction of prunable weights to remove, in (0, 1)."),
    click.option("--compensate/--no-compensate", default=DEFAULTS["compensate"],
                 show_default=True,
                 help="Adjust the per-task keep ratio so the merged model hits --sparsity."),
    click.option("--metric", "metrics", callback=comma_list, default=",".join(DEFAULTS["metrics"]),
                 show_default=True,
                 help="Comma-separated metric plugins comparing each pair of tasks' masks "
                      "(report.json task_overlap; per-task scorers)."),
)

DATA_AND_TRAINING_OPTIONS = options(
    click.option("--tasks", callback=comma_list, default=",".join(DEFAULTS["tasks"]),
                 show_default=True,
                 help="Comma-separated tasks: seg, depth, normal; keypoint and edge (taskonomy)."),
    click.option("--model", default=DEFAULTS["model"], show_default=True,
                 help="deeplab-resnet34, deeplab-resnet50, vgg16, mobilenetv2, or your own "
                      "builder as MODULE:FUNCTION or FILE.py:FUNCTION (see docs/cli.md)."),
    click.option("--width", type=float, default=DEFAULTS["width"], show_default=True,
                 help="Channel width multiplier of the model."),
    click.option("--dataset", default=DEFAULTS["dataset"], show_default=True,
                 help="synthetic (embedded, generated on the fly), nyuv2, nyuv2-40, cityscapes, "
                      "cityscapes-7 or taskonomy (see docs/data.md)."),
    click.option("--data-root", default=None,
                 help="Dataset folder (every dataset but synthetic)."),
    click.option("--image-size", callback=image_size, default=None,
                 help="HEIGHTxWIDTH of the images [default: the dataset's, 64x80 for synthetic]."),
    click.option("--val-samples", type=int, default=DEFAULTS["val_samples"], show_default=True,
                 help="Validation samples to evaluate on (0: the whole split)."),
    click.option("--iterations", type=int, default=DEFAULTS["iterations"], show_default=True,
                 help="Training steps (sparse training, or dense training before pruning)."),
    click.option("--score-batches", type=int, default=DEFAULTS["score_batches"],
                 show_default=True, help="Batches whose saliency is summed."),
    click.option("--batch-size", type=int, default=DEFAULTS["batch_size"], show_default=True),
    click.option("--workers", type=int, default=DEFAULTS["workers"], show_default=True,
                 help="Data-loading processes (0: load in the main process)."),
    click.option("--augment", is_flag=True, default=DEFAULTS["augment"],
                 help="Augment training samples: random scale in [0.5, 1.5], crop back to size, "
                      "left-right flip (normals' x negated); see docs/data.md."),
    click.option("--lr", callback=learning_rates, default=str(DEFAULTS["lr"]),
                 show_default=True,
                 help="Adam learning rate (cosine-decayed to zero); with --retrain-from-scratch "
                      "a comma-separated sweep such as 1e-3,5e-4,1e-4 for the retraining (the "
                      "first value trains the dense model)."),
    click.option("--seed", type=int, default=DEFAULTS["seed"], show_default=True),
    click.option("--device", default=DEFAULTS["device"], show_default=True, help="cpu or cuda."),
)

MODE_OPTIONS = options(
    click.option("--init-checkpoint", default=None,
                 help="pretrained/iterative: prune these weights (a checkpoint.pt) instead of "
                      "training dense first."),
    click.option("--finetune-iterations", type=int, default=None,
                 help="pretrained/iterative: fine-tuning steps after each pruning "
                      "[default: iterations / 2]."),
    click.option("--finetune-lr", type=float, default=None,
                 help="pretrained/iterative: fine-tuning learning rate [default: lr / 10]."),
    click.option("--prune-rounds", type=int, default=DEFAULTS["prune_rounds"], show_default=True,
                 help="iterative: prune-and-fine-tune rounds to reach --sparsity."),
    click.option("--rewind", is_flag=True,
                 help="iterative: reset surviving weights to their initial values each round."),
    click.option("--update-interval", type=int, default=DEFAULTS["update_interval"],
                 show_default=True, help="dynamic: steps between drop-and-grow updates."),
    click.option("--update-end", type=float, default=DEFAULTS["update_end"], show_default=True,
                 help="dynamic: share of training after which the masks stay fixed."),
    click.option("--drop-fraction", type=float, default=DEFAULTS["drop_fraction"],
                 show_default=True,
                 help="dynamic: share of active weights dropped at step 0, cosine-decayed."),
    click.option("--theta-init", type=float, default=DEFAULTS["theta_init"], show_default=True,
                 help="soft-threshold: initial theta of every threshold sigmoid(theta)."),
    click.option("--theta-lr", type=float, default=DEFAULTS["theta_lr"], show_default=True,
                 help="soft-threshold: learning rate of the thresholds."),
    click.option("--theta-decay", type=float, default=DEFAULTS["theta_decay"], show_default=True,
                 help="soft-threshold: L2 decay on theta, which raises the thresholds."),
    click.option("--task-weighting", default=DEFAULTS["task_weighting"], show_default=True,
                 help="fixed (every task loss weighs 1) or adaptive: AdapMTL's weights from "
                      "the inverse loss fluctuation over --window steps."),
    click.option("--window", type=int, default=DEFAULTS["window"], show_default=True,
                 help="adaptive task weighting: per-task losses averaged."),
    click.option("--params-ratio", type=float, default=None,
                 help="structured: share of the whole model's parameters to keep [default: "
                      "1 - sparsity of the weights the scorer scores]."),
    click.option("--prune-interval", type=int, default=DEFAULTS["prune_interval"],
                 show_default=True,
                 help="structured: training steps whose filter scores are summed before each "
                      "removal."),
    click.option("--filters-per-prune", type=int, default=None,
                 help="structured: channels removed per round [default: 5% of the candidates]."),
    click.option("--retrain-from-scratch", is_flag=True,
                 help="structured: re-initialise the pruned model and train it for --iterations "
                      "at each --lr, keeping the best by --select-metric."),
    click.option("--select-metric", default=DEFAULTS["select_metric"], show_default=True,
                 help="structured: delta_t (against the dense model) or TASK.METRIC such as "
                      "seg.miou, measured on training samples held out of the sweep."),
    click.option("--quick", is_flag=True,
                 help="Tiny settings that finish in seconds; explicit options still win."),
    click.option("--progress/--no-progress", default=True, show_default=True,
                 help="Progress bars on stderr."),
)


def given_options(ctx, options: dict) -> dict:
    """The options the user typed (not left at their defaults)."""
    return {name: value for name, value in options.items()
            if ctx.get_parameter_source(name) != ParameterSource.DEFAULT}


def config_from(ctx, quick: bool, options: dict, config_file: str | None = None) -> RunConfig:
    """Defaults, then --quick's settings, then the --config file's, then what the user typed."""
    given = given_options(ctx, options)
    if "lr" in given:  # one rate, or a retraining sweep whose first rate trains the rest
        rates = given.pop("lr")
        given["lr"] = rates[0]
        if len(rates) > 1:
            given["retrain_lrs"] = rates
    from_file = read_config_file(config_file) if config_file else {}
    return RunConfig(**{**DEFAULTS, **(QUICK if quick else {}), **from_file, **given})


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
@click.option("--resume", "resume_dir", default=None, metavar="DIR",
              help="Go on with the stopped run in DIR from its last checkpoint, with its own "
                   "settings.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes to run on: launches torchrun (gloo on CPU, NCCL on CUDA); scoring "
                   "batches are shared out and training is data-parallel.")
@click.pass_context
def run_command(ctx, quick, progress, config_file, resume_dir, nproc, **options):
    """Prune a multi-task model, train it sparse and report per-task metrics."""
    if resume_dir is not None:
        if config_file:
            raise PrunekitError("--resume goes on with the stopped run's own settings; leave "
                                "out --config")
        return resume_command(ctx, quick, progress, resume_dir, nproc, options)
    config = config_from(ctx, quick, options, config_file)
    if nproc > 1:
        if distributed.launched():
            raise PrunekitError("--nproc launches torchrun; under torchrun leave it out")
        Run(config, no_progress).check(nproc)  # bad input fails here once, not per process
        return launch_processes(nproc, (ctx.obj or {}).get("argv", sys.argv[1:]))
    resolved = config.resolved()
    for name in resolved.ignored_options(given_options(ctx, options)):
        method = (f"--scorer {resolved.scorer}" if resolved.scorer_removes_filters()
                  else f"--thresholder {resolved.thresholder}")
        echo_err(f"warning: --{name.replace('_', '-')} does not apply to --mode {config.mode} "
                 f"with {method}{' and --rewind' if config.rewind else ''}"
                 f"{' and --retrain-from-scratch' if resolved.retrain_from_scratch else ''}; "
                 "ignored")
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
    from .compare import compare, parse_methods

    if distributed.launched():
        raise PrunekitError("prunekit compare runs in one process; start it without torchrun")
    result = compare(config_from(ctx, quick, options), parse_methods(methods), seeds,
                     show_progress=progress,
                     warn=lambda message: echo_err(f"warning: {message}"),
                     announce=lambda message: echo_err(f"compare: {message}"))
    click.echo(result.table, nl=False)
    click.echo(f"\nwrote {result.out_dir / 'compare.json'} and {result.out_dir / 'compare.md'}")


@cli.command("similarity")
@click.option("--tasks", callback=comma_list, default=",".join(DEFAULTS["tasks"]),
              show_default=True, help="Comma-separated tasks to compare (two or more).")
@click.option("--metric", "metrics", callback=comma_list, default="mcss,iou,css,epi-sim",
              show_default=True, help="Comma-separated metric plugins.")
@click.option("--sparsity", "sparsities", callback=float_list, default="0.3,0.5,0.7,0.9",
              show_default=True, help="Comma-separated sparsities of the per-task masks.")
@click.option("--weighting", "weightings", callback=comma_list,
              default="equal,linear,step,sparsity", show_default=True,
              help="Comma-separated layer weightings: equal, linear, step, sparsity.")
@click.option("--seeds", type=int, default=4, show_default=True,
              help="Initialisations scored, from --seed on; scores are averaged over them.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--average-sparsities", is_flag=True,
              help="Print only the mean over sparsities (the JSON always has both).")
@click.option("--scorer", default="disparse-snip", show_default=True,
              help="Per-task scorer finding each task's subnetwork.")
@click.option("--thresholder", default="topk", show_default=True)
@click.option("--scope", default=None, help="Thresholder scope [default: the thresholder's].")
@click.option("--model", default=DEFAULTS["model"], show_default=True)
@click.option("--width", type=float, default=DEFAULTS["width"], show_default=True)
@click.option("--dataset", default=DEFAULTS["dataset"], show_default=True)
@click.option("--data-root", default=None)
@click.option("--image-size", callback=image_size, default=None)
@click.option("--score-batches", type=int, default=DEFAULTS["score_batches"], show_default=True)
@click.option("--batch-size", type=int, default=DEFAULTS["batch_size"], show_default=True)
@click.option("--device", default=DEFAULTS["device"], show_default=True)
@click.option("--out", default=None, help="Output folder [default: runs/<time>-similarity].")
@click.option("--quick", is_flag=True, help="Tiny settings; explicit options still win.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.pass_context
def similarity_command(ctx, quick, progress, **options):
    """Which tasks belong together? Compare the tasks' subnetworks at initialisation."""
    from .engine import tqdm_progress
    from .similarity_run import QUICK_SIMILARITY, SimilarityConfig, describe_watershed, \
        run_similarity

    config = SimilarityConfig(**{**(QUICK_SIMILARITY if quick else {}),
                                 **given_options(ctx, options)})
    record, out, table = run_similarity(config, tqdm_progress if progress else no_progress)
    click.echo(table, nl=False)
    click.echo(f"\n{describe_watershed(record)}")
    click.echo(f"\nwrote {out / 'similarity.json'}, {out / 'similarity.md'}, "
               f"heatmap-<metric>.png and layer-iou.png in {out}")


@cli.command("group")
@click.option("--similarity", "similarity_file", default=None,
              help="similarity.json of `prunekit similarity`: pairwise scores, training-free.")
@click.option("--metric", default="mcss", show_default=True,
              help="With --similarity: the metric whose scores group the tasks.")
@click.option("--weighting", default="equal", show_default=True,
              help="With --similarity: the layer weighting of those scores.")
@click.option("--alone", type=float, default=1.0, show_default=True,
              help="With --similarity: the score of a task trained alone (its similarity "
                   "with itself).")
@click.option("--pairs", "pairs_file", default=None,
              help="Measured pair performance, JSON or CSV rows of task, trained_with, score "
                   "(trained_with = the task itself for training alone).")
@click.option("--lower-is-better", is_flag=True,
              help="With --pairs: scores are losses or errors (negated for the search).")
@click.option("--budget", type=float, required=True,
              help="Networks to train, in units of one full network.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def group_command(similarity_file, metric, weighting, alone, pairs_file, lower_is_better,
                  budget, as_json):
    """Choose which tasks to train together within a budget (exact branch and bound)."""
    from .grouping_run import choose_groups, format_grouping

    result = choose_groups(similarity_file, metric, weighting, alone, pairs_file,
                           lower_is_better, budget)
    click.echo(json.dumps(result, indent=2) if as_json else format_grouping(result))


@cli.group("plugins", invoke_without_command=True)
@click.option("--kind", type=click.Choice(sorted(INTERFACES)), default=None,
              help="Only plugins of this kind.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def plugins_command(ctx, kind, as_json):
    """List installed plugins: kind, name, distribution and what each does."""
    if ctx.invoked_subcommand is not None:
        return
    entries = default_registry().all(kind)
    if as_json:
        click.echo(json.dumps([e.as_dict() for e in entries], indent=2))
        return
    rows = [(e.kind, e.name, f"{e.distribution} {e.version}", e.description) for e in entries]
    widths = [max(len(r[i]) for r in rows + [("KIND", "NAME", "DISTRIBUTION", "")])
              for i in range(3)]
    for row in [("KIND", "NAME", "DISTRIBUTION", "DESCRIPTION")] + rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3])


@plugins_command.command("check")
@click.argument("name")
@click.option("--kind", type=click.Choice(sorted(INTERFACES)), default=None,
              help="The plugin's kind, when NAME names plugins of several kinds.")
def plugins_check_command(name, kind):
    """Run plugin NAME through its contract on a tiny model; exit 1 if it breaks it."""
    from .testing import check_plugin, find_plugin

    from .contract import describe
    click.echo(f"checking {describe(find_plugin(name, kind))}")
    findings = check_plugin(name, kind)
    for finding in findings:
        click.echo(finding.line())
    failed = sum(not f.ok for f in findings)
    click.echo(f"{len(findings) - failed} passed, {failed} failed")
    if failed:
        raise click.exceptions.Exit(CHECK_FAILED)


def add_kernel_commands() -> None:
    """`export` and `bench` live in cli_kernels; they load the C++ extension only when run."""
    from .cli_kernels import bench_group, export_command

    cli.add_command(export_command)
    cli.add_command(bench_group)


add_kernel_commands()


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


def debugging() -> bool:
    return os.environ.get(DEBUG_SWITCH, "").strip().lower() not in ("", "0", "false", "no")


def main(argv=None) -> None:
    """Entry point of the ``prunekit`` script."""
    try:
        args = list(sys.argv[1:] if argv is None else argv)
        code = cli.main(args=args, prog_name="prunekit", standalone_mode=False,
                        obj={"argv": args})
    except click.exceptions.Exit as exit_:
        code = exit_.exit_code
    except click.ClickException as exc:
        click.echo(f"prunekit: error: {one_line(exc.format_message())}", err=True)
        code = USAGE_ERROR
    except RunStopped as exc:  # SIGTERM: a clean stop, with a checkpoint when training
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank stops alike
            click.echo(f"prunekit: {one_line(exc)}", err=True)
        code = STOPPED
    except PrunekitError as exc:
        if debugging():
            traceback.print_exc()
        click.echo(f"prunekit: error: {user_message(exc)}", err=True)
        code = USAGE_ERROR
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("prunekit: interrupted", err=True)
        code = 130
    sys.exit(code if isinstance(code, int) else 0)
