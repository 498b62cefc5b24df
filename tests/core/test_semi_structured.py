"""N:M semi-structured masks (prunekit.core.semi_structured) against pure-torch references:
the reduction order, per-group top-N with ties, merging that keeps the pattern, gradual
rounds, drop-and-grow inside groups, and ``compute_masks(pattern=...)`` on the tiny model."""
import math
import zlib

import pytest
import torch
import torch.nn.functional as F

from prunekit import AppliedMasks, PrunekitError, compute_masks
from prunekit.core.pruning import prune_to_pattern
from prunekit.core.rigl import RigLSchedule, RigLUpdater
from prunekit.core.semi_structured import (Pattern, as_rows, coverage, holds, keep_pattern,
                                           kept_per_group, nm_mask, regrow_in_groups,
                                           round_keeps, uncovered_reason)
from prunekit.registry import default_registry

from conftest import make_batches

SHAPES = [(5, 8, 3, 3), (7, 12), (3, 4, 1, 1), (2, 16, 5, 1), (1, 4)]


def nm_reference(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Group by group in Python: the n highest, ties to the lower index."""
    rows = scores.reshape(scores.shape[0], -1)
    keep = torch.zeros_like(rows, dtype=torch.bool)
    for r in range(rows.shape[0]):
        for start in range(0, rows.shape[1], m):
            group = rows[r, start:start + m].tolist()
            order = sorted(range(m), key=lambda i: (-group[i], i))
            for i in order[:n]:
                keep[r, start + i] = True
    return keep.reshape(scores.shape)


def test_the_reduction_order_is_the_one_a_convolution_as_gemm_reads():
    """conv2d == weight rows (as_rows) times the unfolded input: a group of M consecutive
    columns of a row is M consecutive reduction elements of that GEMM."""
    torch.manual_seed(0)
    x, weight = torch.randn(2, 4, 6, 7), torch.randn(5, 4, 3, 3)
    columns = F.unfold(x, (3, 3), padding=1)                       # [2, 4*3*3, 6*7]
    gemm = (as_rows(weight) @ columns).reshape(2, 5, 6, 7)
    torch.testing.assert_close(gemm, F.conv2d(x, weight, padding=1))
    # a mask that keeps reduction columns 0..3 of row 0 keeps its first input channel's taps
    # (0,0), (0,1), (0,2), (1,0): the (in, kh, kw) order
    mask = torch.zeros(5, 36, dtype=torch.bool)
    mask[0, :4] = True
    assert mask.reshape(5, 4, 3, 3)[0, 0].flatten().tolist()[:4] == [True] * 4


COVERED_CASES = [(shape, n, m) for shape in SHAPES for n, m in [(2, 4), (1, 4), (3, 4), (1, 2)]
                 if math.prod(shape[1:]) % m == 0]  # coverage is tested on its own


@pytest.mark.parametrize("shape, n, m", COVERED_CASES)
@pytest.mark.parametrize("kind", ["random", "ties", "zeros", "negative", "neg-inf"])
def test_nm_mask_matches_the_reference(shape, n, m, kind):
    generator = torch.Generator().manual_seed(zlib.crc32(repr((shape, n, m, kind)).encode()))
    scores = torch.randn(shape, generator=generator)
    if kind == "ties":
        scores = torch.randint(0, 2, shape, generator=generator).float()
    elif kind == "zeros":
        scores = torch.zeros(shape)
    elif kind == "negative":
        scores = -scores.abs()
    elif kind == "neg-inf":
        scores[scores < 0] = -math.inf
    mask = nm_mask(scores, n, m)
    assert torch.equal(mask, nm_reference(scores, n, m))
    assert (kept_per_group(mask, m) == n).all()


def test_coverage_and_its_reasons():
    params = {"stem": torch.zeros(8, 3, 7, 7), "body": torch.zeros(8, 8, 3, 3),
              "bias": torch.zeros(8), "fc": torch.zeros(10, 6)}
    covered, reasons = coverage(params, 4)
    assert covered == ["body"]
    assert reasons == {"stem": "reduction length 147 is not a multiple of 4",
                       "bias": "not a matrix", "fc": "reduction length 6 is not a multiple of 4"}
    assert uncovered_reason((10, 6), 2) is None


@pytest.mark.parametrize("text", ["2-4", "4:2", "0:4", "2:2", "a:b", "", "2:4:8"])
def test_bad_patterns_are_refused(text):
    with pytest.raises(PrunekitError, match="--pattern"):
        Pattern.parse(text)


def test_pattern_parses_and_states_its_sparsity():
    assert Pattern.parse(" 2:4 ") == Pattern(2, 4) and str(Pattern(1, 8)) == "1:8"
    assert Pattern(2, 4).sparsity == 0.5


def test_keep_pattern_trims_by_priority_and_never_adds():
    candidates = torch.tensor([[True, True, True, False, True, False, False, False]])
    priority = torch.tensor([[0.1, 0.3, 0.2, 9.0, 1.0, 9.0, 9.0, 9.0]])
    kept = keep_pattern(candidates, priority, 2, 4)
    assert kept.tolist() == [[False, True, True, False, True, False, False, False]]


def test_round_keeps_go_from_m_down_to_n():
    assert round_keeps(Pattern(2, 4), 1) == [2]
    assert round_keeps(Pattern(2, 4), 2) == [3, 2]
    assert round_keeps(Pattern(2, 4), 3) == [3, 2, 2]
    assert round_keeps(Pattern(1, 8), 7) == [7, 6, 5, 4, 3, 2, 1]


@pytest.mark.parametrize("n, m", [(2, 4), (3, 4)])
def test_regrowing_inside_groups_keeps_each_groups_count(n, m):
    generator = torch.Generator().manual_seed(n)
    weight = torch.randn(6, 16, generator=generator)
    mask = nm_mask(weight.abs(), n, m)
    # drop the weakest active weight of every other group
    dropped = torch.zeros_like(mask)
    groups_dropped = 0
    for r in range(6):
        for g in range(0, 16, 2 * m):
            active = [i for i in range(g, g + m) if mask[r, i]]
            weakest = min(active, key=lambda i: abs(float(weight[r, i])))
            dropped[r, weakest] = True
            groups_dropped += 1
    scores = torch.rand(6, 16, generator=generator)
    grown = regrow_in_groups(scores, ~mask, dropped, m)
    updated = mask & ~dropped | grown
    assert (kept_per_group(updated, m) == n).all()
    assert int(grown.sum()) == groups_dropped
    fresh = grown & ~mask
    # each group grew its best fresh candidate (groups always have m - n >= 1 fresh ones)
    for r in range(6):
        for g in range(0, 16, m):
            need = int(dropped[r, g:g + m].sum())
            candidates = [i for i in range(g, g + m) if not mask[r, i]]
            best = sorted(candidates, key=lambda i: (-float(scores[r, i]), i))[:need]
            assert sorted(best) == [i for i in range(g, g + m) if fresh[r, i]]


def test_a_group_with_too_few_fresh_candidates_keeps_a_dropped_weight():
    mask = torch.tensor([[True, True, True, False]])
    dropped = torch.tensor([[True, True, False, False]])
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.2]])
    grown = regrow_in_groups(scores, ~mask, dropped, 4)
    assert grown.tolist() == [[True, False, False, True]]  # the fresh one, then the best dropped


def per_task_saliency(layout, tasks, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {task: {name: torch.rand(layout.params[name].shape, generator=generator)
                   for name in layout.task_params(task)} for task in tasks}


@pytest.mark.parametrize("arbiter", ["or", "and", "majority"])
@pytest.mark.parametrize("uncovered", ["dense", "unstructured"])
def test_merged_masks_keep_the_pattern(tiny_model, tasks, arbiter, uncovered):
    layout = tiny_model.layout().resolve(tiny_model)
    saliency = per_task_saliency(layout, tasks)
    pattern = Pattern(2, 4)
    result = prune_to_pattern(saliency, layout, default_registry().get("arbiter", arbiter),
                              pattern, uncovered=uncovered)
    covered, reasons = coverage(layout.params, 4)
    assert covered and reasons  # the tiny model has both
    for name in covered:
        assert holds(result.masks[name], 2, 4), name
        if name in layout.shared and arbiter == "and":  # the intersection keeps at most N
            for task in tasks:
                assert not (result.masks[name] & ~result.task_masks[task][name]).any()
        elif name in layout.shared:  # union and majority reach N in every group here
            assert (kept_per_group(result.masks[name], 4) <= 2).all()
        else:
            assert torch.equal(result.masks[name], result.task_masks[layout.owner(name)][name])
    for name in reasons:
        kept = int(result.masks[name].sum())
        half = round(result.masks[name].numel() / 2)
        if uncovered == "dense":
            assert kept == result.masks[name].numel(), name
        elif name not in layout.shared or arbiter == "or":  # a union has at least half
            assert kept == half, name
        else:  # the arbiter's merge, trimmed to half at most
            assert kept <= half, name


def test_the_union_keeps_the_tasks_most_salient_choices(tiny_model, tasks):
    """OR under N:M: of the union, the N with the highest saliency summed over the tasks that
    kept them, the saliency normalised per task."""
    layout = tiny_model.layout().resolve(tiny_model)
    saliency = per_task_saliency(layout, tasks, seed=3)
    result = prune_to_pattern(saliency, layout, default_registry().get("arbiter", "or"),
                              Pattern(2, 4))
    totals = {t: sum(float(s.sum()) for s in saliency[t].values()) for t in tasks}
    name = next(n for n in coverage(layout.params, 4)[0] if n in layout.shared)
    priority = sum(saliency[t][name] / totals[t] * result.task_masks[t][name] for t in tasks)
    union = torch.stack([result.task_masks[t][name] for t in tasks]).any(0)
    expected = nm_reference(priority.masked_fill(~union, -math.inf), 2, 4) & union
    assert torch.equal(result.masks[name], expected)


def test_compute_masks_with_a_pattern_on_the_tiny_model(tiny_model, tasks, batches):
    result = compute_masks(tiny_model, tiny_model.layout(), tasks, batches, pattern="2:4",
                           sparsity=0.9)  # the pattern sets the sparsity
    layout = tiny_model.layout().resolve(tiny_model)
    covered, _ = coverage(layout.params, 4)
    assert all(holds(result.masks[n], 2, 4) for n in covered)
    assert result.requested == 0.5
    with pytest.raises(PrunekitError, match="unknown policy"):
        compute_masks(tiny_model, tiny_model.layout(), tasks, batches, pattern="2:4",
                      uncovered="sparse")


def test_rigl_updates_keep_the_pattern(tiny_model, tasks):
    torch.manual_seed(0)
    layout = tiny_model.layout().resolve(tiny_model)
    pattern = Pattern(2, 4)
    masks = prune_to_pattern(per_task_saliency(layout, tasks), layout,
                             default_registry().get("arbiter", "or"), pattern).masks
    applied = AppliedMasks(tiny_model, masks)
    before = {n: m.clone() for n, m in applied.named_masks().items()}
    optimiser = torch.optim.Adam(tiny_model.parameters(), lr=1e-2)
    updater = RigLUpdater(tiny_model, layout, tasks, applied,
                          default_registry().get("scorer", "disparse-rigl"),
                          default_registry().get("arbiter", "or"),
                          RigLSchedule(1, end=10, alpha=0.5), pattern=pattern)
    updater.update(1, make_batches(1, seed=5)[0], optimiser)
    covered = coverage(layout.params, 4)[0]
    assert updater.regrown > 0
    for name, mask in applied.named_masks().items():
        assert int(mask.sum()) == int(before[name].sum()), name
        if name in covered:
            assert (kept_per_group(mask, 4) == kept_per_group(before[name], 4)).all(), name
    assert any(not torch.equal(before[n], applied.named_masks()[n]) for n in covered)
