"""Task grouping (Standley et al.): the search against an exhaustive one on random instances
(costs 0.5 and 1, measured groups of every size, missing pairs and directions, budgets that cannot
cover every task), the higher-order estimate, the table loaders and the ``group`` command."""
import itertools
import json
import math
import random

import pytest

from helpers import invoke
from prunekit.errors import PrunekitError
from prunekit.analysis.grouping import (Network, best_grouping, brute_force_grouping,
                                        estimated_networks, higher_order_networks,
                                        networks_from_table)
from prunekit.analysis.grouping_tables import (load_authors_table, load_pair_table,
                                               pairwise_from_similarity)


def groups(grouping):
    return [sorted(n.trained) for n in grouping.networks]


def exhaustive(tasks, networks, budget):
    """(tasks covered, total) of the best subset of ``networks`` within ``budget``, by trying
    every subset: most tasks covered first, then the highest total. None if nothing fits."""
    best = None
    for size in range(1, len(networks) + 1):
        for chosen in itertools.combinations(networks, size):
            if sum(n.cost for n in chosen) > budget + 1e-9:
                continue
            scores = [max((n.scores[t] for n in chosen if t in n.scores), default=None)
                      for t in tasks]
            covered = [s for s in scores if s is not None]
            value = (len(covered), sum(covered))
            best = value if best is None or value > best else best
    return best


def check_valid(grouping, tasks, budget):
    """Within budget, its scores are what its networks give, and it leaves out exactly the
    tasks no chosen network scores."""
    assert grouping.total_cost <= budget + 1e-9
    assert grouping.total_cost == pytest.approx(sum(n.cost for n in grouping.networks))
    covered = set().union(*(n.tasks for n in grouping.networks))
    assert set(grouping.task_scores) == covered
    assert grouping.left_out == [t for t in tasks if t not in covered]
    for t in covered:
        assert grouping.task_scores[t] == max(n.scores[t] for n in grouping.networks
                                              if t in n.tasks)
    assert grouping.total_score == pytest.approx(sum(grouping.task_scores.values()))


def assert_optimal(tasks, networks, budget):
    """best_grouping and brute_force_grouping both reach the exhaustive optimum (or both say
    that nothing fits)."""
    expected = exhaustive(tasks, networks, budget)
    for search in (best_grouping, brute_force_grouping):
        if expected is None:
            with pytest.raises(PrunekitError, match="fits none of the candidate networks"):
                search(tasks, networks, budget)
            continue
        found = search(tasks, networks, budget)
        check_valid(found, tasks, budget)
        assert len(tasks) - len(found.left_out) == expected[0]
        assert found.total_score == pytest.approx(expected[1], abs=1e-9)


def random_score(rng, integer):
    """Small integers tie often; floats do not."""
    return rng.randint(-3, 3) if integer else round(rng.uniform(-2, 2), 3)


def random_networks(rng):
    """Networks for a random share of the groups of 2-4 tasks, full (1) or half size (0.5),
    sometimes both for one group, sometimes scoring only some of their tasks."""
    tasks = [f"t{i}" for i in range(rng.randint(2, 4))]
    integer = rng.random() < 0.5
    networks = []
    for size in range(1, len(tasks) + 1):
        for group in map(frozenset, itertools.combinations(tasks, size)):
            for cost in rng.sample([1.0, 0.5], rng.choice([0, 1, 1, 1, 2])):
                scored = rng.sample(sorted(group), rng.randint(1, size)) if rng.random() < 0.2 \
                    else sorted(group)
                networks.append(Network(frozenset(scored),
                                        {t: random_score(rng, integer) for t in scored},
                                        cost, trained=group))
    rng.shuffle(networks)
    return tasks, networks, rng.choice([0.5, 1, 1.5, 2, 2.5, 3, len(tasks)])


@pytest.mark.parametrize("seed", range(300))
def test_search_matches_exhaustive_search(seed):
    tasks, networks, budget = random_networks(random.Random(seed))
    assert_optimal(tasks, networks, budget)


def random_measurements(rng):
    """A measured table of 3-4 tasks: singles and pairs with gaps (a missing pair, one missing
    direction, a missing single), some larger groups measured; costs 0.5 and 1 (stated in the
    table or given by a cost rule)."""
    tasks = [f"t{i}" for i in range(rng.randint(3, 4))]
    table = {}
    for size in range(1, len(tasks) + 1):
        for group in map(frozenset, itertools.combinations(tasks, size)):
            if rng.random() < (0.85 if size <= 2 else 0.3):
                scores = {t: round(rng.uniform(0, 1), 3) for t in group
                          if size != 2 or rng.random() < 0.85}
                table[group, rng.choice([None, None, 0.5])] = scores
    half_size = {frozenset({t}) for t in tasks if rng.random() < 0.5}
    return tasks, table, (lambda group: 0.5 if group in half_size else 1.0)


def expected_estimate(table, group, task, cost_of):
    """The mean of task's measured scores with each other member (dearest pair network)."""
    values = []
    for other in sorted(group - {task}):
        measured = [(cost_of(g) if c is None else c, s[task]) for (g, c), s in table.items()
                    if g == {task, other} and task in s]
        if measured:
            values.append(max(measured)[1])
    return sum(values) / len(values) if values else None


@pytest.mark.parametrize("seed", range(150))
def test_measured_and_estimated_groups_match_exhaustive_search(seed):
    rng = random.Random(seed)
    tasks, table, cost_of = random_measurements(rng)
    measured = networks_from_table(table, cost_of)
    estimated = estimated_networks(tasks, measured, cost_of)
    measured_groups = {g for g, _ in table}
    for n in estimated:
        assert len(n.trained) >= 3 and n.trained not in measured_groups and n.estimated
        for t in n.trained:
            assert n.scores.get(t) == pytest.approx(expected_estimate(table, n.trained, t, cost_of))
    for budget in (0.5, 1, 1.5, 2, len(tasks)):
        assert_optimal(tasks, measured + estimated, budget)


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
    halves = higher_order_networks(tasks, pairwise, alone, lambda g: 0.5 if len(g) == 1 else 1)
    assert groups(search(tasks, halves, 1.5)) == [["a", "b"], ["c"]]
    assert groups(search(tasks, halves, 1)) == [["a", "b", "c"]]  # a + b + c alone costs 1.5


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


def test_a_budget_short_of_every_task_covers_the_most_it_can():
    tasks = ["a", "b", "c"]
    networks = [Network(frozenset({"a"}), {"a": 5.0}),
                Network(frozenset({"b"}), {"b": 1.0}, cost=1.5),
                Network(frozenset({"b", "c"}), {"b": 0.5, "c": 0.25}, cost=2.0)]
    one = best_grouping(tasks, networks, 1)
    assert groups(one) == [["a"]] and one.left_out == ["b", "c"]
    two = best_grouping(tasks, networks, 2)  # two tasks beat one, whatever their scores
    assert groups(two) == [["b", "c"]] and two.left_out == ["a"] and two.total_score == 0.75
    assert best_grouping(tasks, networks, 3).left_out == []
    assert best_grouping(tasks, networks[:2], 9).left_out == ["c"]  # no network scores c
    with pytest.raises(PrunekitError, match=r"budget of 0.5 networks fits none .*costs 1\)"):
        best_grouping(tasks, networks, 0.5)


def test_higher_order_estimate_averages_the_pairs_measured():
    pairwise = {("a", "b"): 1.0, ("a", "c"): 3.0, ("b", "a"): 2.0, ("b", "c"): 4.0,
                ("c", "a"): -1.0}  # ("c", "b") missing: the pair b + c scores only b
    networks = higher_order_networks(["a", "b", "c"], pairwise, {"a": 0.0, "b": 5.0})
    by_group = {"".join(sorted(n.trained)): dict(n.scores) for n in networks}
    assert set(by_group) == {"a", "b", "ab", "ac", "bc", "abc"}  # c alone: no score
    assert by_group["ab"] == {"a": 1.0, "b": 2.0} and by_group["bc"] == {"b": 4.0}
    assert by_group["abc"] == {"a": 2.0, "b": 3.0, "c": -1.0}  # c: its one measured pair
    assert [n.estimated for n in networks] == [False] * 5 + [True]
    only_ab = higher_order_networks(["a", "b", "c", "d"], {("a", "b"): 1.0}, {})
    assert {"".join(sorted(n.trained)): dict(n.scores) for n in only_ab} == {
        "ab": {"a": 1.0}, "abc": {"a": 1.0}, "abd": {"a": 1.0}, "abcd": {"a": 1.0}}


def test_errors():
    tasks, pairwise, alone = loner_tasks()
    singletons = [n for n in higher_order_networks(tasks, pairwise, alone) if len(n.tasks) == 1]
    for search in (best_grouping, brute_force_grouping):
        for budget in (0, -1, math.nan, math.inf, True):
            with pytest.raises(PrunekitError, match="budget must be"):
                search(tasks, singletons, budget)
        with pytest.raises(PrunekitError, match="tasks outside"):
            search(["a"], singletons, 3)
        with pytest.raises(PrunekitError, match="non-empty and unique"):
            search(["a", "a"], singletons, 3)
        with pytest.raises(PrunekitError, match=r"fits none .*\(none given\)"):
            search(tasks, [], 3)
    with pytest.raises(PrunekitError, match="each of its tasks, not for b: None"):
        Network(frozenset({"a", "b"}), {"a": 1.0})
    with pytest.raises(PrunekitError, match="must cost more than 0"):
        Network(frozenset({"a"}), {"a": 1.0}, cost=0)
    with pytest.raises(PrunekitError, match="not for a: nan"):
        Network(frozenset({"a"}), {"a": math.nan})
    with pytest.raises(PrunekitError, match="scores tasks it was not trained on"):
        Network(frozenset({"a"}), {"a": 1.0}, trained=frozenset({"b"}))


def test_eight_tasks_no_single_swap_does_better():
    """Eight tasks, 255 candidate networks (the single ones at half size): every budget's answer
    covers every task, and swapping any one chosen network for any candidate loses."""
    rng = random.Random(8)
    tasks = list("abcdefgh")
    pairwise = {(a, b): rng.uniform(0, 1) for a in tasks for b in tasks if a != b}
    networks = higher_order_networks(tasks, pairwise, {t: rng.uniform(0, 1) for t in tasks},
                                     lambda g: 0.5 if len(g) == 1 else 1.0)
    assert len(networks) == 255
    for budget in (1, 2.5, 4, 8):
        found = best_grouping(tasks, networks, budget)
        check_valid(found, tasks, budget)
        assert found.left_out == []
        # Any other selection within the budget scores no more: the best single swap.
        for n in networks:
            for i in range(len(found.networks)):
                other = found.networks[:i] + found.networks[i + 1:] + [n]
                if sum(m.cost for m in other) <= budget + 1e-9:
                    assert total_of(tasks, other) <= found.total_score + 1e-9


def total_of(tasks, networks):
    return sum(max((n.scores[t] for n in networks if t in n.tasks), default=-math.inf)
               for t in tasks)


# -- tables ------------------------------------------------------------------------------------

ROWS = [("seg", "seg", 0.5, ""), ("seg", "depth", 0.7, ""), ("depth", "", 0.4, "0.5"),
        ("depth", "seg", 0.2, ""), ("normal", "alone", 0.9, ""), ("normal", "seg", 0.1, ""),
        ("normal", "seg+depth", 0.3, ""), ("seg", "depth+normal", 0.6, "")]
EXPECTED = {(frozenset({"seg"}), None): {"seg": 0.5},
            (frozenset({"seg", "depth"}), None): {"seg": 0.7, "depth": 0.2},
            (frozenset({"depth"}), 0.5): {"depth": 0.4},
            (frozenset({"normal"}), None): {"normal": 0.9},
            (frozenset({"normal", "seg"}), None): {"normal": 0.1},
            (frozenset({"seg", "depth", "normal"}), None): {"normal": 0.3, "seg": 0.6}}


def write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_pair_table_json_and_csv(tmp_path):
    entries = [{"task": t, "trained_with": w, "score": s, **({"cost": float(c)} if c else {})}
               for t, w, s, c in ROWS]
    entries[-1]["trained_with"] = ["depth", "normal"]
    (tmp_path / "pairs.json").write_text(json.dumps(entries))
    assert load_pair_table(tmp_path / "pairs.json") == EXPECTED
    lines = ["task, trained_with, score, cost, note"]
    lines += [f"{t},{w},{s},{c},x" for t, w, s, c in ROWS]
    assert load_pair_table(str(write(tmp_path / "pairs.csv", lines))) == EXPECTED


@pytest.mark.parametrize("name, text, message", [
    ("bad.csv", "task,partner,score\nseg,seg,1\n", r"missing column\(s\) trained_with"),
    ("bad.csv", "task,trained_with,score\nseg,seg,1\nseg,depth,high\n",
     r"row 3: score 'high' is not a finite number"),
    ("bad.csv", "task,trained_with,score\nseg,depth,nan\n", "row 2: score 'nan'"),
    ("bad.csv", "task,trained_with,score\nseg,,1\nseg,alone,2\n",
     r"row 3: a second row for 'seg' trained with nothing else \(alone\)"),
    ("bad.csv", "task,trained_with,score\nseg,depth,1\nseg,depth,2\n",
     "row 3: a second row for 'seg' trained with 'depth'"),
    ("bad.csv", "task,trained_with,score,cost\nseg,depth,1,0.5\nseg,depth,2,0.5\n",
     "row 3: a second row for 'seg' trained with 'depth' at cost 0.5"),
    ("bad.csv", "task,trained_with,score,cost\nseg,depth,1,0\n", "row 2: cost '0' must be above 0"),
    ("bad.csv", "task,trained_with,score\nseg,depth+,1\n", "row 2: an empty task name"),
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


# An authors'-format results table of three tasks (losses): the half-size networks first, then
# each task alone, the pairs (b + c not measured) and the group of all three.
AUTHORS_VALIDATION = ["0.50\t0.60\t0.70", "0.40\t\t", "\t0.50\t", "\t\t0.60\t",
                      "0.30\t0.45\t", "0.35\t\t0.65", "0.45\t0.55\t0.66"]
AUTHORS_TEST = ["0.52\t0.61\t0.72", "0.41\t\t", "\t0.52\t", "\t\t0.61",
                "0.33\t0.44\t", "0.36\t\t0.62", "0.46\t0.56\t0.67"]


def test_load_authors_table(tmp_path):
    tasks, table = load_authors_table(write(tmp_path / "val.txt", AUTHORS_VALIDATION),
                                      ["s", "d", "n"])
    assert tasks == ["s", "d", "n"]
    assert table[frozenset("s"), 0.5] == {"s": 0.5} and table[frozenset("n"), 0.5] == {"n": 0.7}
    assert table[frozenset("d"), None] == {"d": 0.5}
    assert table[frozenset("sn"), None] == {"s": 0.35, "n": 0.65}
    assert table[frozenset("sdn"), None] == {"s": 0.45, "d": 0.55, "n": 0.66}
    assert len(table) == 9
    assert load_authors_table(tmp_path / "val.txt")[0] == ["task1", "task2", "task3"]


@pytest.mark.parametrize("lines, names, message", [
    ([], None, "no rows"),
    (["0.1\t0.2", "0.1\t0.2\t0.3"], None, "row 2: 3 cells, the first row has 2"),
    (["0.1\t0.2", "0.1\tx"], None, "row 2: cell 2 'x' is not a finite number"),
    (["0.1\t0.2", "0.1\t", "0.2\t"], None, "row 3: a second row for the network of task1"),
    (["0.1\t0.2"], ["a"], "2 columns need 2 different task names, got a"),
])
def test_load_authors_table_errors(tmp_path, lines, names, message):
    with pytest.raises(PrunekitError, match=message):
        load_authors_table(write(tmp_path / "bad.txt", lines), names)


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


# -- the command -------------------------------------------------------------------------------

def group(capsys, *args):
    """``prunekit group ARGS --json``: (exit code, parsed result or None, stderr)."""
    code, stdout, err = invoke(capsys, "group", *args, "--json")
    return code, (json.loads(stdout) if code == 0 else None), err


def chosen(result):
    return sorted((n["tasks"], n["cost"]) for n in result["networks"])


def pair_table(tmp_path, rows):
    return str(write(tmp_path / "pairs.csv", ["task,trained_with,score,cost"] + rows))


LOSSES = ["a,a,1.0,", "b,b,1.0,", "c,c,1.0,", "a,b,0.5,", "b,a,0.6,", "a,c,2.0,", "c,a,2.0,",
          "b,c,2.0,", "c,b,2.0,"]


def test_group_missing_direction_is_an_error_or_skipped(capsys, tmp_path):
    path = pair_table(tmp_path, [r for r in LOSSES if r != "b,a,0.6,"])
    code, _, err = group(capsys, "--pairs", path, "--lower-is-better", "--budget", "2")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "the network of a+b has no score for b" in err and "--missing-direction skip" in err
    code, result, err = group(capsys, "--pairs", path, "--lower-is-better", "--budget", "3",
                              "--missing-direction", "skip")
    assert code == 0, err  # a + b serves only a, so b trains alone too
    assert chosen(result) == [(["a", "b"], 1.0), (["b"], 1.0), (["c"], 1.0)]
    assert result["task_scores"] == {"a": 0.5, "b": 1.0, "c": 1.0}


def test_group_missing_pairs_warn_and_larger_groups_average_the_rest(capsys, tmp_path):
    path = pair_table(tmp_path, [r for r in LOSSES if r not in ("b,c,2.0,", "c,b,2.0,")])
    code, result, err = group(capsys, "--pairs", path, "--lower-is-better", "--budget", "1")
    assert code == 0, err
    assert "warning: no score for the pair(s) b+c" in err
    (network,) = result["networks"]
    assert network["tasks"] == ["a", "b", "c"] and network["estimated"]
    assert network["scores"] == pytest.approx({"a": 1.25, "b": 0.6, "c": 2.0})


def test_group_costs_and_a_budget_short_of_every_task(capsys, tmp_path):
    path = pair_table(tmp_path, LOSSES + ["c,c,1.5,0.5"])
    code, result, err = group(capsys, "--pairs", path, "--lower-is-better", "--budget", "1.5")
    assert code == 0, err  # the half-size c beside a + b
    assert chosen(result) == [(["a", "b"], 1.0), (["c"], 0.5)] and result["left_out"] == []
    code, result, err = group(capsys, "--pairs", path, "--lower-is-better", "--budget", "0.5")
    assert code == 0 and result["left_out"] == ["a", "b"]
    assert "cannot cover every task: left out a, b" in err
    code, stdout, _ = invoke(capsys, "group", "--pairs", path, "--lower-is-better",
                             "--budget", "0.5")
    assert "left out (the budget cannot cover them): a, b" in stdout
    code, result, _ = group(capsys, "--pairs", path, "--lower-is-better", "--budget", "1.5",
                            "--alone-cost", "0.5", "--cost", "a+b=1.5")
    assert code == 0 and result["total_cost"] == 1.5
    assert chosen(result) == [(["a"], 0.5), (["b"], 0.5), (["c"], 0.5)]


def test_group_measured_larger_groups_replace_the_estimate(capsys, tmp_path):
    path = pair_table(tmp_path, LOSSES + ["a,b+c,0.1,", "b,a+c,0.1,", "c,a+b,0.1,"])
    code, result, _ = group(capsys, "--pairs", path, "--lower-is-better", "--budget", "1")
    assert code == 0 and result["total_score"] == pytest.approx(0.3)
    assert not result["networks"][0]["estimated"]
    code, result, _ = group(capsys, "--pairs", path, "--lower-is-better", "--budget", "1",
                            "--estimate-groups")
    assert code == 0 and result["total_score"] == pytest.approx(1.25 + 1.3 + 2.0)
    assert result["networks"][0]["estimated"]


def test_group_reads_the_authors_table_and_reports_on_test(capsys, tmp_path):
    val = str(write(tmp_path / "val.txt", AUTHORS_VALIDATION))
    test = str(write(tmp_path / "test.txt", AUTHORS_TEST))
    args = ["--table", val, "--table-tasks", "s,d,n", "--lower-is-better", "--test", test]
    code, result, err = group(capsys, *args, "--budget", "1.5")
    assert code == 0, err
    assert "warning: no score for the pair(s) d+n" in err
    # s + d (0.30, 0.45) and n at half size (0.70): 1.45, against s + n and d at half size 1.6
    assert chosen(result) == [(["d", "s"], 1.0), (["n"], 0.5)]
    assert result["total_score"] == pytest.approx(1.45)
    assert result["test"]["task_scores"] == pytest.approx({"s": 0.33, "d": 0.44, "n": 0.72})
    assert result["test"]["total_score"] == pytest.approx(1.49)
    code, stdout, _ = invoke(capsys, "group", *args, "--budget", "1.5")
    assert "on the test table, each task in its chosen network: s 0.3300" in stdout


def test_group_test_scores_come_from_the_network_chosen_on_validation(capsys, tmp_path):
    rows = ["a,a,1,", "b,b,1,", "c,c,1,", "a,b,0.5,", "b,a,0.5,", "a,c,2,", "c,a,2,", "b,c,2,",
            "c,b,2,"]
    val = pair_table(tmp_path, rows + ["a,b+c,0.6,", "b,a+c,0.6,", "c,a+b,0.6,"])
    test = str(write(tmp_path / "test.csv", ["task,trained_with,score"] + rows
                     + ["a,b+c,0.1", "b,a+c,0.1", "c,a+b,0.6"]))
    code, result, _ = group(capsys, "--pairs", val, "--lower-is-better", "--test", test,
                            "--budget", "2")
    assert code == 0  # a + b serves a and b; a + b + c serves c
    assert chosen(result) == [(["a", "b"], 1.0), (["a", "b", "c"], 1.0)]
    assert result["test"]["task_scores"] == {"a": 0.5, "b": 0.5, "c": 0.6}
    best = result["test"]["best_of_chosen"]
    assert best["task_scores"] == {"a": 0.1, "b": 0.1, "c": 0.6}
    assert best["total_score"] == pytest.approx(0.8)
    assert result["networks"][0]["test_scores"] == {"c": 0.6}  # a + b + c, listed first


@pytest.mark.parametrize("args, message", [
    (["--pairs", "p.csv", "--table", "t.txt"], "give exactly one of --similarity"),
    (["--table", "t.txt", "--similarity", "s.json"], "give exactly one of --similarity"),
    (["--similarity", "s.json", "--test", "t.csv"], "--test reports the grouping"),
    (["--pairs", "p.csv", "--table-tasks", "a,b"], "--table-tasks names the columns"),
    (["--pairs", "PAIRS", "--cost", "a+b"], "--cost expects GROUP=COST"),
    (["--pairs", "PAIRS", "--cost", "a=-1"], "--cost expects GROUP=COST"),
    (["--pairs", "PAIRS", "--cost", "a+x=1"], "--cost a+x=1: no task x in the input"),
    (["--pairs", "PAIRS", "--cost", "a=1", "--cost", "a=2"], "gives the group a twice"),
    (["--pairs", "PAIRS", "--alone-cost", "0"], "--alone-cost must be above 0"),
    (["--pairs", "PAIRS", "--missing-direction", "mirror"], "'mirror' is not one of"),
    (["--pairs", "PAIRS", "--test", "missing.csv"], "cannot read pair table missing.csv"),
    (["--table", "missing.txt"], "cannot read results table missing.txt"),
])
def test_group_errors_are_one_line_and_exit_2(capsys, tmp_path, args, message):
    path = pair_table(tmp_path, LOSSES)
    args = [path if a == "PAIRS" else a for a in args]
    code, _, err = group(capsys, *args, "--budget", "2")
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
