"""Task-similarity metrics (iou, epi-sim, css, mcss) and the layer weightings that aggregate them."""
import math

import numpy as np
import pytest
import torch

from prunekit import Metric, PrunekitError
from prunekit.errors import UnknownNameError
from prunekit.analysis.layer_weighting import STEP_SKIP, WEIGHTINGS, layer_weights, weighted_mean
from prunekit.registry import default_registry

METRICS = ("iou", "epi-sim", "css", "mcss")
SALIENCY_METRICS = ("css", "mcss")


def metric(name):
    return default_registry().get("metric", name)


def bools(*values):
    return torch.tensor(values, dtype=torch.bool)


def floats(*values):
    return torch.tensor(values, dtype=torch.float32)


def score(name, mask_a, mask_b, sal_a, sal_b):
    return metric(name).layer_score(mask_a, mask_b, sal_a, sal_b)


# --- registration ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", METRICS)
def test_metrics_are_registered(name):
    info = default_registry().info("metric", name)
    assert isinstance(info.obj, Metric)
    assert info.obj.name == name and info.kind == "metric"
    assert info.distribution == "prunekit" and info.module == "overlap"
    assert info.description and "\n" not in info.description


def test_metric_names_are_listed():
    assert set(METRICS) <= set(default_registry().names("metric"))


# --- each metric against its formula on hand-made tensors -------------------------------------

def test_iou_by_hand():
    a = bools(1, 1, 0, 0, 1, 0)
    b = bools(1, 0, 1, 0, 0, 0)
    assert score("iou", a, b, None, None) == pytest.approx(1 / 4)  # 1 shared of 4 kept by either


def test_epi_sim_by_hand():
    a = bools(1, 1, 0, 0, 1, 0)  # n1 = 3
    b = bools(1, 0, 1, 0, 0, 0)  # n2 = 2
    assert score("epi-sim", a, b, None, None) == pytest.approx(1 - 1 / 5)
    # only the counts matter: disjoint masks of equal size are fully similar
    assert score("epi-sim", bools(1, 0), bools(0, 1), None, None) == 1.0
    assert score("epi-sim", bools(1, 1, 1, 0), bools(0, 0, 0, 1), None, None) == pytest.approx(0.5)
    assert score("epi-sim", bools(1, 1), bools(0, 0), None, None) == 0.0


def test_css_by_hand_on_a_2d_tensor():
    sal_a = floats(1, 2, 0, 2).reshape(2, 2)
    sal_b = floats(2, 1, 2, 0).reshape(2, 2)
    masks = torch.ones(2, 2, dtype=torch.bool)
    # dot = 2 + 2 = 4, |a| = sqrt(1 + 4 + 4) = 3, |b| = sqrt(4 + 1 + 4) = 3
    assert score("css", masks, masks, sal_a, sal_b) == pytest.approx(4 / 9)


def test_css_ignores_the_masks():
    sal_a, sal_b = floats(1, 2, 0, 2), floats(2, 1, 2, 0)
    assert score("css", bools(1, 0, 0, 0), bools(0, 0, 0, 1), sal_a, sal_b) == pytest.approx(4 / 9)


def test_mcss_by_hand():
    sal_a, sal_b = floats(1, 2, 0, 2), floats(2, 1, 2, 0)
    mask_a, mask_b = bools(1, 1, 0, 1), bools(1, 0, 1, 1)
    # B1*SAL1 = [1, 2, 0, 2], B2*SAL2 = [2, 0, 2, 0]: dot = 2, norms 3 and 2*sqrt(2)
    expected = 2 / (3 * 2 * math.sqrt(2))
    assert score("mcss", mask_a, mask_b, sal_a, sal_b) == pytest.approx(expected)


def test_negative_saliency_gives_negative_css():
    # dot = -2 - 2 = -4, both norms sqrt(5)
    assert score("css", None, None, floats(1, 2), floats(-2, -1)) == pytest.approx(-4 / 5)
    assert score("css", None, None, floats(1, -3), floats(-1, 3)) == pytest.approx(-1.0)
    masks = bools(1, 1)
    assert score("mcss", masks, masks, floats(1, 2), floats(-2, -1)) == pytest.approx(-4 / 5)


# --- random tensors against a plain numpy reference -------------------------------------------

def cosine_reference(a, b):
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("seed", range(5))
def test_random_tensors_match_a_reference(seed):
    g = torch.Generator().manual_seed(seed)
    shape = (4, 3, 3, 3)
    mask_a = torch.rand(shape, generator=g) < 0.4
    mask_b = torch.rand(shape, generator=g) < 0.6
    sal_a = torch.rand(shape, generator=g)
    sal_b = torch.randn(shape, generator=g)  # signed, as some scorers may produce
    a, b = mask_a.numpy(), mask_b.numpy()
    sa, sb = sal_a.numpy(), sal_b.numpy()

    assert score("iou", mask_a, mask_b, sal_a, sal_b) == pytest.approx((a & b).sum() / (a | b).sum())
    n1, n2 = a.sum(), b.sum()
    assert score("epi-sim", mask_a, mask_b, sal_a, sal_b) == pytest.approx(1 - abs(n1 - n2) / (n1 + n2))
    css = score("css", mask_a, mask_b, sal_a, sal_b)
    assert css == pytest.approx(cosine_reference(sa, sb), abs=1e-12)
    assert css == pytest.approx(float(torch.nn.functional.cosine_similarity(
        sal_a.flatten().double(), sal_b.flatten().double(), dim=0)), abs=1e-12)
    mcss = score("mcss", mask_a, mask_b, sal_a, sal_b)
    assert mcss == pytest.approx(cosine_reference(sa * a, sb * b), abs=1e-12)
    for value in (css, mcss):
        assert -1.0 <= value <= 1.0
    assert all(isinstance(score(m, mask_a, mask_b, sal_a, sal_b), float) for m in METRICS)


def test_cosines_are_stable_for_tiny_and_huge_saliency():
    g = torch.Generator().manual_seed(0)
    sal_a, sal_b = torch.rand(1000, generator=g), torch.rand(1000, generator=g)
    masks = torch.ones(1000, dtype=torch.bool)
    expected = cosine_reference(sal_a.numpy(), sal_b.numpy())
    for scale in (1e-30, 1e30):  # float32: squares would under- or overflow in float32
        assert score("css", masks, masks, sal_a * scale, sal_b * scale) == pytest.approx(expected)
    for scale in (1e-200, 1e200):  # float64: squares would under- or overflow in float64
        a, b = sal_a.double() * scale, sal_b.double() * scale
        assert score("css", masks, masks, a, b) == pytest.approx(expected)
        assert score("mcss", masks, masks, a, b) == pytest.approx(expected)


def test_css_is_scale_invariant_and_one_for_parallel_saliency():
    sal = torch.rand(50, generator=torch.Generator().manual_seed(1))
    assert score("css", None, None, sal, 3 * sal) == pytest.approx(1.0)


# --- edge cases ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", METRICS)
@pytest.mark.parametrize("shape", [(0,), (0, 3), (4, 0, 3, 3)])
def test_empty_layers_are_identical(name, shape):
    mask = torch.zeros(shape, dtype=torch.bool)
    sal = torch.zeros(shape)
    assert score(name, mask, mask, sal, sal) == 1.0


def test_identical_masks_and_saliency_give_one():
    g = torch.Generator().manual_seed(2)
    mask = torch.rand(6, 5, generator=g) < 0.5
    other = torch.rand(6, 5, generator=g) < 0.5
    sal = torch.rand(6, 5, generator=g)
    sal_other = torch.rand(6, 5, generator=g)
    assert score("iou", mask, mask, sal, sal_other) == 1.0
    assert score("epi-sim", mask, mask, sal, sal_other) == 1.0
    assert score("css", mask, other, sal, sal) == pytest.approx(1.0)
    assert score("mcss", mask, mask, sal, sal) == pytest.approx(1.0)


def test_disjoint_masks_give_zero_iou_and_mcss():
    mask_a, mask_b = bools(1, 1, 0, 0), bools(0, 0, 1, 1)
    sal = floats(0.1, 0.2, 0.3, 0.4)
    assert score("iou", mask_a, mask_b, sal, sal) == 0.0
    assert score("mcss", mask_a, mask_b, sal, sal) == 0.0
    assert score("css", mask_a, mask_b, sal, sal) == pytest.approx(1.0)  # css ignores masks


def test_masks_that_keep_nothing():
    nothing, some = bools(0, 0, 0), bools(1, 0, 1)
    sal = floats(1, 2, 3)
    assert score("iou", nothing, nothing, sal, sal) == 1.0
    assert score("epi-sim", nothing, nothing, sal, sal) == 1.0
    assert score("iou", nothing, some, sal, sal) == 0.0
    assert score("epi-sim", nothing, some, sal, sal) == 0.0
    assert score("mcss", nothing, nothing, sal, sal) == 1.0  # both masked vectors all zero
    assert score("mcss", nothing, some, sal, sal) == 0.0     # exactly one all zero


@pytest.mark.parametrize("name", SALIENCY_METRICS)
def test_all_zero_saliency(name):
    masks = bools(1, 1, 1)
    zero, some = floats(0, 0, 0), floats(0, 1, 2)
    assert score(name, masks, masks, zero, zero) == 1.0
    assert score(name, masks, masks, zero, some) == 0.0
    assert score(name, masks, masks, some, zero) == 0.0


@pytest.mark.parametrize("name", SALIENCY_METRICS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("which", ["a", "b"])
def test_non_finite_saliency_is_an_error(name, bad, which):
    masks = bools(1, 1, 1)
    good, broken = floats(1, 2, 3), floats(1, bad, 3)
    sal_a, sal_b = (broken, good) if which == "a" else (good, broken)
    with pytest.raises(PrunekitError, match=f"saliency_{which} has 1 non-finite") as error:
        score(name, masks, masks, sal_a, sal_b)
    assert name in str(error.value) and "\n" not in str(error.value)


def test_nan_saliency_outside_the_masks_is_still_an_error():
    with pytest.raises(PrunekitError, match="non-finite"):
        score("mcss", bools(1, 0), bools(1, 0), floats(1, math.nan), floats(1, 2))


@pytest.mark.parametrize("name", SALIENCY_METRICS)
def test_missing_saliency_is_an_error(name):
    with pytest.raises(PrunekitError, match="needs both tasks' saliency"):
        score(name, bools(1), bools(1), floats(1), None)


MASK, SAL = torch.ones(2, 3, dtype=torch.bool), torch.ones(2, 3)
SHAPE_MISMATCHES = {  # each metric checks the tensors it uses
    "iou": [(MASK, MASK.reshape(3, 2), SAL, SAL)],
    "epi-sim": [(MASK, MASK.reshape(6), SAL, SAL)],
    "css": [(MASK, MASK, SAL, SAL.reshape(6)), (MASK, MASK, SAL.reshape(3, 2), SAL)],
    "mcss": [(MASK, MASK.reshape(3, 2), SAL, SAL), (MASK, MASK, SAL, SAL.reshape(6)),
             (MASK.reshape(6), MASK.reshape(6), SAL, SAL)],
}


@pytest.mark.parametrize("name, case", [(name, case) for name, cases in SHAPE_MISMATCHES.items()
                                        for case in cases])
def test_shape_mismatch_is_an_error(name, case):
    with pytest.raises(PrunekitError, match="must have the same shape") as error:
        score(name, *case)
    assert name in str(error.value) and "\n" not in str(error.value)


def test_iou_ignores_saliency_as_before():
    a, b = bools(1, 1, 0, 0), bools(1, 0, 1, 0)
    assert score("iou", a, b, None, None) == 1 / 3  # exact: counted in integers
    assert score("epi-sim", a, b, None, None) == 1.0


# --- layer weightings ------------------------------------------------------------------------

def test_weighting_names():
    assert WEIGHTINGS == ("equal", "linear", "step", "sparsity")
    assert STEP_SKIP == 5


@pytest.mark.parametrize("count", [1, 2, 3, 6, 7, 13, 100])
def test_weights_sum_to_one(count):
    sparsities = torch.rand(count, generator=torch.Generator().manual_seed(count)).tolist()
    for weighting in WEIGHTINGS:
        if weighting == "step" and count <= STEP_SKIP:
            continue
        weights = layer_weights(weighting, count, sparsities)
        assert len(weights) == count
        assert all(isinstance(w, float) and w >= 0 for w in weights)
        assert math.fsum(weights) == pytest.approx(1.0, abs=1e-12)


def test_equal_weights():
    assert layer_weights("equal", 4) == [0.25] * 4
    assert layer_weights("equal", 1) == [1.0]


def test_linear_weights():
    assert layer_weights("linear", 1) == [1.0]
    assert layer_weights("linear", 2) == [0.0, 1.0]
    assert layer_weights("linear", 4) == pytest.approx([0, 1 / 6, 2 / 6, 3 / 6])
    weights = layer_weights("linear", 20)
    assert weights[0] == 0.0
    assert all(later > earlier for earlier, later in zip(weights, weights[1:]))
    assert weights == pytest.approx([i * weights[1] for i in range(20)])


def test_step_weights():
    assert layer_weights("step", 8) == pytest.approx([0] * 5 + [1 / 3] * 3)
    weights = layer_weights("step", 6)
    assert weights[:STEP_SKIP] == [0.0] * STEP_SKIP and weights[5] == 1.0
    for count in (1, 5):
        with pytest.raises(PrunekitError, match=f"step weighting skips the first 5 layers; this "
                                                f"model has only {count} shared layers"):
            layer_weights("step", count)


def test_sparsity_weights_are_proportional():
    assert layer_weights("sparsity", 2, [0.2, 0.6]) == pytest.approx([0.25, 0.75])
    assert layer_weights("sparsity", 3, [0.5, 0.25, 0.25]) == pytest.approx([0.5, 0.25, 0.25])
    assert layer_weights("sparsity", 3, [0.0, 1.0, 0.0]) == [0.0, 1.0, 0.0]
    sparsities = [0.1, 0.9, 0.45, 0.3]
    weights = layer_weights("sparsity", 4, sparsities)
    assert weights == pytest.approx([s / sum(sparsities) for s in sparsities])


def test_sparsity_weights_all_zero_fall_back_to_equal():
    assert layer_weights("sparsity", 4, [0.0] * 4) == [0.25] * 4


@pytest.mark.parametrize("sparsities, message", [
    (None, "needs the per-layer sparsities"),
    ([0.5, 0.5], "one sparsity per layer: 3 layers, 2 sparsities"),
    ([0.5, 0.5, 0.5, 0.5], "one sparsity per layer: 3 layers, 4 sparsities"),
    ([0.5, 1.5, 0.5], r"sparsity of layer 1 must lie in \[0, 1\], got 1.5"),
    ([-0.1, 0.5, 0.5], r"sparsity of layer 0 must lie in \[0, 1\]"),
    ([0.5, 0.5, math.nan], r"sparsity of layer 2 must lie in \[0, 1\], got nan"),
])
def test_sparsity_weighting_errors(sparsities, message):
    with pytest.raises(PrunekitError, match=message):
        layer_weights("sparsity", 3, sparsities)


def test_unknown_weighting():
    with pytest.raises(UnknownNameError) as error:
        layer_weights("lineer", 4)
    message = str(error.value)
    assert "unknown weighting 'lineer'; known: equal, linear, sparsity, step" in message
    assert "did you mean 'linear'?" in message


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("count", [0, -3])
def test_too_few_layers(weighting, count):
    with pytest.raises(PrunekitError, match="at least one layer"):
        layer_weights(weighting, count, [])


def test_weighted_mean():
    assert weighted_mean([1.0, 2.0, 3.0], [0.0, 1 / 3, 2 / 3]) == pytest.approx(8 / 3)
    assert weighted_mean([1.0, 2.0, 3.0], [0.0, 1.0, 2.0]) == pytest.approx(8 / 3)  # unnormalised
    scores = [0.2, 0.5, 0.9, 0.4]
    assert weighted_mean(scores, layer_weights("equal", 4)) == pytest.approx(sum(scores) / 4)
    assert weighted_mean([0.7], layer_weights("linear", 1)) == pytest.approx(0.7)


@pytest.mark.parametrize("scores, weights, message", [
    ([1.0, 2.0], [1.0], "one weight per score"),
    ([], [], "no scores"),
    ([1.0, 2.0], [1.0, -0.5], "non-negative"),
    ([1.0, 2.0], [0.0, 0.0], "sum to zero"),
    ([1.0, math.nan], [0.5, 0.5], "scores must be finite"),
])
def test_weighted_mean_errors(scores, weights, message):
    with pytest.raises(PrunekitError, match=message):
        weighted_mean(scores, weights)
