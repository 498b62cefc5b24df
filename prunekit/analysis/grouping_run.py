"""``prunekit group``: pairwise scores in, the best task grouping within a budget out."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import PrunekitError
from .grouping import best_grouping, higher_order_networks, load_pair_table, \
    pairwise_from_similarity


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


def choose_groups(similarity_file: str | None, metric: str, weighting: str, alone: float,
                  pairs_file: str | None, lower_is_better: bool, budget: float) -> dict:
    """The chosen networks, each task's score and the total, as a JSON-ready dict."""
    if (similarity_file is None) == (pairs_file is None):
        raise PrunekitError("give exactly one of --similarity (a similarity.json) and --pairs "
                            "(a measured pair-performance table)")
    if similarity_file and lower_is_better:
        raise PrunekitError("--lower-is-better is for --pairs tables of losses; similarities "
                            "are higher for more alike tasks")
    if similarity_file:
        data = read_similarity(similarity_file)
        tasks = list(data["tasks"])
        try:
            pairwise = pairwise_from_similarity(data, metric, weighting)
        except PrunekitError as exc:
            raise PrunekitError(f"{similarity_file!r}: {exc}") from exc
        alone_scores = {task: alone for task in tasks}
        source = {"similarity": similarity_file, "metric": metric, "weighting": weighting,
                  "alone": alone}
    else:
        pairwise, alone_scores = load_pair_table(pairs_file)
        tasks = sorted({t for pair in pairwise for t in pair} | set(alone_scores))
        missing = [t for t in tasks if t not in alone_scores]
        if missing:
            raise PrunekitError(f"{pairs_file!r} has no score of {', '.join(missing)} trained "
                                "alone (a row with trained_with equal to the task)")
        if lower_is_better:
            pairwise = {pair: -score for pair, score in pairwise.items()}
            alone_scores = {task: -score for task, score in alone_scores.items()}
        source = {"pairs": pairs_file, "lower_is_better": lower_is_better}
    sign = -1.0 if (pairs_file and lower_is_better) else 1.0
    grouping = best_grouping(tasks, higher_order_networks(tasks, pairwise, alone_scores), budget)
    return {
        "source": source, "budget": budget, "tasks": tasks,
        "networks": [{"tasks": sorted(n.tasks), "cost": n.cost,
                      "scores": {t: sign * s for t, s in sorted(n.scores.items())}}
                     for n in grouping.networks],
        "task_scores": {t: sign * s for t, s in grouping.task_scores.items()},
        "total_score": sign * grouping.total_score, "total_cost": grouping.total_cost,
        "explored": grouping.explored,
    }


def format_grouping(result: dict) -> str:
    lines = [f"budget {result['budget']:g} networks; chosen {len(result['networks'])}, "
             f"cost {result['total_cost']:g}"]
    for number, network in enumerate(result["networks"], 1):
        scores = ", ".join(f"{t} {s:.4f}" for t, s in network["scores"].items())
        lines.append(f"  network {number}: {' + '.join(network['tasks'])}  ({scores})")
    lines.append("per task (best network covering it): "
                 + ", ".join(f"{t} {s:.4f}" for t, s in result["task_scores"].items()))
    lines.append(f"total score {result['total_score']:.4f}")
    return "\n".join(lines)
