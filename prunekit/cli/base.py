"""The ``prunekit`` command group, its options before the command, and the exit codes.

The command modules (runs, analysis, plugins, kernels) add their commands to ``cli``.
"""
from __future__ import annotations

import os

import click

from .._version import __version__
from ..registry import EXTRA_PLUGINS, default_registry, extra_plugin_modules

USAGE_ERROR = 2
CHECK_FAILED = 1  # `prunekit plugins check`: the plugin broke its contract
STOPPED = 128 + 15  # the exit status of a process ended by SIGTERM
DEBUG_SWITCH = "PRUNEKIT_DEBUG"


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
