"""``prunekit`` command line: a thin layer over the Python API.

Errors the user can fix print one line on stderr and exit with code 2.
"""
from __future__ import annotations

import dataclasses
import json
import sys

import click
from click.core import ParameterSource

from ._version import __version__
from .engine import QUICK, RunConfig, run
from .errors import PrunekitError
from .interfaces import INTERFACES
from .report import format_summary

DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)}
USAGE_ERROR = 2


def comma_list(ctx, param, value):
    if value is None:
        return None
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise click.BadParameter("expected a comma-separated list")
    return items


def image_size(ctx, param, value):
    if value is None:
        return None
    try:
        height, width = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected HEIGHTxWIDTH such as 64x80, got {value!r}")
    if height < 8 or width < 8:
        raise click.BadParameter(f"images must be at least 8x8, got {value!r}")
    return height, width


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="prunekit")
def cli():
    """Prune multi-task neural networks: score, threshold, merge, train, report."""


@cli.command("run")
@click.option("--scorer", default=DEFAULTS["scorer"], show_default=True,
              help="Scorer plugin (see `prunekit plugins --kind scorer`).")
@click.option("--arbiter", default=DEFAULTS["arbiter"], show_default=True,
              help="Arbiter merging per-task masks of shared tensors.")
@click.option("--thresholder", default=DEFAULTS["thresholder"], show_default=True,
              help="Thresholder turning saliency into masks.")
@click.option("--sparsity", type=float, default=DEFAULTS["sparsity"], show_default=True,
              help="Fraction of prunable weights to remove, in (0, 1).")
@click.option("--compensate/--no-compensate", default=DEFAULTS["compensate"], show_default=True,
              help="Adjust the per-task keep ratio so the merged model hits --sparsity.")
@click.option("--dense", is_flag=True, help="Train without pruning (a baseline for Delta_T).")
@click.option("--tasks", callback=comma_list, default=",".join(DEFAULTS["tasks"]),
              show_default=True, help="Comma-separated tasks: seg, depth, normal.")
@click.option("--model", default=DEFAULTS["model"], show_default=True)
@click.option("--width", type=float, default=DEFAULTS["width"], show_default=True,
              help="Channel width multiplier of the model.")
@click.option("--dataset", default=DEFAULTS["dataset"], show_default=True,
              help="synthetic (embedded, generated on the fly) or nyuv2.")
@click.option("--data-root", default=None, help="Dataset folder (nyuv2).")
@click.option("--image-size", callback=image_size, default=None,
              help="HEIGHTxWIDTH of the images [default: the dataset's, 64x80 for synthetic].")
@click.option("--val-samples", type=int, default=DEFAULTS["val_samples"], show_default=True,
              help="Validation samples to evaluate on (0: the whole split).")
@click.option("--iterations", type=int, default=DEFAULTS["iterations"], show_default=True,
              help="Training steps after pruning.")
@click.option("--score-batches", type=int, default=DEFAULTS["score_batches"], show_default=True,
              help="Batches whose saliency is summed.")
@click.option("--batch-size", type=int, default=DEFAULTS["batch_size"], show_default=True)
@click.option("--workers", type=int, default=DEFAULTS["workers"], show_default=True,
              help="Data-loading processes (0: load in the main process).")
@click.option("--lr", type=float, default=DEFAULTS["lr"], show_default=True,
              help="Adam learning rate (cosine-decayed to zero).")
@click.option("--seed", type=int, default=DEFAULTS["seed"], show_default=True)
@click.option("--device", default=DEFAULTS["device"], show_default=True, help="cpu or cuda.")
@click.option("--out", default=None,
              help="Output folder [default: runs/<time>-<scorer>-<arbiter>].")
@click.option("--baseline", default=None,
              help="Folder of a dense run; adds Delta_T against it to the report.")
@click.option("--quick", is_flag=True,
              help="Tiny settings that finish in seconds; explicit options still win.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress bars on stderr.")
@click.pass_context
def run_command(ctx, quick, progress, **options):
    """Prune a multi-task model, train it sparse and report per-task metrics."""
    given = {name: value for name, value in options.items()
             if ctx.get_parameter_source(name) != ParameterSource.DEFAULT}
    settings = {**DEFAULTS, **(QUICK if quick else {}), **given}
    config = RunConfig(**settings)
    result = run(config, show_progress=progress)
    click.echo(format_summary(result.report))
    click.echo(f"\nwrote {result.out_dir / 'report.json'} and {result.out_dir / 'checkpoint.pt'}")


@cli.command("plugins")
@click.option("--kind", type=click.Choice(sorted(INTERFACES)), default=None,
              help="Only plugins of this kind.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins_command(kind, as_json):
    """List installed plugins: kind, name, distribution and what each does."""
    from .registry import default_registry

    entries = default_registry().all(kind)
    if as_json:
        click.echo(json.dumps([e.as_dict() for e in entries], indent=2))
        return
    rows = [(e.kind, e.name, f"{e.distribution} {e.version}", e.description) for e in entries]
    widths = [max(len(r[i]) for r in rows + [("KIND", "NAME", "DISTRIBUTION", "")])
              for i in range(3)]
    for row in [("KIND", "NAME", "DISTRIBUTION", "DESCRIPTION")] + rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3])


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def main(argv=None) -> None:
    """Entry point of the ``prunekit`` script."""
    try:
        code = cli.main(args=argv, prog_name="prunekit", standalone_mode=False)
    except click.exceptions.Exit as exit_:
        code = exit_.exit_code
    except click.ClickException as exc:
        click.echo(f"prunekit: error: {one_line(exc.format_message())}", err=True)
        code = USAGE_ERROR
    except PrunekitError as exc:
        click.echo(f"prunekit: error: {one_line(exc)}", err=True)
        code = USAGE_ERROR
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("prunekit: interrupted", err=True)
        code = 130
    sys.exit(code if isinstance(code, int) else 0)
