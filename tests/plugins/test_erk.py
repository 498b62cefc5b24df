"""ERK keep counts and the ERK thresholder, against an independent real-valued allocation.

The reference solves ERK by bisection on the common scale s: layer i keeps
min(size_i, s * raw_i * size_i) elements, raw_i = (sum(shape_i) / prod(shape_i)) ** power, and s is
chosen so the kept total equals the target. That is the same allocation the plugin reaches by
iteratively making overflowing layers dense, but computed a different way.
"""
import math
import random

import pytest
import torch

from prunekit.registry import default_registry
from prunekit_plugins.erk import ERKThresholder, erk_keep_counts

EDGE_RATIOS = [0.0, 1e-6, 1e-3, 0.01, 0.1, 0.3, 0.5, 0.77, 0.9, 0.99, 0.999, 1.0]


def target_count(shapes, keep_ratio):
    total = sum(math.prod(shape) for shape in shapes)
    return min(total, max(0, round(keep_ratio * total)))


def erk_raw_density(shape, power):
    size = math.prod(shape)
    return (sum(shape) / size) ** power if size else 0.0


def erk_real_allocation(shapes, keep_ratio, power=1.0):
    """Real-valued ERK counts: min(size, s * raw * size) per layer, s found by bisection."""
    sizes = [math.prod(shape) for shape in shapes]
    raws = [erk_raw_density(shape, power) for shape in shapes]
    target = target_count(shapes, keep_ratio)

    def kept(scale):
        return sum(min(size, scale * raw * size) for size, raw in zip(sizes, raws))

    if target == 0:
        return [0.0] * len(shapes)
    low, high = 0.0, max(1.0 / raw for raw in raws if raw > 0)  # at high every layer is dense
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if kept(middle) < target else (low, middle)
    return [min(size, high * raw * size) for size, raw in zip(sizes, raws)]


def random_shape(rng):
    kind = rng.choice(["conv", "linear", "vector", "empty"])
    if kind == "conv":
        k = rng.choice([1, 3, 5])
        return (rng.randint(1, 32), rng.randint(1, 32), k, k)
    if kind == "linear":
        return (rng.randint(1, 64), rng.randint(1, 64))
    if kind == "vector":
        return (rng.randint(1, 50),)
    return (0, rng.randint(1, 8))  # a layer with no elements


def random_shape_lists(count, seed=0):
    rng = random.Random(seed)
    return [[random_shape(rng) for _ in range(rng.randint(1, 7))] for _ in range(count)]


def assert_is_erk(shapes, keep_ratio, power):
    counts = erk_keep_counts(shapes, keep_ratio, power)
    sizes = [math.prod(shape) for shape in shapes]
    where = f"shapes={shapes} keep={keep_ratio} power={power} counts={counts}"
    assert len(counts) == len(shapes), where
    assert all(isinstance(c, int) for c in counts), where
    assert sum(counts) == target_count(shapes, keep_ratio), where
    assert all(0 <= c <= size for c, size in zip(counts, sizes)), where
    # Rounding moves each layer by less than one element from the real-valued ERK allocation,
    # which is proportional to raw density for sparse layers and equal to the size for dense ones.
    for count, exact in zip(counts, erk_real_allocation(shapes, keep_ratio, power)):
        assert abs(count - exact) < 1 + 1e-6, f"{where} exact={exact}"


@pytest.mark.parametrize("power", [1.0, 0.5])
def test_random_shapes_keep_the_exact_total_in_erk_proportions(power):
    rng = random.Random(1)
    for shapes in random_shape_lists(300):
        for keep_ratio in EDGE_RATIOS + [rng.random() for _ in range(3)]:
            assert_is_erk(shapes, keep_ratio, power)


@pytest.mark.parametrize("power", [1.0, 0.5])
@pytest.mark.parametrize("shapes", [
    [(16, 8, 3, 3)],                      # a single layer
    [(37,)],                              # a single 1-D tensor
    [(37,), (16, 8, 3, 3), (10, 20)],     # a 1-D tensor among others
    [(0, 4), (16, 8, 3, 3), (0,)],        # empty layers among others
])
def test_edge_shapes(shapes, power):
    for keep_ratio in EDGE_RATIOS:
        assert_is_erk(shapes, keep_ratio, power)


def test_single_layer_keeps_the_rounded_fraction():
    for keep_ratio in EDGE_RATIOS:
        assert erk_keep_counts([(16, 8, 3, 3)], keep_ratio) == [round(keep_ratio * 1152)]


def test_empty_layers_keep_nothing():
    assert erk_keep_counts([], 0.5) == []
    assert erk_keep_counts([(0, 3)], 0.5) == [0]
    assert erk_keep_counts([(0, 3), (10, 10), (0,)], 0.5) == [0, 50, 0]


def test_extreme_ratios_keep_nothing_or_everything():
    shapes = [(8, 4, 3, 3), (10, 8), (7,)]
    assert erk_keep_counts(shapes, 0.0) == [0, 0, 0]
    assert erk_keep_counts(shapes, 1.0) == [288, 80, 7]


def test_hand_computed_example():
    # sizes 72, 288, 80: N = 440, target = round(0.3 * 440) = 132.
    # raw density sum(shape)/size: 12/72 = 1/6, 18/288 = 1/16, 18/80 = 9/40,
    # so raw * size = sum(shape) = 12, 18, 18, in all 48, and the scale is 132 / 48 = 2.75.
    # Densities 2.75/6 = 0.458, 2.75/16 = 0.172, 2.75*9/40 = 0.619: none exceeds 1.
    # Real counts 12*2.75 = 33, 18*2.75 = 49.5, 49.5; floors 33 + 49 + 49 = 131, one missing.
    # The two remainders of 0.5 tie; the lower index (the second layer) gets the extra element.
    assert erk_keep_counts([(4, 2, 3, 3), (8, 4, 3, 3), (10, 8)], 0.3) == [33, 50, 49]


def test_small_head_with_density_over_one_is_dense_and_the_rest_resolved():
    shapes = [(64, 32, 3, 3), (64, 64, 3, 3), (2, 64, 1, 1)]  # sizes 18432, 36864, 128
    # N = 55424, target 27712. sum(shape) = 102, 134, 68, so the first scale is 27712/304 = 91.2
    # and the head's density 91.2 * 68/128 = 48 > 1: the head is dense (128 kept). The convs share
    # the remaining 27584 in proportion 102 : 134, i.e. 11921.9 and 15662.1.
    assert erk_keep_counts(shapes, 0.5) == [11922, 15662, 128]
    assert_is_erk(shapes, 0.5, 1.0)


def test_layer_overflowing_only_after_others_go_dense_is_made_dense_too():
    shapes = [(1, 1)] * 4 + [(8, 8), (16, 16, 3, 3)]  # sizes 1, 1, 1, 1, 64, 2304; N = 2372
    # Target 240; sum(shape) = 2 each for the 1x1s, 16, 38: in all 62, scale 240/62 = 3.87.
    # The 1x1s (density 7.7) overflow; the 8x8 (density 3.87 * 16/64 = 0.97) does not yet.
    # Re-solved without the 1x1s: scale 236/54 = 4.37, the 8x8's density is 1.09: it goes dense
    # too, and the big conv gets everything else, 240 - 4 - 64 = 172 (not 236 * 38/54 = 166).
    assert erk_keep_counts(shapes, 240 / 2372) == [1, 1, 1, 1, 64, 172]


def test_power_half_flattens_the_allocation():
    # With power 0.5 the densities follow sqrt(sum/size): the small layer gets relatively less.
    shapes = [(64, 64, 3, 3), (16, 16, 3, 3)]
    full, half = erk_keep_counts(shapes, 0.2, 1.0), erk_keep_counts(shapes, 0.2, 0.5)
    assert sum(full) == sum(half)
    assert half[1] < full[1]
    assert_is_erk(shapes, 0.2, 0.5)


def sort_based_mask(scores, k):
    """Keep the k highest scores; ties go to the lower flat index."""
    flat = scores.reshape(-1).tolist()
    kept = sorted(range(len(flat)), key=lambda i: (-flat[i], i))[:k]
    mask = torch.zeros(len(flat), dtype=torch.bool)
    mask[kept] = True
    return mask.reshape(scores.shape)


def tied_scores(shapes, seed=0):
    """Scores from few distinct values, so many ties straddle each layer's threshold."""
    g = torch.Generator().manual_seed(seed)
    return {f"layer{i}.weight": torch.randint(0, 4, shape, generator=g).float()
            for i, shape in enumerate(shapes)}


@pytest.mark.parametrize("power", [1.0, 0.5])
@pytest.mark.parametrize("keep_ratio", [0.0, 0.05, 0.3, 0.5, 0.9, 1.0])
def test_thresholder_keeps_erk_counts_of_top_scores(keep_ratio, power):
    shapes = [(8, 4, 3, 3), (16, 8, 3, 3), (5, 16, 1, 1), (12,), (10, 8)]
    scores = tied_scores(shapes)
    masks = ERKThresholder(power).masks(scores, keep_ratio)
    counts = erk_keep_counts(shapes, keep_ratio, power)
    assert list(masks) == list(scores)
    for (name, score), count in zip(scores.items(), counts):
        assert masks[name].dtype == torch.bool and masks[name].shape == score.shape
        assert int(masks[name].sum()) == count, name
        assert torch.equal(masks[name], sort_based_mask(score, count)), name


def test_thresholder_accepts_its_layer_scope():
    scores = tied_scores([(8, 4, 3, 3), (10, 8)], seed=3)
    thresholder = ERKThresholder()
    assert thresholder.scopes == ("layer",)
    default = thresholder.masks(scores, 0.4)
    explicit = thresholder.masks(scores, 0.4, scope="layer")
    assert all(torch.equal(default[n], explicit[n]) for n in scores)


def test_registered_erk_thresholder_uses_power_one():
    erk = default_registry().get("thresholder", "erk")
    assert isinstance(erk, ERKThresholder)
    assert erk.scopes == ("layer",)
    scores = tied_scores([(8, 4, 3, 3), (16, 8, 3, 3), (3, 16)], seed=5)
    counts = erk_keep_counts([s.shape for s in scores.values()], 0.25, 1.0)
    masks = erk.masks(scores, 0.25)
    assert [int(m.sum()) for m in masks.values()] == counts


def test_equal_real_valued_counts_tie_to_the_lower_index():
    # both layers have sum(shape) = 27, so both get exactly 0.5 of an element at keep 1/232
    assert erk_keep_counts([(13, 14), (2, 25)], 1 / 232) == [1, 0]
