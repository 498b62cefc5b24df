"""``prunekit export`` and ``prunekit bench``: the sparse kernels measured and put to use."""
from __future__ import annotations

import json
from pathlib import Path

import click

from .base import cli
from .options import echo_err, float_list, image_size, options
from ..errors import PrunekitError

DEVICE = click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
REPEATS = click.option("--repeats", type=int, default=20, show_default=True,
                       help="Timed calls per measurement (the median counts).")
AS_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
RUN_INPUT = options(
    click.option("--input-size", callback=image_size, default=None,
                 help="HEIGHTxWIDTH of the input [default: the run's image size]."),
    click.option("--batch", type=int, default=1, show_default=True, help="Images per input."),
)


@cli.command("export")
@click.argument("run_dir")
@click.option("--sparse-kernels/--dense-kernels", default=True, show_default=True,
              help="Time each masked conv dense and sparse and keep the faster (or keep all "
                   "dense).")
@RUN_INPUT
@DEVICE
@REPEATS
@click.option("--out", default=None, help="Output folder [default: RUN_DIR/export].")
@AS_JSON
def export_command(run_dir, sparse_kernels, input_size, batch, device, repeats, out, as_json):
    """Write RUN_DIR's model as a program that runs without the training code.

    Load it with prunekit.export.load_exported(PATH).
    """
    from ..export import export_run, format_report

    report = export_run(run_dir, sparse_kernels=sparse_kernels, input_size=input_size,
                        batch=batch, device=device, repeats=repeats, out=out,
                        progress=lambda line: echo_err(f"export: {line}"))
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else format_report(report))


@cli.group("bench")
def bench_group():
    """Time the sparse convolution against the dense one."""


def sparsities(ctx, param, value):
    values = float_list(ctx, param, value)
    if not all(0 <= v < 1 for v in values):
        raise click.BadParameter(f"sparsities must lie in [0, 1), got {value!r}")
    return values


@bench_group.command("conv")
@click.option("--sparsity", "sparsity_list", callback=sparsities, default="0.7,0.8,0.9,0.95",
              show_default=True, help="Comma-separated sparsities.")
@DEVICE
@click.option("--batch", type=int, default=1, show_default=True, help="Images per input.")
@click.option("--repeats", type=int, default=10, show_default=True,
              help="Timed calls per measurement (the median counts).")
@click.option("--channels-last", is_flag=True,
              help="Inputs in channels-last layout (NHWC), for dense and sparse alike.")
@click.option("--plot", default=None, help="Also write a PNG: speed-up against sparsity per "
                                           "layer shape.")
@AS_JSON
def bench_conv_command(sparsity_list, device, batch, repeats, channels_last, plot, as_json):
    """Reference layer shapes (ResNet-50, DeepLab-ResNet34) at each sparsity: dense vs sparse."""
    from ..ops.conv_timing import bench_conv, crossovers, format_conv_table
    from ..export import check_timing_request

    check_timing_request(device, batch, repeats)
    if plot:
        check_plot_path(plot)
    rows = bench_conv(sparsity_list, device, batch, repeats,
                      progress=lambda line: echo_err(f"bench: {line}"), channels_last=channels_last)
    if plot:
        from ..plots import save_speedup_plot
        save_speedup_plot(rows, plot)
    if as_json:
        click.echo(json.dumps({"device": device, "batch": batch, "channels_last": channels_last,
                               "rows": rows,
                               "crossovers": crossovers(rows)}, indent=2))
    else:
        click.echo(format_conv_table(rows))
    if plot:
        echo_err(f"wrote {plot}")


def check_plot_path(path: str) -> None:
    """Refuse a plot path that cannot be written before the benchmark runs, not after."""
    target = Path(path)
    if target.is_dir():
        raise PrunekitError(f"--plot {path!r} is a folder; give a file name such as speedup.png")
    if not target.parent.is_dir():
        raise PrunekitError(f"--plot {path!r}: folder {str(target.parent)!r} does not exist")


@bench_group.command("model")
@click.argument("run_dir")
@RUN_INPUT
@DEVICE
@REPEATS
@AS_JSON
def bench_model_command(run_dir, input_size, batch, device, repeats, as_json):
    """Each masked conv of RUN_DIR's model, dense vs sparse, and the whole model with the faster
    of each (nothing written)."""
    from ..export import format_report, measure_run

    *_, report = measure_run(run_dir, input_size=input_size, batch=batch, device=device,
                             repeats=repeats, progress=lambda line: echo_err(f"bench: {line}"))
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else format_report(report))
