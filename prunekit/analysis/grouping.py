"""Which tasks to train together: the network-selection search of Standley et al. (ICML 2020).

A candidate network solves a group of tasks and scores each of them (higher is better; negate
losses). Given candidates and a budget, choose networks whose costs (1.0 = one full network) sum
to at most the budget, that together solve every task, and that maximise

    total = sum over tasks t of max(score of t in each chosen network that contains t).

A task solved by several chosen networks takes its best one (at inference each task reads the
head of that network). ``best_grouping`` finds the optimum exactly by branch and bound: the
candidates are ordered most promising first, and a depth-first search includes or excludes each
in turn. A branch is cut when a network does not fit the remaining budget, when it would not raise
any task's current best score (including it can only cost more), or when an optimistic bound
cannot beat the best complete selection found so far. The first bound raises each task's current
best to the best score any remaining candidate offers it. The second uses the budget: a network
adds at most its own gain (the sum of its improvements over the current bests, the worst score of
the task where none), and the gains of the networks that fit the remaining budget are bounded by
a fractional knapsack. Ties go to the first selection found in that order, and networks that no
task needs are dropped from the result.

Training every group of K tasks takes 2^K - 1 networks; the paper trains only singletons and
pairs and approximates larger groups (``higher_order_networks``): in a group of 3+ tasks, task
t scores the mean of its pairwise scores with each other member.
"""
from __future__ import annotations

import csv
import itertools
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PrunekitError, UnknownNameError

Pair = tuple[str, str]
EPS = 1e-9  # slack on budget comparisons, so 0.1 + 0.2 fits a budget of 0.3
ALONE = ("", "alone")  # trained_with values that mean "trained alone", besides the task itself


@dataclass(frozen=True)
class Network:
    """One network for a group of tasks: its score per task and its cost in full networks."""

    tasks: frozenset[str]
    scores: Mapping[str, float] = field(hash=False)
    cost: float = 1.0

    def __post_init__(self):
        tasks, name = frozenset(self.tasks), sorted(self.tasks)
        scores = {t: float(self.scores.get(t, math.nan)) for t in name}
        bad = [t for t, s in scores.items() if not math.isfinite(s)]
        if not tasks or bad:
            raise PrunekitError(f"network {name} needs a finite score for each of its tasks"
                                + (f", not for {bad[0]}: {self.scores.get(bad[0])}" if bad else ""))
        if not (math.isfinite(self.cost) and self.cost > 0):
            raise PrunekitError(f"network {name} must cost more than 0, got {self.cost}")
        object.__setattr__(self, "tasks", tasks)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "cost", float(self.cost))


def higher_order_networks(tasks: Sequence[str], pairwise: Mapping[Pair, float],
                          alone: Mapping[str, float]) -> list[Network]:
    """Every non-empty group of ``tasks`` (2^K - 1 networks, smaller groups first).

    A singleton scores ``alone[t]``. In a group of 2+ tasks, t scores the mean over the other
    members b of ``pairwise[(t, b)]``, t's score when trained with b; only when (t, b) is missing
    is ``pairwise[(b, t)]`` used instead (right for symmetric measures such as similarities).
    """
    tasks = _check_tasks(tasks)

    def pair(t: str, b: str) -> float:
        for key in ((t, b), (b, t)):
            if key in pairwise:
                return float(pairwise[key])
        raise PrunekitError(f"no pairwise score for {t!r} trained with {b!r}")

    networks = []
    for size in range(1, len(tasks) + 1):
        for group in itertools.combinations(tasks, size):
            if size == 1:
                if group[0] not in alone:
                    raise PrunekitError(f"no score for {group[0]!r} trained alone")
                scores = {group[0]: float(alone[group[0]])}
            else:
                scores = {t: sum(pair(t, b) for b in group if b != t) / (size - 1) for t in group}
            networks.append(Network(frozenset(group), scores))
    return networks


@dataclass
class Grouping:
    """The chosen networks, each task's best score among them, their sum and their cost."""

    networks: list[Network]
    task_scores: dict[str, float]
    total_score: float
    total_cost: float
    explored: int


def best_grouping(tasks: Sequence[str], networks: Sequence[Network], budget: float) -> Grouping:
    """The best selection of ``networks`` within ``budget`` (exact branch and bound, see above)."""
    tasks, index, budget = _check(tasks, networks, budget)
    worst = {t: min((n.scores[t] for n in networks if t in n.tasks), default=0.0) for t in tasks}
    # Most promising first: how far each score lies above its task's worst, per unit of cost.
    order = sorted(networks, key=lambda n: -sum(s - worst[t] for t, s in n.scores.items()) / n.cost)
    cands = [([(index[t], s) for t, s in n.scores.items()], n.cost) for n in order]
    # reach[j][i]: the best score for task i among candidates j, j + 1, ... (-inf: none).
    reach = [[-math.inf] * len(tasks) for _ in range(len(cands) + 1)]
    for j in range(len(cands) - 1, -1, -1):
        reach[j] = list(reach[j + 1])
        for i, s in cands[j][0]:
            reach[j][i] = max(reach[j][i], s)
    floor = [worst[t] for t in tasks]
    best: list = [-math.inf, None]  # total score, chosen candidate indices
    explored = 0

    def budget_bound(start: int, current: list[float], room: float) -> float:
        # Each task ends at max(base, the scores the added networks give it), so the total gains
        # at most the sum of each added network's own gains: a knapsack, bounded by its fraction.
        base = [c if c > -math.inf else f for c, f in zip(current, floor)]
        gains = [(g / price, g, price) for members, price in cands[start:] if price <= room + EPS
                 for g in [sum(max(0.0, s - base[i]) for i, s in members)] if g > 0]
        bound = sum(base)
        for _, g, price in sorted(gains, reverse=True):
            if price >= room:
                return bound + g * room / price
            bound, room = bound + g, room - price
        return bound

    def visit(start: int, current: list[float], cost: float, chosen: list[int]) -> None:
        nonlocal explored
        explored += 1
        total = sum(current)
        if total > best[0]:  # finite only once every task is covered
            best[:] = [total, list(chosen)]
        # Cut only what is clearly no better, the sums being taken in another order.
        if budget_bound(start, current, budget - cost) < best[0] - EPS * (1 + abs(best[0])):
            return
        for j in range(start, len(cands)):
            # Bounds only shrink as j grows, so the first cut ends the loop.
            bound = sum(max(c, r) for c, r in zip(current, reach[j]))
            if bound <= best[0]:  # also when a task can no longer be covered (-inf)
                break
            members, price = cands[j]
            if cost + price > budget + EPS or all(s <= current[i] for i, s in members):
                continue
            raised = list(current)
            for i, s in members:
                raised[i] = max(raised[i], s)
            chosen.append(j)
            visit(j + 1, raised, cost + price, chosen)
            chosen.pop()

    visit(0, [-math.inf] * len(tasks), 0.0, [])
    return _result(tasks, budget, best[1] and [order[j] for j in best[1]], explored)


def brute_force_grouping(tasks: Sequence[str], networks: Sequence[Network],
                         budget: float) -> Grouping:
    """The best selection by trying every subset of ``networks`` within ``budget``: tiny inputs."""
    tasks, _, budget = _check(tasks, networks, budget)
    best: list = [-math.inf, None]
    explored = 0

    def visit(start: int, chosen: list[Network], cost: float) -> None:
        nonlocal explored
        explored += 1
        total = sum(max((n.scores[t] for n in chosen if t in n.tasks), default=-math.inf)
                    for t in tasks)
        if total > best[0]:
            best[:] = [total, list(chosen)]
        for j in range(start, len(networks)):
            if cost + networks[j].cost <= budget + EPS:
                visit(j + 1, chosen + [networks[j]], cost + networks[j].cost)

    visit(0, [], 0.0)
    return _result(tasks, budget, best[1], explored)


def _check_tasks(tasks: Sequence[str]) -> list[str]:
    tasks = list(tasks)
    if not tasks or len(set(tasks)) != len(tasks):
        raise PrunekitError(f"tasks must be non-empty and unique, got {tasks}")
    return tasks


def _check(tasks, networks, budget) -> tuple[list[str], dict[str, int], float]:
    tasks = _check_tasks(tasks)
    if not (isinstance(budget, numbers.Real) and not isinstance(budget, bool)
            and math.isfinite(budget) and budget > 0):
        raise PrunekitError(f"the budget must be a number of networks above 0, got {budget!r}")
    for n in networks:
        if not n.tasks <= set(tasks):
            raise PrunekitError(f"network {sorted(n.tasks)} has tasks outside {tasks}: "
                                f"{', '.join(sorted(n.tasks - set(tasks)))}")
    return tasks, {t: i for i, t in enumerate(tasks)}, float(budget)


def _result(tasks, budget, chosen: list[Network] | None, explored: int) -> Grouping:
    if not chosen:
        raise PrunekitError(f"a budget of {budget:g} networks cannot cover the {len(tasks)} tasks "
                            f"({', '.join(tasks)}) with the candidate networks given")
    for i in range(len(chosen) - 1, -1, -1):  # drop networks that no task needs: same score
        rest = chosen[:i] + chosen[i + 1:]
        if all(any(m.scores.get(t, -math.inf) >= s for m in rest)
               for t, s in chosen[i].scores.items()):
            chosen = rest
    chosen = sorted(chosen, key=lambda n: (-len(n.tasks), sorted(n.tasks)))
    scores = {t: max(n.scores[t] for n in chosen if t in n.tasks) for t in tasks}
    return Grouping(chosen, scores, sum(scores.values()), sum(n.cost for n in chosen), explored)


def load_pair_table(path: str | Path) -> tuple[dict[Pair, float], dict[str, float]]:
    """(pairwise, alone) scores from a JSON list of {"task", "trained_with", "score"} objects or a
    CSV file with those columns (other keys and columns are ignored). A row whose trained_with is
    the task itself, empty or "alone" (or, in JSON, null or absent) gives ``alone[task]``; the
    others ``pairwise[(task, trained_with)]``.
    Rows are numbered from 1 in JSON and by line (the header is line 1) in CSV.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise PrunekitError(f"cannot read pair table {path}: {exc.strerror or exc}") from None
    suffix = path.suffix.lower()
    if suffix == ".json" or (suffix != ".csv" and text.lstrip()[:1] == "["):
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PrunekitError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise PrunekitError(f"{path}: expected a JSON list of objects with task, trained_with "
                                "and score")
        rows = list(enumerate(entries, start=1))
    else:
        reader = csv.DictReader(text.splitlines())
        reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
        missing = [c for c in ("task", "trained_with", "score") if c not in reader.fieldnames]
        if missing:
            raise PrunekitError(f"{path}: missing column(s) {', '.join(missing)}; expected "
                                f"task,trained_with,score, got {','.join(reader.fieldnames)}")
        rows = [(reader.line_num, row) for row in reader]
    if not rows:
        raise PrunekitError(f"{path}: the pair table has no rows")
    pairwise: dict[Pair, float] = {}
    alone: dict[str, float] = {}
    for number, row in rows:
        where = f"{path} row {number}"
        if row.get("task") is None or row.get("score") is None:
            raise PrunekitError(f"{where}: needs a task and a score")
        task, other = str(row["task"]).strip(), str(row.get("trained_with") or "").strip()
        try:
            score = float(row["score"]) if not isinstance(row["score"], bool) else math.nan
        except (TypeError, ValueError):
            score = math.nan
        if not task or not math.isfinite(score):
            raise PrunekitError(f"{where}: " + (f"score {row['score']!r} is not a finite number"
                                               if task else "empty task name"))
        table, key = (alone, task) if other in (task, *ALONE) else (pairwise, (task, other))
        if key in table:
            partner = repr(other) if table is pairwise else "nothing else (alone)"
            raise PrunekitError(f"{where}: a second row for {task!r} trained with {partner}")
        table[key] = score
    return pairwise, alone


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
