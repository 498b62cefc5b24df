"""The inputs of ``prunekit group`` read from files: measured networks as a pair table (JSON or
CSV, any group size, optional costs), the authors' results tables, and pairwise scores from a
``similarity.json``. The search itself is ``prunekit.analysis.grouping``."""
from __future__ import annotations

import csv
import itertools
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import PrunekitError, UnknownNameError
from .grouping import ALONE, GROUP_JOIN, HALF_SIZE_COST, GroupKey, Pair, group_name

def load_pair_table(path: str | Path) -> dict[GroupKey, dict[str, float]]:
    """Measured networks from a JSON list of {"task", "trained_with", "score"[, "cost"]} objects
    or a CSV file with those columns (other keys and columns are ignored).

    A row gives ``task``'s score in the network trained on ``task`` and ``trained_with``: one
    task, several joined by "+" ("depth+normal"; in JSON also a list), or the task itself, empty
    or "alone" (in JSON also null or absent) for the task trained alone. ``cost`` (optional,
    above 0) is that network's cost, for example 0.5 for a half-size network; without it the
    caller decides. Returns {(trained tasks, cost or None): {task: score}}. Rows are numbered
    from 1 in JSON and by line (the header is line 1) in CSV.
    """
    path = Path(path)
    text = _read(path, "pair table")
    suffix = path.suffix.lower()
    if suffix == ".json" or (suffix != ".csv" and text.lstrip()[:1] == "["):
        rows = _json_rows(path, text)
    else:
        rows = _csv_rows(path, text)
    if not rows:
        raise PrunekitError(f"{path}: the pair table has no rows")
    table: dict[GroupKey, dict[str, float]] = {}
    for number, row in rows:
        where = f"{path} row {number}"
        if row.get("task") is None or row.get("score") is None:
            raise PrunekitError(f"{where}: needs a task and a score")
        task = str(row["task"]).strip()
        if not task:
            raise PrunekitError(f"{where}: empty task name")
        partners = _partners(where, task, row.get("trained_with"))
        score = _number(where, "score", row["score"])
        cost = _cost(where, row.get("cost"))
        scores = table.setdefault((frozenset({task, *partners}), cost), {})
        if task in scores:
            partner = (f"{GROUP_JOIN.join(partners)!r}" if partners else "nothing else (alone)")
            raise PrunekitError(f"{where}: a second row for {task!r} trained with {partner}"
                                + (f" at cost {cost:g}" if cost is not None else ""))
        scores[task] = score
    return table


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise PrunekitError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _json_rows(path: Path, text: str) -> list[tuple[int, Mapping]]:
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PrunekitError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise PrunekitError(f"{path}: expected a JSON list of objects with task, trained_with "
                            "and score")
    return list(enumerate(entries, start=1))


def _csv_rows(path: Path, text: str) -> list[tuple[int, Mapping]]:
    reader = csv.DictReader(text.splitlines())
    reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
    missing = [c for c in ("task", "trained_with", "score") if c not in reader.fieldnames]
    if missing:
        raise PrunekitError(f"{path}: missing column(s) {', '.join(missing)}; expected "
                            f"task,trained_with,score[,cost], got {','.join(reader.fieldnames)}")
    return [(reader.line_num, row) for row in reader]


def _partners(where: str, task: str, trained_with) -> list[str]:
    """The other tasks of the row's network, sorted; none when trained alone."""
    if isinstance(trained_with, list):
        names = [str(name).strip() for name in trained_with]
    else:
        text = str(trained_with or "").strip()
        names = [] if text in (task, *ALONE) else [n.strip() for n in text.split(GROUP_JOIN)]
    if not all(names):
        raise PrunekitError(f"{where}: an empty task name in trained_with {trained_with!r}")
    return sorted(set(names) - {task})


def _number(where: str, what: str, value) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise PrunekitError(f"{where}: {what} {value!r} is not a finite number")
    return number


def _cost(where: str, value) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    cost = _number(where, "cost", value)
    if cost <= 0:
        raise PrunekitError(f"{where}: cost {value!r} must be above 0")
    return cost


def load_authors_table(path: str | Path, task_names: Sequence[str] | None = None
                       ) -> tuple[list[str], dict[GroupKey, dict[str, float]]]:
    """Measured networks from a results table in the format of Standley et al.'s network
    selection code (network_selection/results*.txt): tab-separated, one column per task, no
    header, one network per row scoring the tasks whose cells are filled. The first row holds
    each task's half-size network (cost 0.5); the other rows state no cost. ``task_names``
    name the columns (task1, task2, ... without). Returns (tasks, table as load_pair_table's).
    """
    path = Path(path)
    lines = [(number, line) for number, line in enumerate(_read(path, "results table")
                                                            .splitlines(), start=1)
             if line.strip()]
    if not lines:
        raise PrunekitError(f"{path}: the results table has no rows")
    width = len(lines[0][1].rstrip("\t").split("\t"))
    tasks = list(task_names) if task_names else [f"task{i}" for i in range(1, width + 1)]
    if len(tasks) != width or len(set(tasks)) != width:
        raise PrunekitError(f"{path}: {width} columns need {width} different task names, got "
                            f"{', '.join(tasks)}")
    table: dict[GroupKey, dict[str, float]] = {}
    for number, line in lines:
        where = f"{path} row {number}"
        cells = line.rstrip("\t").split("\t")
        if len(cells) > width:
            raise PrunekitError(f"{where}: {len(cells)} cells, the first row has {width}")
        scores = {tasks[i]: _number(where, f"cell {i + 1}", cell)
                  for i, cell in enumerate(cells) if cell.strip()}
        if number == lines[0][0]:  # one half-size network per task
            for task, score in scores.items():
                table[frozenset({task}), HALF_SIZE_COST] = {task: score}
            continue
        key = (frozenset(scores), None)
        if key in table:
            raise PrunekitError(f"{where}: a second row for the network of "
                                f"{group_name(scores)}")
        table[key] = scores
    return tasks, table


def pairwise_from_similarity(data: Mapping, metric: str, weighting: str) -> dict[Pair, float]:
    """Pairwise scores from a parsed similarity.json: ``pairs[metric][weighting]["a/b"]["mean"]``
    for each pair a, b in the order of ``data["tasks"]`` ("b/a" is accepted too); the measure is
    symmetric, so both (a, b) and (b, a) are returned."""
    try:
        tasks, pairs = list(data["tasks"]), data["pairs"]
    except (KeyError, TypeError):
        raise PrunekitError("similarity data needs 'tasks' and 'pairs'") from None
    if metric not in pairs:
        raise UnknownNameError("similarity metric", metric, pairs)
    if weighting not in pairs[metric]:
        raise UnknownNameError(f"weighting for metric {metric!r}", weighting, pairs[metric])
    table = pairs[metric][weighting]
    out: dict[Pair, float] = {}
    for a, b in itertools.combinations(tasks, 2):
        entry = table.get(f"{a}/{b}", table.get(f"{b}/{a}"))
        if not (isinstance(entry, Mapping) and isinstance(entry.get("mean"), numbers.Real)):
            raise PrunekitError(f"similarity data has no mean for {a}/{b} "
                                f"({metric}, {weighting})")
        out[a, b] = out[b, a] = float(entry["mean"])
    return out
