"""``prunekit compare``: several methods on the same data, model and seeds, in one table.

Each seed gets one dense run, the baseline of every method's Delta_T, then one run per method.
The table has a row per method (DiSparse's Table 1): per-task metrics, Delta_T per task and
overall, and the achieved sparsity of the backbone and of each head; with several seeds each cell
is the mean and the sample standard deviation.
"""
from __future__ import annotations

import dataclasses
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from ..core.batch import no_progress
from ..errors import PrunekitError
from ..files import atomic_write, write_json
from . import modes
from .config import RunConfig
from .engine import Run, run
from .outputs import check_out_dir, fresh_run_dir, print_warning

DENSE = "dense"
WARM_STARTED = ("pretrained", "iterative")  # the modes that prune trained weights


@dataclass(frozen=True)
class Method:
    """One row of the comparison: ``scorer[:arbiter][@mode]``."""

    scorer: str
    arbiter: str | None = None
    mode: str | None = None

    @property
    def label(self) -> str:
        return (self.scorer + (f":{self.arbiter}" if self.arbiter else "")
                + (f"@{self.mode}" if self.mode else ""))

    @property
    def folder(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", self.label)

    def config(self, base: RunConfig) -> RunConfig:
        """The shared settings with this method; mode-only options go to the modes they serve."""
        mode = self.mode or base.mode
        return dataclasses.replace(
            base, scorer=self.scorer, arbiter=self.arbiter or base.arbiter, mode=mode,
            dense=False, rewind=base.rewind and mode == "iterative",
            init_checkpoint=base.init_checkpoint if mode in WARM_STARTED else None)


METHOD_PATTERN = re.compile(r"^(?P<scorer>[^:@\s]+)(?::(?P<arbiter>[^:@\s]+))?(?:@(?P<mode>\S+))?$")


def parse_methods(text: str) -> list[Method]:
    """``disparse-snip:or,snip,random@static`` -> methods, in order, without repeats."""
    methods = []
    for item in (part.strip() for part in text.split(",")):
        match = METHOD_PATTERN.match(item)
        if not match:
            raise PrunekitError(f"method {item!r} is not SCORER[:ARBITER][@MODE], "
                                "for example disparse-snip:or or disparse-gradflow:or@pretrained")
        methods.append(Method(**match.groupdict()))
    labels = [m.label for m in methods]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise PrunekitError(f"methods repeat: {', '.join(repeated)}")
    return methods


NOT_RETRAINED = dict(retrain_from_scratch=False, retrain_lrs=None)


def run_configs(base: RunConfig, methods: list[Method], seeds: list[int],
                out_dir: Path) -> list[tuple[str, int, RunConfig]]:
    """Every run, in order: per seed the dense baseline first, then each method against it."""
    plan = []
    for seed in seeds:
        dense_dir = out_dir / DENSE / f"seed{seed}"
        dense = dataclasses.replace(base, dense=True, mode="static", seed=seed,
                                    out=str(dense_dir), baseline=None, rewind=False,
                                    init_checkpoint=None, **NOT_RETRAINED)
        plan.append((DENSE, seed, dense))
        for method in methods:
            config = dataclasses.replace(method.config(base), seed=seed, baseline=str(dense_dir),
                                         out=str(out_dir / method.folder / f"seed{seed}"))
            if not modes.removes_channels(modes.resolved(config)):  # only structured runs retrain
                config = dataclasses.replace(config, **NOT_RETRAINED)
            plan.append((method.label, seed, config))
    return plan


def mean_spread(values: list[float]) -> dict:
    """Mean and sample standard deviation (None for a single value)."""
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None}


def summarise(reports: list[dict]) -> dict:
    """Mean and spread over seeds of one method's metrics, Delta_T and sparsity."""
    first = reports[0]
    summary = {"metrics": {task: {metric: mean_spread([r["metrics"][task][metric] for r in reports])
                                  for metric in values}
                           for task, values in first["metrics"].items()},
               "sparsity": {part: mean_spread([r["sparsity"][part] for r in reports])
                            for part in ("achieved", "shared")},
               "heads": {task: mean_spread([r["sparsity"]["heads"][task] for r in reports])
                         for task in first["sparsity"]["heads"]}}
    if all("delta_t" in r for r in reports):
        summary["delta_t"] = {
            "per_task": {task: mean_spread([r["delta_t"]["per_task"][task] for r in reports])
                         for task in first["delta_t"]["per_task"]},
            "overall": mean_spread([r["delta_t"]["overall"] for r in reports])}
    return summary


def cell(value: dict | None, digits: int = 4, signed: bool = False) -> str:
    if value is None:
        return "-"
    text = f"{value['mean']:{'+' if signed else ''}.{digits}f}"
    return text + (f" ± {value['std']:.{digits}f}" if value["std"] is not None else "")


def format_table(summary: dict) -> str:
    """A Markdown table, one row per method, like Table 1 of the DiSparse paper."""
    rows = summary["methods"]
    first = next(iter(rows.values()))
    tasks = list(first["metrics"])
    header = ["method"] + [f"{task} {metric}" for task in tasks for metric in first["metrics"][task]]
    header += [f"ΔT {task} (%)" for task in tasks] + ["ΔT (%)", "sparsity", "backbone"]
    header += [f"{task} head" for task in tasks]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, row in rows.items():
        delta = row.get("delta_t")
        cells = [label] + [cell(row["metrics"][t][m]) for t in tasks for m in row["metrics"][t]]
        cells += [cell(delta["per_task"][t] if delta else None, 2, True) for t in tasks]
        cells += [cell(delta["overall"] if delta else None, 2, True)]
        cells += [cell(row["sparsity"]["achieved"], 3), cell(row["sparsity"]["shared"], 3)]
        cells += [cell(row["heads"][t], 3) for t in tasks]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@dataclass
class CompareResult:
    summary: dict
    table: str
    out_dir: Path


def compare(base: RunConfig, methods: list[Method], seeds: int = 1, show_progress: bool = False,
            warn=print_warning, announce=lambda message: None) -> CompareResult:
    """Run the dense baseline and every method for ``seeds`` seeds from ``base.seed`` on.

    ``announce`` hears one line as each run starts; ``warn`` gets the runs' warnings.
    """
    if not methods:
        raise PrunekitError("give at least one method to compare")
    if seeds < 1:
        raise PrunekitError(f"seeds must be at least 1, got {seeds}")
    out_dir = Path(base.out) if base.out else fresh_run_dir("compare")
    check_out_dir(out_dir)
    plan = run_configs(base, methods, list(range(base.seed, base.seed + seeds)), out_dir)
    for _, _, config in plan:  # every mistake shows before the first run starts
        Run(config, no_progress, warn=lambda message: None).check()
    reports: dict[str, list[dict]] = {}
    for number, (label, seed, config) in enumerate(plan, 1):
        announce(f"[{number}/{len(plan)}] {label}, seed {seed}")
        reports.setdefault(label, []).append(run(config, show_progress, warn).report)
    summary = {"config": base.as_dict(), "seeds": seeds,
               "methods": {label: summarise(runs) for label, runs in reports.items()},
               "runs": {label: [r["config"]["out"] for r in runs]
                        for label, runs in reports.items()}}
    table = format_table(summary)
    write_json(out_dir / "compare.json", summary)
    atomic_write(out_dir / "compare.md", lambda temporary: temporary.write_text(table))
    return CompareResult(summary, table, out_dir)
