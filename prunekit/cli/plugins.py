"""``prunekit plugins`` (the installed plugins) and ``prunekit plugins check NAME``."""
from __future__ import annotations

import json

import click

from ..interfaces import INTERFACES
from ..registry import default_registry
from .base import CHECK_FAILED, cli


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
    from ..core.contract import describe
    from ..testing import check_plugin, find_plugin

    plugin = find_plugin(name, kind)
    click.echo(f"checking {describe(plugin)}")
    findings = check_plugin(plugin)
    for finding in findings:
        click.echo(finding.line())
    failed = sum(not f.ok for f in findings)
    click.echo(f"{len(findings) - failed} passed, {failed} failed")
    if failed:
        raise click.exceptions.Exit(CHECK_FAILED)
