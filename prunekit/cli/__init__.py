"""``prunekit`` command line: a thin layer over the Python API.

One module per command group: ``runs`` (run, compare), ``analysis`` (similarity, group),
``plugins`` (plugins, plugins check), ``kernels`` (export, bench); ``base`` holds the group and
its options, ``options`` the shared option sets. Errors the user can fix print one line on
stderr and exit with code 2.
"""
from __future__ import annotations

import os
import sys
import traceback

import click

from ..errors import PrunekitError, one_line, user_message
from ..training.resume import RunStopped
from . import analysis, kernels, plugins, runs  # noqa: F401 (each adds its commands to cli)
from .base import DEBUG_SWITCH, STOPPED, USAGE_ERROR, cli
from .runs import launch_processes, without_option  # noqa: F401 (public: torchrun launch)


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
