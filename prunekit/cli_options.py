"""Option parsers and output helpers shared by the command modules."""
from __future__ import annotations

import click


def comma_list(ctx, param, value):
    if value is None:
        return None
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise click.BadParameter("expected a comma-separated list")
    return items


def learning_rates(ctx, param, value):
    try:
        rates = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected a number or a comma-separated list such as "
                                 f"1e-3,5e-4,1e-4, got {value!r}")
    return rates


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


def float_list(ctx, param, value):
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}")


def echo_err(message: str) -> None:
    click.echo(f"prunekit: {message}", err=True)


def options(*decorators):
    """Apply click options in the order they are listed (top to bottom in --help)."""
    def apply(command):
        for decorator in reversed(decorators):
            command = decorator(command)
        return command
    return apply
