"""``prunekit group``: measured or training-free scores in, the best task grouping within a
budget out, optionally reported on a test table."""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import PrunekitError
from .grouping import GROUP_JOIN, GroupKey, Grouping, Network, best_grouping, \
    estimated_networks, group_name, networks_from_table, serving_network, unmeasured_groups, \
    unscored_members
from .grouping_tables import load_authors_table, load_pair_table, pairwise_from_similarity

MISSING_DIRECTION = ("error", "skip")


@dataclass(frozen=True)
class GroupOptions:
    """What ``prunekit group`` was asked: one input, how to read it, the budget."""

    budget: float
    similarity_file: str | None = None
    metric: str = "mcss"
    weighting: str = "equal"
    alone: float = 1.0
    pairs_file: str | None = None
    table_file: str | None = None
    table_tasks: tuple[str, ...] | None = None
    test_file: str | None = None
    lower_is_better: bool = False
    costs: tuple[str, ...] = ()  # "GROUP=COST", GROUP the tasks joined by "+"
    alone_cost: float | None = None
    missing_direction: str = "error"
    estimate_groups: bool = False


def read_similarity(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PrunekitError(f"similarity file {path!r} does not exist") from None
    except (OSError, ValueError) as exc:
        raise PrunekitError(f"similarity file {path!r} could not be read as JSON: {exc}") from None
    if not isinstance(data, dict) or "tasks" not in data or "pairs" not in data:
        raise PrunekitError(f"{path!r} is not a similarity.json of `prunekit similarity`")
    return data


def choose_groups(options: GroupOptions, warn: Callable[[str], None]) -> dict:
    """The chosen networks, each task's score and the total (and on the test table, when
    given), as a JSON-ready dict; ``warn`` hears of missing measurements and left-out tasks."""
    _check_options(options)
    tasks, table = _read_input(options, _input_file(options))
    cost_of = _cost_rule(options, tasks)
    measured = _measured_networks(options, table, cost_of)
    _warn_unmeasured(tasks, measured, warn)
    if options.estimate_groups:  # the paper's higher-order setting: larger groups from pairs
        measured = [n for n in measured if len(n.trained) < 3]
    candidates = measured + estimated_networks(tasks, measured, cost_of)
    grouping = best_grouping(tasks, candidates, options.budget)
    if grouping.left_out:
        warn(f"a budget of {options.budget:g} networks cannot cover every task: left out "
             f"{', '.join(grouping.left_out)}; the grouping is the best for the others")
    result = _describe(options, tasks, grouping)
    if options.test_file:
        _add_test_scores(result, grouping, _test_networks(options, tasks, cost_of))
    return result


def _check_options(options: GroupOptions) -> None:
    given = [f for f in (options.similarity_file, options.pairs_file, options.table_file) if f]
    if len(given) != 1:
        raise PrunekitError("give exactly one of --similarity (a similarity.json), --pairs (a "
                            "measured pair-performance table) and --table (a results table in "
                            "the format of Standley et al.)")
    if options.similarity_file and options.lower_is_better:
        raise PrunekitError("--lower-is-better is for --pairs and --table scores (losses); "
                            "similarities are higher for more alike tasks")
    if options.similarity_file and options.test_file:
        raise PrunekitError("--test reports the grouping on measured scores: use it with "
                            "--pairs or --table")
    if options.table_tasks and not options.table_file:
        raise PrunekitError("--table-tasks names the columns of a --table file; give --table")
    if options.missing_direction not in MISSING_DIRECTION:
        raise PrunekitError(f"--missing-direction must be one of {', '.join(MISSING_DIRECTION)},"
                            f" got {options.missing_direction!r}")
    if options.alone_cost is not None and not (math.isfinite(options.alone_cost)
                                               and options.alone_cost > 0):
        raise PrunekitError(f"--alone-cost must be above 0, got {options.alone_cost:g}")


def _input_file(options: GroupOptions) -> str:
    return options.similarity_file or options.pairs_file or options.table_file


def _read_input(options: GroupOptions, path: str) -> tuple[list[str], dict[GroupKey, dict]]:
    """The tasks and the measured networks' scores, negated when lower is better."""
    if options.similarity_file:
        tasks, table = _similarity_table(options)
    elif options.table_file:
        tasks, table = load_authors_table(path, options.table_tasks)
    else:
        table = load_pair_table(path)
        tasks = sorted({t for group, _ in table for t in group})
    sign = -1.0 if options.lower_is_better else 1.0
    return tasks, {key: {t: sign * s for t, s in scores.items()} for key, scores in table.items()}


def _similarity_table(options: GroupOptions) -> tuple[list[str], dict[GroupKey, dict]]:
    """Every task alone (``options.alone``) and every pair, its similarity for both tasks."""
    data = read_similarity(options.similarity_file)
    try:
        pairwise = pairwise_from_similarity(data, options.metric, options.weighting)
    except PrunekitError as exc:
        raise PrunekitError(f"{options.similarity_file!r}: {exc}") from exc
    tasks = list(data["tasks"])
    table = {(frozenset({t}), None): {t: options.alone} for t in tasks}
    for (a, b), score in pairwise.items():
        table.setdefault((frozenset({a, b}), None), {})[a] = score
    return tasks, table


def _cost_rule(options: GroupOptions, tasks: list[str]) -> Callable[[frozenset], float]:
    """The cost of a network whose input states none: --cost for its group, else --alone-cost
    for a single task, else 1 (one full network)."""
    costs: dict[frozenset, float] = {}
    for spec in options.costs:
        group, cost = _parse_cost(spec, tasks)
        if group in costs:
            raise PrunekitError(f"--cost gives the group {group_name(group)} twice")
        costs[group] = cost

    def cost_of(group: frozenset) -> float:
        if group in costs:
            return costs[group]
        return options.alone_cost if len(group) == 1 and options.alone_cost else 1.0
    return cost_of


def _parse_cost(spec: str, tasks: list[str]) -> tuple[frozenset, float]:
    name, equals, value = spec.partition("=")
    group = frozenset(t.strip() for t in name.split(GROUP_JOIN))
    try:
        cost = float(value)
    except ValueError:
        cost = math.nan
    if not equals or not all(group) or not (math.isfinite(cost) and cost > 0):
        raise PrunekitError(f"--cost expects GROUP=COST with the group's tasks joined by "
                            f"{GROUP_JOIN!r} and a cost above 0, such as seg+depth=0.5; "
                            f"got {spec!r}")
    unknown = sorted(group - set(tasks))
    if unknown:
        raise PrunekitError(f"--cost {spec}: no task {', '.join(unknown)} in the input; "
                            f"tasks: {', '.join(tasks)}")
    return group, cost


def _measured_networks(options: GroupOptions, table: dict[GroupKey, dict],
                       cost_of: Callable[[frozenset], float]) -> list[Network]:
    """The input's networks; one without a score for a task it was trained on (one direction
    of a pair) is an error unless --missing-direction skip, which leaves it unscored there."""
    networks = networks_from_table(table, cost_of)
    gaps = unscored_members(networks)
    if gaps and options.missing_direction == "error":
        network, missing = gaps[0]
        raise PrunekitError(
            f"{_input_file(options)}: the network of {group_name(network.trained)} has no score "
            f"for {', '.join(missing)} ({len(gaps)} network(s) lack one); measure it, or pass "
            "--missing-direction skip to let such a network serve only the tasks it scores")
    return networks


def _warn_unmeasured(tasks: list[str], networks: list[Network],
                     warn: Callable[[str], None]) -> None:
    alone = unmeasured_groups(tasks, networks, 1)
    pairs = unmeasured_groups(tasks, networks, 2)
    if alone:
        warn(f"no score for {', '.join(group_name(g) for g in alone)} trained alone: "
             "no single-task network for them")
    if pairs:
        warn(f"no score for the pair(s) {', '.join(group_name(g) for g in pairs)}: no network "
             "for them, and larger groups average the pairs that were measured")


def _describe(options: GroupOptions, tasks: list[str], grouping: Grouping) -> dict:
    sign = -1.0 if options.lower_is_better else 1.0
    return {
        "source": _source(options), "budget": options.budget, "tasks": tasks,
        "networks": [{"tasks": sorted(n.trained), "cost": n.cost, "estimated": n.estimated,
                      "scores": {t: sign * s for t, s in sorted(n.scores.items())}}
                     for n in grouping.networks],
        "task_scores": {t: sign * s for t, s in grouping.task_scores.items()},
        "total_score": sign * grouping.total_score, "total_cost": grouping.total_cost,
        "left_out": grouping.left_out,
    }


def _source(options: GroupOptions) -> dict:
    if options.similarity_file:
        source = {"similarity": options.similarity_file, "metric": options.metric,
                  "weighting": options.weighting, "alone": options.alone}
    elif options.table_file:
        source = {"table": options.table_file, "table_tasks": options.table_tasks and
                  list(options.table_tasks), "test": options.test_file}
    else:
        source = {"pairs": options.pairs_file, "test": options.test_file}
    return {**source, "lower_is_better": options.lower_is_better, "costs": list(options.costs),
            "alone_cost": options.alone_cost, "missing_direction": options.missing_direction,
            "estimate_groups": options.estimate_groups}


def _test_networks(options: GroupOptions, tasks: list[str],
                   cost_of: Callable[[frozenset], float]) -> dict[tuple, Network]:
    """The test table's networks by (trained tasks, cost), estimated where it measures none."""
    test_tasks, table = _read_input(options, options.test_file)
    if sorted(test_tasks) != sorted(tasks):
        raise PrunekitError(f"{options.test_file}: the test table's tasks "
                            f"({', '.join(test_tasks)}) differ from {', '.join(tasks)}")
    measured = networks_from_table(table, cost_of)
    return {(n.trained, n.cost): n for n in measured + estimated_networks(tasks, measured, cost_of)}


def _add_test_scores(result: dict, grouping: Grouping, test: dict[tuple, Network]) -> None:
    """Each task's test score in the network chosen for it on the input (validation) scores;
    also each task's best test score among the chosen networks, which the paper's plots count."""
    sign = -1.0 if result["source"]["lower_is_better"] else 1.0
    chosen = [_test_match(result, n, test) for n in grouping.networks]
    task_scores, best_of_chosen = {}, {}
    for task in grouping.task_scores:
        position = grouping.networks.index(serving_network(grouping, task))
        if task not in chosen[position].scores:
            _no_test_score(result, grouping.networks[position], task)
        task_scores[task] = sign * chosen[position].scores[task]
        best_of_chosen[task] = sign * max(m.scores[task] for m in chosen if task in m.scores)
        entry = result["networks"][position]
        entry.setdefault("test_scores", {})[task] = task_scores[task]
        entry["test_estimated"] = chosen[position].estimated
    result["test"] = {"task_scores": task_scores, "total_score": sum(task_scores.values()),
                      "best_of_chosen": {"task_scores": best_of_chosen,
                                         "total_score": sum(best_of_chosen.values())}}


def _test_match(result: dict, network: Network, test: dict[tuple, Network]) -> Network:
    match = test.get((network.trained, network.cost))
    if match is None:
        _no_test_score(result, network, ", ".join(sorted(network.tasks)))
    return match


def _no_test_score(result: dict, network: Network, tasks: str):
    raise PrunekitError(f"{result['source']['test']}: no test score for {tasks} in the network "
                        f"of {group_name(network.trained)} (cost {network.cost:g})")


def format_grouping(result: dict) -> str:
    lines = [f"budget {result['budget']:g} networks; chosen {len(result['networks'])}, "
             f"cost {result['total_cost']:g}"]
    for number, network in enumerate(result["networks"], 1):
        scores = ", ".join(f"{t} {s:.4f}" for t, s in network["scores"].items())
        estimated = ", estimated from pairs" if network["estimated"] else ""
        lines.append(f"  network {number}: {' + '.join(network['tasks'])}  cost "
                     f"{network['cost']:g}{estimated}  ({scores})")
    lines.append("per task (best network covering it): "
                 + ", ".join(f"{t} {s:.4f}" for t, s in result["task_scores"].items()))
    lines.append(f"total score {result['total_score']:.4f}")
    if result["left_out"]:
        lines.append(f"left out (the budget cannot cover them): {', '.join(result['left_out'])}")
    if "test" in result:
        lines.append("on the test table, each task in its chosen network: "
                     + ", ".join(f"{t} {s:.4f}" for t, s in result["test"]["task_scores"].items())
                     + f"; total {result['test']['total_score']:.4f} (each task at its best "
                     f"among the chosen: {result['test']['best_of_chosen']['total_score']:.4f})")
    return "\n".join(lines)
