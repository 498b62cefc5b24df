"""The run report: ``report.json`` written, Delta_T against a baseline, and the stdout summary."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

from ..errors import PrunekitError
from ..files import non_finite_keys, write_json
from ..tasks import Task
from .context import RunContext
from .outputs import REPORT


def load_baseline(run_dir: str | Path) -> dict:
    """The report of a finished (usually dense) run, for Delta_T."""
    path = Path(run_dir) / "report.json"
    if not path.is_file():
        raise PrunekitError(f"baseline run {str(run_dir)!r} has no report.json")
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PrunekitError(f"baseline report {str(path)!r} is not valid JSON ({exc})") from exc
    if not report.get("complete"):
        raise PrunekitError(f"baseline run {str(run_dir)!r} did not finish (complete is not true)")
    return report


def delta_t(metrics: Mapping[str, Mapping[str, float]],
            baseline: Mapping[str, Mapping[str, float]],
            tasks: Mapping[str, Task]) -> dict:
    """Normalised multi-task score in percent, against a baseline run.

    Per metric, the signed relative change (M - M_base) / M_base, negated where lower is better;
    per task, the mean over its metrics; overall, the mean over tasks.
    """
    per_task = {}
    for name, task in tasks.items():
        if name not in baseline:
            raise PrunekitError(f"the baseline run has no metrics for task {name!r}")
        changes = []
        for metric, higher_is_better in task.higher_is_better.items():
            value, base = metrics[name][metric], baseline[name].get(metric)
            if base is None or base == 0 or not math.isfinite(base) or not math.isfinite(value):
                continue
            sign = 1.0 if higher_is_better else -1.0
            changes.append(sign * (value - base) / abs(base))
        per_task[name] = 100.0 * sum(changes) / len(changes) if changes else math.nan
    overall = sum(per_task.values()) / len(per_task) if per_task else math.nan
    return {"per_task": per_task, "overall": overall}


def format_summary(report: dict) -> str:
    """A short table for stdout: per-task metrics, sparsity and time per phase."""
    lines = [f"{'task':<8} {'metric':<14} {'value':>9}"]
    delta = report.get("delta_t")
    for task, values in report["metrics"].items():
        for i, (metric, value) in enumerate(values.items()):
            lines.append(f"{task if i == 0 else '':<8} {metric:<14} {value:>9.4f}")
        if delta:
            lines.append(f"{'':<8} {'delta_t (%)':<14} {delta['per_task'][task]:>+9.2f}")
    if delta:
        lines.append(f"{'all':<8} {'delta_t (%)':<14} {delta['overall']:>+9.2f}")
    sparsity = report["sparsity"]
    heads = ", ".join(f"{t} head {s:.3f}" for t, s in sparsity["heads"].items())
    lines.append("")
    requested = ("" if sparsity["requested"] is None
                 else f"requested {sparsity['requested']:.3f}  ")
    lines.append(f"sparsity  {requested}achieved "
                 f"{sparsity['achieved']:.3f}  (shared {sparsity['shared']:.3f}, {heads})")
    if "structured" in report:
        lines.append(format_structured(report["structured"]))
    if "pattern" in report:
        lines.append(format_pattern(report["pattern"]))
    lines.append("time      " + "  ".join(f"{phase} {seconds:.1f}s"
                                          for phase, seconds in report["timings"].items()))
    return "\n".join(lines)


def format_pattern(record: dict) -> str:
    """The N:M pattern's coverage: how many tensors hold it, which do not and what they did."""
    uncovered = record["uncovered"]
    line = f"pattern   {record['pattern']} in {len(record['covered'])} tensors"
    if uncovered:
        line += (f"; {len(uncovered)} uncovered ({record['uncovered_policy']}): "
                 + ", ".join(list(uncovered)[:3]) + (" ..." if len(uncovered) > 3 else ""))
    return line


def format_structured(record: dict) -> str:
    """Parameters, MACs and latency of a structured run's model, before and after."""
    before, after = record["before"], record["after"]
    return (f"model     parameters {before['parameters']:,} -> {after['parameters']:,} "
            f"({record['budget']['kept']:.3f} of the {record['budget']['measures']} kept, "
            f"target {record['budget']['target_kept']:.3f})  MACs/image "
            f"{before['macs_per_image'] / 1e6:.1f}M -> {after['macs_per_image'] / 1e6:.1f}M  "
            f"latency {before['latency_ms']:.1f} -> {after['latency_ms']:.1f} ms "
            f"({record['speedup']:.2f}x)")


def write_report(ctx: RunContext, complete: bool) -> None:
    """report.json when complete; before that (at checkpoints, after a failure) the
    incomplete report, in ``ctx.report_name``. Strict JSON: a value that is not a finite
    number is written as null, with a warning naming it."""
    ctx.report["timings"] = {**ctx.timings, "total": ctx.elapsed()}
    ctx.report["complete"] = complete
    for key in non_finite_keys(ctx.report):
        message = f"report.json: {key} is not a finite number; written as null"
        if message not in ctx.report["warnings"]:
            ctx.warn(message)
    if ctx.writer:
        write_json(ctx.out_dir / (REPORT if complete else ctx.report_name), ctx.report)
