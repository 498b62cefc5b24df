"""Which tasks to train together: the network-selection problem of Standley et al. (ICML 2020).

A candidate network is trained on a group of tasks and scores some of them (higher is better;
negate losses). Given candidates and a budget, choose networks whose costs (1.0 = one full
network, 0.5 = a half-size one) sum to at most the budget and that maximise

    total = sum over tasks t of max(score of t in each chosen network that scores t).

A task scored by several chosen networks takes its best one (at inference each task reads the
head of that network). When the budget cannot cover every task, the answer covers as many tasks
as it can and, among those answers, has the highest total; the tasks it leaves out are listed.

``best_grouping`` solves this exactly by dynamic programming over sets of tasks. Each task of an
optimal answer is served by one chosen network, so an answer is a partition of the covered tasks
into parts, each served by one network that scores all of its part (two parts never need the
same network: merging them costs less). For every set of tasks the search keeps the Pareto front
of (cost, total) over the ways to cover exactly that set: the part holding its first task, served
by the best network for each cost, plus a front already known for the rest. That is about 3^K
steps for K tasks, times the fronts' lengths (short: costs are sums of a few values such as 0.5
and 1), instead of the 2^(2^K) subsets of candidates.

Training every group of K tasks takes 2^K - 1 networks; the paper trains singletons and pairs
and estimates larger groups (``estimated_networks``, its higher-order approximation): in a group
of 3+ tasks, task t scores the mean of its scores when trained with each other member, over the
pairs that were measured (a task without any is not scored by that group).
"""
from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import PrunekitError

Pair = tuple[str, str]
# A measured network: the tasks it was trained on and the cost its table states (None: none).
GroupKey = tuple[frozenset, float | None]
EPS = 1e-9  # slack on budget comparisons, so 0.1 + 0.2 fits a budget of 0.3
ALONE = ("", "alone")  # trained_with values that mean "trained alone", besides the task itself
GROUP_JOIN = "+"  # joins the tasks of a group in tables: "depth+normal"
HALF_SIZE_COST = 0.5  # the first row of an authors' results table: half-size single-task networks


@dataclass(frozen=True)
class Network:
    """One network: its score per task, its cost in full networks, and the tasks it was trained
    on (``trained``, by default the scored ones; a superset when some member has no score)."""

    tasks: frozenset[str]
    scores: Mapping[str, float] = field(hash=False)
    cost: float = 1.0
    trained: frozenset[str] | None = None
    estimated: bool = False  # scores estimated from pairs, not measured

    def __post_init__(self):
        tasks, name = frozenset(self.tasks), sorted(self.tasks)
        scores = {t: float(self.scores.get(t, math.nan)) for t in name}
        bad = [t for t, s in scores.items() if not math.isfinite(s)]
        if not tasks or bad:
            raise PrunekitError(f"network {name} needs a finite score for each of its tasks"
                                + (f", not for {bad[0]}: {self.scores.get(bad[0])}" if bad else ""))
        if not (math.isfinite(self.cost) and self.cost > 0):
            raise PrunekitError(f"network {name} must cost more than 0, got {self.cost}")
        trained = tasks if self.trained is None else frozenset(self.trained)
        if not tasks <= trained:
            raise PrunekitError(f"network {name} scores tasks it was not trained on "
                                f"({group_name(trained)})")
        object.__setattr__(self, "tasks", tasks)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "cost", float(self.cost))
        object.__setattr__(self, "trained", trained)


def group_name(group: Iterable[str]) -> str:
    return GROUP_JOIN.join(sorted(group))


def full_cost(group: frozenset) -> float:
    return 1.0


# -- candidate networks --------------------------------------------------------------------------

def networks_from_table(table: Mapping[GroupKey, Mapping[str, float]],
                        cost_of: Callable[[frozenset], float] = full_cost) -> list[Network]:
    """One network per measured (group, cost); ``cost_of(group)`` where the table states none.
    A network scores the members measured in it; ``unscored_members`` names the others."""
    return [Network(frozenset(scores), scores, cost_of(group) if cost is None else cost,
                    trained=group)
            for (group, cost), scores in table.items() if scores]


def unscored_members(networks: Iterable[Network]) -> list[tuple[Network, list[str]]]:
    """The measured networks that have no score for some of the tasks they were trained on."""
    return [(n, sorted(n.trained - n.tasks)) for n in networks
            if n.trained != n.tasks and not n.estimated]


def unmeasured_groups(tasks: Sequence[str], networks: Iterable[Network],
                      size: int) -> list[frozenset]:
    """The groups of ``size`` tasks that no network was trained on."""
    trained = {n.trained for n in networks}
    return [group for group in map(frozenset, itertools.combinations(tasks, size))
            if group not in trained]


def estimated_networks(tasks: Sequence[str], networks: Sequence[Network],
                       cost_of: Callable[[frozenset], float] = full_cost) -> list[Network]:
    """The higher-order approximation for every group of 3+ ``tasks`` that ``networks`` do not
    measure: t scores the mean, over the other members b whose pair network scores t, of that
    score. Where a pair was measured at several costs, the dearest (the full-size one) counts."""
    with_partner = _pair_scores(networks)
    measured = {n.trained for n in networks}
    estimates = []
    for size in range(3, len(tasks) + 1):
        for group in map(frozenset, itertools.combinations(tasks, size)):
            if group in measured:
                continue
            scores = {t: _mean([with_partner[t, b] for b in group - {t} if (t, b) in with_partner])
                      for t in group}
            scores = {t: s for t, s in scores.items() if s is not None}
            if scores:
                estimates.append(Network(frozenset(scores), scores, cost_of(group),
                                         trained=group, estimated=True))
    return estimates


def _pair_scores(networks: Iterable[Network]) -> dict[Pair, float]:
    """(t, b) -> t's score in the network trained on t and b, the dearest where several."""
    dearest: dict[Pair, tuple[float, float]] = {}
    for n in networks:
        if len(n.trained) == 2 and not n.estimated:
            for t, s in n.scores.items():
                (b,) = n.trained - {t}
                if (t, b) not in dearest or n.cost > dearest[t, b][0]:
                    dearest[t, b] = (n.cost, s)
    return {pair: score for pair, (_, score) in dearest.items()}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def higher_order_networks(tasks: Sequence[str], pairwise: Mapping[Pair, float],
                          alone: Mapping[str, float],
                          cost_of: Callable[[frozenset], float] = full_cost) -> list[Network]:
    """Singletons (``alone[t]``), pairs (``pairwise[(t, b)]``: t's score when trained with b)
    and the estimate of every larger group of ``tasks``, smaller groups first. A missing score
    leaves its network out, or, for one direction of a pair, unscored for that task."""
    tasks = _check_tasks(tasks)
    table: dict[GroupKey, dict[str, float]] = {}
    for t in tasks:
        if t in alone:
            table[frozenset({t}), None] = {t: alone[t]}
    for a, b in itertools.combinations(tasks, 2):
        table[frozenset({a, b}), None] = {t: pairwise[t, o] for t, o in ((a, b), (b, a))
                                          if (t, o) in pairwise}
    measured = networks_from_table(table, cost_of)
    return measured + estimated_networks(tasks, measured, cost_of)


# -- the search ----------------------------------------------------------------------------------

@dataclass
class Grouping:
    """The chosen networks, each covered task's best score among them, their sum and cost, and
    the tasks the budget could not cover."""

    networks: list[Network]
    task_scores: dict[str, float]
    total_score: float
    total_cost: float
    left_out: list[str]


# One way to cover a set of tasks: (cost, total, how: (network, mask of the rest, index of the
# rest's way) or None for the empty set). A front lists them by rising cost and rising total.
Way = tuple


def best_grouping(tasks: Sequence[str], networks: Sequence[Network], budget: float) -> Grouping:
    """The best selection of ``networks`` within ``budget`` (exact; see the module docstring)."""
    tasks, index, budget = _check(tasks, networks, budget)
    fronts = _cover_fronts(len(tasks), _part_fronts(networks, index, budget), budget)
    reached = [mask for mask in range(1, len(fronts)) if fronts[mask]]
    if not reached:
        _nothing_fits(networks, budget)
    # Most tasks covered, then the highest total, then the lowest cost (the front's last way).
    mask = max(reached, key=lambda m: (bin(m).count("1"), fronts[m][-1][1], -fronts[m][-1][0]))
    chosen = []
    way = fronts[mask][-1]
    while way[2] is not None:
        network, rest, position = way[2]
        chosen.append(network)
        way = fronts[rest][position]
    return _result(tasks, chosen)


def _part_fronts(networks: Sequence[Network], index: Mapping[str, int],
                 budget: float) -> dict[int, list[Way]]:
    """For each set of tasks (a bit mask), the Pareto front of (cost, the set's total) over the
    networks that score all of it: every subset of every network's scored tasks."""
    options: dict[int, list[Way]] = {}
    for n in networks:
        if n.cost > budget + EPS:
            continue
        totals = {0: 0.0}
        for t, s in n.scores.items():
            bit = 1 << index[t]
            totals.update([(m | bit, v + s) for m, v in totals.items()])
        del totals[0]
        for mask, total in totals.items():
            options.setdefault(mask, []).append((n.cost, total, n))
    return {mask: _pareto(ways) for mask, ways in options.items()}


def _cover_fronts(task_count: int, parts: Mapping[int, list[Way]],
                  budget: float) -> list[list[Way]]:
    """fronts[mask]: the Pareto front of the ways to cover exactly the tasks in ``mask`` within
    ``budget``, each task by one part. The part holding the lowest task of the mask is taken
    first, so every partition is met once."""
    fronts: list[list[Way]] = [[(0.0, 0.0, None)]]
    for mask in range(1, 1 << task_count):
        lowest = mask & -mask
        others = mask ^ lowest
        ways = []
        sub = others
        while True:  # every subset of the other tasks, joined to the lowest one
            part = sub | lowest
            rest = mask ^ part
            for cost, total, network in parts.get(part, ()):
                for position, (rest_cost, rest_total, _) in enumerate(fronts[rest]):
                    if cost + rest_cost > budget + EPS:
                        break  # the rest's front rises in cost
                    ways.append((cost + rest_cost, total + rest_total, (network, rest, position)))
            if not sub:
                break
            sub = (sub - 1) & others
        fronts.append(_pareto(ways))
    return fronts


def _pareto(ways: list[Way]) -> list[Way]:
    """The ways no other beats: by rising cost, each with a higher total than all cheaper ones
    (of equal totals the cheapest, of equal costs the first highest)."""
    front = []
    for way in sorted(ways, key=lambda w: (w[0], -w[1])):
        if not front or way[1] > front[-1][1]:
            front.append(way)
    return front


def brute_force_grouping(tasks: Sequence[str], networks: Sequence[Network],
                         budget: float) -> Grouping:
    """The best selection by trying every subset of ``networks`` within ``budget``: tiny inputs.
    The test oracle of ``best_grouping``: most tasks covered first, then the highest total."""
    tasks, _, budget = _check(tasks, networks, budget)
    best: list = [(0, -math.inf), None]

    def visit(start: int, chosen: list[Network], cost: float) -> None:
        best_scores = [max((n.scores[t] for n in chosen if t in n.tasks), default=None)
                       for t in tasks]
        covered = [s for s in best_scores if s is not None]
        if chosen and (len(covered), sum(covered)) > best[0]:
            best[:] = [(len(covered), sum(covered)), list(chosen)]
        for j in range(start, len(networks)):
            if cost + networks[j].cost <= budget + EPS:
                visit(j + 1, chosen + [networks[j]], cost + networks[j].cost)

    visit(0, [], 0.0)
    if best[1] is None:
        _nothing_fits(networks, budget)
    return _result(tasks, best[1])


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
        if not n.trained <= set(tasks):
            raise PrunekitError(f"network {sorted(n.trained)} has tasks outside {tasks}: "
                                f"{', '.join(sorted(n.trained - set(tasks)))}")
    return tasks, {t: i for i, t in enumerate(tasks)}, float(budget)


def _nothing_fits(networks: Sequence[Network], budget: float):
    cheapest = min((n.cost for n in networks), default=None)
    raise PrunekitError(f"a budget of {budget:g} networks fits none of the candidate networks"
                        + (f" (the cheapest costs {cheapest:g})" if cheapest else " (none given)"))


def _result(tasks: list[str], chosen: list[Network]) -> Grouping:
    for i in range(len(chosen) - 1, -1, -1):  # drop networks that no task needs: same score
        rest = chosen[:i] + chosen[i + 1:]
        if all(any(m.scores.get(t, -math.inf) >= s for m in rest)
               for t, s in chosen[i].scores.items()):
            chosen = rest
    chosen = sorted(chosen, key=lambda n: (-len(n.trained), sorted(n.trained), n.cost))
    scores = {t: max(n.scores[t] for n in chosen if t in n.tasks)
              for t in tasks if any(t in n.tasks for n in chosen)}
    return Grouping(chosen, scores, sum(scores.values()), sum(n.cost for n in chosen),
                    [t for t in tasks if t not in scores])


def serving_network(grouping: Grouping, task: str) -> Network:
    """The chosen network whose head a task reads: its best score, the first such network."""
    return next(n for n in grouping.networks if n.scores.get(task) == grouping.task_scores[task])
