"""Task grouping (Standley et al.): branch and bound against brute force, the higher-order
approximation, and the pair-table and similarity loaders."""
import itertools
import json
import math
import random

import pytest

from prunekit.errors import PrunekitError
from prunekit.analysis.grouping import (Network, best_grouping, brute_force_grouping, higher_order_networks,
                               load_pair_table, pairwise_from_similarity)


def groups(grouping):
    return [sorted(n.tasks) for n in grouping.networks]


def check_valid(grouping, tasks, budget):
    """Within budget, covers every task, and its scores are what its networks give."""
    assert grouping.total_cost <= budget + 1e-9
    assert grouping.total_cost == pytest.approx(sum(n.cost for n in grouping.networks))
    assert set().union(*(n.tasks for n in grouping.networks)) == set(tasks)
    for t in tasks:
        best = max(n.scores[t] for n in grouping.networks if t in n.tasks)
        assert grouping.task_scores[t] == best
    assert grouping.total_score == pytest.approx(sum(grouping.task_scores.values()))


def random_instance(rng):
    """All 2^K - 1 groups with random scores (ties, negatives), sometimes costed extras or gaps."""
    tasks = [f"t{i}" for i in range(rng.randint(2, 4))]
    integer = rng.random() < 0.5  # small integers tie often; floats do not
    score = (lambda: rng.randint(-3, 3)) if integer else (lambda: round(rng.uniform(-2, 2), 3))
    networks = [Network(frozenset(g), {t: score() for t in g})
                for size in range(1, len(tasks) + 1) for g in itertools.combinations(tasks, size)]
    if rng.random() < 0.3:
        for _ in range(rng.randint(1, 3)):
            group = rng.sample(tasks, rng.randint(1, len(tasks)))
            networks.append(Network(frozenset(group), {t: score() for t in group},
                                    cost=rng.choice([0.5, 1.0, 2.0])))
    if rng.random() < 0.15:  # gaps: some budgets then cannot cover every task
        networks = rng.sample(networks, rng.randint(1, len(networks)))
    rng.shuffle(networks)
    return tasks, networks, rng.choice([rng.randint(1, len(tasks)), rng.choice([0.5, 1.5, 2.5])])


@pytest.mark.parametrize("seed", range(300))
def test_branch_and_bound_matches_brute_force(seed):
    tasks, networks, budget = random_instance(random.Random(seed))
    try:
        expected = brute_force_grouping(tasks, networks, budget)
    except PrunekitError:
        with pytest.raises(PrunekitError, match="cannot cover"):
            best_grouping(tasks, networks, budget)
        return
    found = best_grouping(tasks, networks, budget)
    check_valid(expected, tasks, budget)
    check_valid(found, tasks, budget)
    assert found.total_score == pytest.approx(expected.total_score, abs=1e-9)
    assert found.explored >= 1 and expected.explored >= 1


def loner_tasks():
    """a and b help each other; c does best alone."""
    pairwise = {("a", "b"): 0.9, ("b", "a"): 0.9, ("a", "c"): 0.1, ("c", "a"): 0.1,
                ("b", "c"): 0.1, ("c", "b"): 0.1}
    return ["a", "b", "c"], pairwise, {"a": 0.5, "b": 0.5, "c": 0.8}


@pytest.mark.parametrize("search", [best_grouping, brute_force_grouping])
def test_two_friends_and_a_loner(search):
    tasks, pairwise, alone = loner_tasks()
    networks = higher_order_networks(tasks, pairwise, alone)
    for budget in (2, 3, 7):  # spare budget adds nothing: no task would gain
        grouping = search(tasks, networks, budget)
        assert groups(grouping) == [["a", "b"], ["c"]]
        assert grouping.task_scores == {"a": 0.9, "b": 0.9, "c": 0.8}
        assert grouping.total_score == pytest.approx(2.6) and grouping.total_cost == 2
    one = search(tasks, networks, 1)  # only the network of all three covers everything
    assert groups(one) == [["a", "b", "c"]]
    assert one.task_scores == pytest.approx({"a": 0.5, "b": 0.5, "c": 0.1})


def test_negated_losses_and_costs():
    tasks = ["seg", "depth"]
    networks = [Network(frozenset({"seg", "depth"}), {"seg": -1.0, "depth": -2.0}),
                Network(frozenset({"seg"}), {"seg": -0.5}, cost=0.5),
                Network(frozenset({"depth"}), {"depth": -1.0}, cost=2.0)]
    assert groups(best_grouping(tasks, networks, 1)) == [["depth", "seg"]]
    assert groups(best_grouping(tasks, networks, 1.5)) == [["depth", "seg"], ["seg"]]
    best = best_grouping(tasks, networks, 2.5)
    assert groups(best) == [["depth"], ["seg"]] and best.total_score == -1.5
    assert best.total_cost == 2.5


def test_higher_order_scores_by_hand():
    pairwise = {("a", "b"): 1.0, ("a", "c"): 3.0, ("b", "a"): 2.0, ("b", "c"): 4.0,
                ("c", "a"): -1.0}  # ("c", "b") missing: falls back to ("b", "c")
    networks = higher_order_networks(["a", "b", "c"], pairwise, {"a": 0.0, "b": 5.0, "c": 6.0})
    by_group = {"".join(sorted(n.tasks)): dict(n.scores) for n in networks}
    assert len(networks) == 7 and all(n.cost == 1.0 for n in networks)
    assert by_group["a"] == {"a": 0.0} and by_group["c"] == {"c": 6.0}
    assert by_group["ab"] == {"a": 1.0, "b": 2.0}
    assert by_group["bc"] == {"b": 4.0, "c": 4.0}
    assert by_group["abc"] == {"a": 2.0, "b": 3.0, "c": 1.5}
    with pytest.raises(PrunekitError, match="no pairwise score for 'a' trained with 'c'"):
        higher_order_networks(["a", "c"], {}, {"a": 0.0, "c": 0.0})
    with pytest.raises(PrunekitError, match="no score for 'c' trained alone"):
        higher_order_networks(["a", "c"], pairwise, {"a": 0.0})


def test_errors():
    tasks, pairwise, alone = loner_tasks()
    singletons = [n for n in higher_order_networks(tasks, pairwise, alone) if len(n.tasks) == 1]
    for search in (best_grouping, brute_force_grouping):
        with pytest.raises(PrunekitError, match=r"a budget of 2 networks cannot cover the 3 tasks"):
            search(tasks, singletons, 2)
        with pytest.raises(PrunekitError, match="cannot cover"):
            search(tasks, singletons[:2], 10)  # nothing contains c
        for budget in (0, -1, math.nan, math.inf, True):
            with pytest.raises(PrunekitError, match="budget must be"):
                search(tasks, singletons, budget)
        with pytest.raises(PrunekitError, match="tasks outside"):
            search(["a"], singletons, 3)
        with pytest.raises(PrunekitError, match="non-empty and unique"):
            search(["a", "a"], singletons, 3)
    with pytest.raises(PrunekitError, match="each of its tasks, not for b: None"):
        Network(frozenset({"a", "b"}), {"a": 1.0})
    with pytest.raises(PrunekitError, match="must cost more than 0"):
        Network(frozenset({"a"}), {"a": 1.0}, cost=0)
    with pytest.raises(PrunekitError, match="not for a: nan"):
        Network(frozenset({"a"}), {"a": math.nan})


ROWS = [("seg", "seg", 0.5), ("seg", "depth", 0.7), ("depth", "", 0.4), ("depth", "seg", 0.2),
        ("normal", "alone", 0.9), ("normal", "seg", 0.1)]
EXPECTED = ({("seg", "depth"): 0.7, ("depth", "seg"): 0.2, ("normal", "seg"): 0.1},
            {"seg": 0.5, "depth": 0.4, "normal": 0.9})


def write_csv(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_pair_table_json_and_csv(tmp_path):
    entries = [{"task": t, "trained_with": w, "score": s} for t, w, s in ROWS]
    (tmp_path / "pairs.json").write_text(json.dumps(entries))
    assert load_pair_table(tmp_path / "pairs.json") == EXPECTED
    lines = ["task, trained_with, score, note"] + [f"{t},{w},{s},x" for t, w, s in ROWS]
    assert load_pair_table(str(write_csv(tmp_path / "pairs.csv", lines))) == EXPECTED


def test_pair_table_to_grouping(tmp_path):
    tasks, pairwise, alone = loner_tasks()
    lines = ["task,trained_with,score"] + [f"{t},{w},{s}" for (t, w), s in pairwise.items()]
    path = write_csv(tmp_path / "pairs.txt", lines + [f"{t},alone,{s}" for t, s in alone.items()])
    networks = higher_order_networks(tasks, *load_pair_table(path))
    assert groups(best_grouping(tasks, networks, 2)) == [["a", "b"], ["c"]]


@pytest.mark.parametrize("name, text, message", [
    ("bad.csv", "task,partner,score\nseg,seg,1\n", r"missing column\(s\) trained_with"),
    ("bad.csv", "task,trained_with,score\nseg,seg,1\nseg,depth,high\n",
     r"row 3: score 'high' is not a finite number"),
    ("bad.csv", "task,trained_with,score\nseg,depth,nan\n", "row 2: score 'nan'"),
    ("bad.csv", "task,trained_with,score\nseg,,1\nseg,alone,2\n",
     r"row 3: a second row for 'seg' trained with nothing else \(alone\)"),
    ("bad.csv", "task,trained_with,score\nseg,depth,1\nseg,depth,2\n",
     "row 3: a second row for 'seg' trained with 'depth'"),
    ("bad.csv", "task,trained_with,score\nseg,depth\n", "row 2: needs a task and a score"),
    ("bad.csv", "task,trained_with,score\n", "no rows"),
    ("bad.csv", "task,trained_with,score\n ,seg,1\n", "row 2: empty task name"),
    ("bad.json", "[{\"task\": \"seg\", \"score\": 1}, {\"task\": \"seg\", \"score\": true}]",
     "row 2: score True"),
    ("bad.json", "{\"task\": \"seg\"}", "expected a JSON list"),
    ("bad.json", "[1, 2", "not valid JSON"),
])
def test_load_pair_table_errors(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(PrunekitError, match=message) as info:
        load_pair_table(tmp_path / name)
    assert str(tmp_path / name) in str(info.value) and "\n" not in str(info.value)


def test_load_pair_table_missing_file(tmp_path):
    with pytest.raises(PrunekitError, match="cannot read pair table .*nope.csv"):
        load_pair_table(tmp_path / "nope.csv")


def test_pairwise_from_similarity():
    data = {"tasks": ["seg", "depth", "normal"],
            "pairs": {"cosine": {"uniform": {"seg/depth": {"mean": 0.25, "std": 0.1},
                                             "seg/normal": {"mean": -0.5},
                                             "normal/depth": {"mean": 0.75}}}}}
    assert pairwise_from_similarity(data, "cosine", "uniform") == {
        ("seg", "depth"): 0.25, ("depth", "seg"): 0.25, ("seg", "normal"): -0.5,
        ("normal", "seg"): -0.5, ("depth", "normal"): 0.75, ("normal", "depth"): 0.75}
    with pytest.raises(PrunekitError, match="unknown similarity metric 'cos'; known: cosine"):
        pairwise_from_similarity(data, "cos", "uniform")
    with pytest.raises(PrunekitError, match="known: uniform"):
        pairwise_from_similarity(data, "cosine", "magnitude")
    data["pairs"]["cosine"]["uniform"]["seg/normal"] = {"mean": None}
    with pytest.raises(PrunekitError, match="no mean for seg/normal"):
        pairwise_from_similarity(data, "cosine", "uniform")
    with pytest.raises(PrunekitError, match="needs 'tasks' and 'pairs'"):
        pairwise_from_similarity({}, "cosine", "uniform")


def test_five_tasks_all_groups():
    """All 31 groups of 5 tasks: branch and bound solves every budget and agrees with brute force
    while visiting fewer nodes."""
    rng = random.Random(5)
    tasks = list("abcde")
    pairwise = {(a, b): rng.uniform(0, 1) for a in tasks for b in tasks if a != b}
    networks = higher_order_networks(tasks, pairwise, {t: rng.uniform(0, 1) for t in tasks})
    assert len(networks) == 31
    for budget in range(1, 6):
        found, expected = (search(tasks, networks, budget)
                           for search in (best_grouping, brute_force_grouping))
        check_valid(found, tasks, budget)
        assert found.total_score == pytest.approx(expected.total_score, abs=1e-12)
        assert found.explored < expected.explored
