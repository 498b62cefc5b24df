"""``prunekit similarity`` and ``prunekit group``: which tasks belong together."""
from __future__ import annotations

import json

import click

from ..core.batch import no_progress
from ..errors import PrunekitError
from .base import cli
from .options import DEFAULTS, comma_list, echo_err, float_list, given_options, image_size, \
    preset_option, preset_options


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
@preset_option
@click.pass_context
def similarity_command(ctx, quick, progress, preset, **options):
    """Which tasks belong together? Compare the tasks' subnetworks at initialisation."""
    from ..core.batch import tqdm_progress
    from ..analysis.similarity_run import QUICK_SIMILARITY, SimilarityConfig, describe_watershed, \
        run_similarity

    config = SimilarityConfig(**{**(QUICK_SIMILARITY if quick else {}),
                                 **preset_options(ctx, preset),
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
              help="Measured performance, JSON or CSV rows of task, trained_with, score and "
                   "optionally cost (trained_with: the task itself for training alone, other "
                   "tasks joined by + for a group).")
@click.option("--table", "table_file", default=None,
              help="A results table in the format of Standley et al.'s network selection "
                   "(tab-separated, a column per task, a network per row, the first row the "
                   "half-size networks).")
@click.option("--table-tasks", callback=comma_list, default=None,
              help="With --table: comma-separated names of its columns [default: task1, ...].")
@click.option("--test", "test_file", default=None,
              help="With --pairs or --table: a test table in the same format; choose on the "
                   "input (validation) scores, report these.")
@click.option("--lower-is-better", is_flag=True,
              help="With --pairs or --table: scores are losses or errors (negated for the "
                   "search).")
@click.option("--cost", "costs", multiple=True, metavar="GROUP=COST",
              help="The cost of GROUP's network (tasks joined by +, e.g. seg=0.5 for a "
                   "half-size one) where the input states none; repeatable.")
@click.option("--alone-cost", type=float, default=None,
              help="The cost of every single-task network where neither the input nor --cost "
                   "states one [default: 1].")
@click.option("--missing-direction", type=click.Choice(["error", "skip"]), default="error",
              show_default=True,
              help="A measured network without a score for one of its tasks (one direction of "
                   "a pair): an error, or skip: it serves only the tasks it scores.")
@click.option("--estimate-groups", is_flag=True,
              help="Estimate every group of 3+ tasks from its pairs, even where measured (the "
                   "paper's higher-order approximation setting).")
@click.option("--budget", type=float, default=None,
              help="Networks to train, in units of one full network (required).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@preset_option
@click.pass_context
def group_command(ctx, as_json, preset, **options):
    """Choose which tasks to train together within a budget (exact search)."""
    from ..analysis.grouping_run import GroupOptions, choose_groups, format_grouping

    options = {**options, **preset_options(ctx, preset), **given_options(ctx, options)}
    if options["budget"] is None:
        raise PrunekitError("give --budget: the networks to train, in units of one full network")
    result = choose_groups(GroupOptions(**options),
                           warn=lambda message: echo_err(f"warning: {message}"))
    click.echo(json.dumps(result, indent=2) if as_json else format_grouping(result))
