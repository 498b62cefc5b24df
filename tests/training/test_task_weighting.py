"""Adaptive task weights: warm-up, inverse-fluctuation formula, scales, sliding window, guards.

Expected values are worked out by hand from the formula in prunekit/task_weighting.py:
r(i) = |L(i-1) - L(i)| / L(i), m = mean r over the window,
w_t = T * (s_t / m_t) / sum_k (s_k / m_k).
"""
import math
import random

import pytest

from prunekit.training.task_weighting import AdaptiveTaskWeights, fluctuation


def feed(weighting, steps):
    """Update with one dict per step; return the weights after each step."""
    return [weighting.update(step) for step in steps]


def test_fluctuation_matches_a_hand_computation():
    # |2 - 1| / 1 = 1 and |1 - 1.5| / 1.5 = 1/3, mean 2/3
    assert fluctuation([2.0, 1.0, 1.5]) == pytest.approx(2 / 3)
    assert fluctuation((4.0, 4.4, 4.0)) == pytest.approx((0.4 / 4.4 + 0.4 / 4.0) / 2)
    assert fluctuation([3.0, 3.0, 3.0]) == 0.0


def test_weights_are_one_during_warm_up():
    weighting = AdaptiveTaskWeights(["a", "b"], window=3, start=2)
    assert weighting.weights == {"a": 1.0, "b": 1.0}
    assert weighting.update({"a": 1.0, "b": 4.0}) == {"a": 1.0, "b": 1.0}
    assert weighting.weights == {"a": 1.0, "b": 1.0}
    after_two = weighting.update({"a": 2.0, "b": 4.4})
    assert after_two != {"a": 1.0, "b": 1.0}


def test_the_task_that_fluctuates_more_gets_the_smaller_weight_by_the_formula():
    weighting = AdaptiveTaskWeights(["a", "b"], window=3, start=2)
    steps = [{"a": 1.0, "b": 4.0}, {"a": 2.0, "b": 4.4}, {"a": 1.0, "b": 4.0}]
    weights = feed(weighting, steps)[-1]
    # m_a = (1/2 + 1/1) / 2 = 3/4;  m_b = (0.4/4.4 + 0.4/4) / 2 = (1/11 + 1/10) / 2 = 21/220
    # u_a = 4/3 = 28/21, u_b = 220/21, sum 248/21
    # w_a = 2 * 28/248 = 7/31, w_b = 2 * 220/248 = 55/31
    assert weights["a"] == pytest.approx(7 / 31)
    assert weights["b"] == pytest.approx(55 / 31)
    assert sum(weights.values()) == pytest.approx(2.0)
    assert weighting.weights == weights


def test_weights_sum_to_the_number_of_tasks_at_every_step():
    rng = random.Random(0)
    tasks = ["seg", "depth", "normal"]
    weighting = AdaptiveTaskWeights(tasks, window=10, start=2)
    for step in range(60):
        weights = weighting.update({t: rng.uniform(0.1, 5.0) for t in tasks})
        if step >= 1:
            assert sum(weights.values()) == pytest.approx(3.0)
            assert all(w > 0 for w in weights.values())


def test_scales_multiply_the_inverse_fluctuation():
    # equal fluctuation everywhere: weights follow the scales, 3 * (2, 1, 0.5) / 3.5
    weighting = AdaptiveTaskWeights(["a", "b", "c"], window=4, scales={"a": 2.0, "c": 0.5}, start=2)
    weights = feed(weighting, [{t: 1.0 for t in "abc"}, {t: 2.0 for t in "abc"}])[-1]
    assert weights == pytest.approx({"a": 12 / 7, "b": 6 / 7, "c": 3 / 7})

    # m_a = |1 - 2| / 2 = 0.5, m_b = |1 - 1.25| / 1.25 = 0.2; u_a = 3 / 0.5 = 6, u_b = 1 / 0.2 = 5
    weighting = AdaptiveTaskWeights(["a", "b"], window=4, scales={"a": 3.0}, start=2)
    weights = feed(weighting, [{"a": 1.0, "b": 1.0}, {"a": 2.0, "b": 1.25}])[-1]
    assert weights == pytest.approx({"a": 12 / 11, "b": 10 / 11})


def test_the_window_forgets_a_spike_older_than_window_steps():
    pattern = [1.0, 2.0] * 5
    spiked = list(pattern)
    spiked[1] = 10.0
    weighting = AdaptiveTaskWeights(["a", "b"], window=4, start=2)
    history = feed(weighting, [{"a": x, "b": y} for x, y in zip(spiked, pattern)])
    # after step i the window holds steps i-3..i: the spike (step 1) is in it up to step 4
    for step in range(1, 5):
        assert history[step]["a"] < 1.0 < history[step]["b"]
    for step in range(5, len(pattern)):
        assert history[step] == pytest.approx({"a": 1.0, "b": 1.0})


def test_constant_losses_give_equal_weights():
    weighting = AdaptiveTaskWeights(["a", "b", "c"], window=5, start=2)
    for _ in range(7):
        weights = weighting.update({"a": 0.5, "b": 3.0, "c": 7.0})
    assert weights == pytest.approx({"a": 1.0, "b": 1.0, "c": 1.0})


def test_zero_losses_and_zero_fluctuation_do_not_divide_by_zero():
    weighting = AdaptiveTaskWeights(["flat", "zero", "moving"], window=3, start=2)
    weights = feed(weighting, [{"flat": 2.0, "zero": 0.0, "moving": 1.0},
                               {"flat": 2.0, "zero": 0.0, "moving": 2.0}])[-1]
    # zero fluctuation is floored at EPS, so the two flat tasks share almost all of T = 3
    assert weights["flat"] == pytest.approx(1.5) and weights["zero"] == pytest.approx(1.5)
    assert 0.0 < weights["moving"] < 1e-9
    assert fluctuation([1.0, 0.0]) > 1e9 and math.isfinite(fluctuation([1.0, 0.0]))
    weights = weighting.update({"flat": 2.0, "zero": 1.0, "moving": 0.0})  # losses reaching zero
    assert all(math.isfinite(w) for w in weights.values())
    assert sum(weights.values()) == pytest.approx(3.0)


def test_by_default_weights_adapt_once_the_window_is_full():
    weighting = AdaptiveTaskWeights(["a", "b"], window=3)
    history = feed(weighting, [{"a": 1.0, "b": 4.0}, {"a": 2.0, "b": 4.4}, {"a": 1.0, "b": 4.0}])
    assert history[:2] == [{"a": 1.0, "b": 1.0}] * 2
    assert history[2] == pytest.approx({"a": 7 / 31, "b": 55 / 31})


@pytest.mark.parametrize("start", [1, 5, 0])
def test_start_must_lie_between_two_and_the_window(start):
    with pytest.raises(ValueError):
        AdaptiveTaskWeights(["a", "b"], window=4, start=start)


def test_single_task_weight_stays_one_and_default_window_is_400():
    weighting = AdaptiveTaskWeights(["only"])
    assert weighting.window == 400
    assert feed(weighting, [{"only": 1.0}, {"only": 3.0}, {"only": 2.0}])[-1] == {"only": 1.0}


@pytest.mark.parametrize("window", [1, 0, -3, 2.5, True])
def test_invalid_window_raises(window):
    with pytest.raises(ValueError):
        AdaptiveTaskWeights(["a", "b"], window=window)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_loss_raises_and_leaves_the_state_unchanged(bad):
    weighting = AdaptiveTaskWeights(["a", "b"], window=3, start=2)
    feed(weighting, [{"a": 1.0, "b": 4.0}, {"a": 2.0, "b": 4.4}])
    before = weighting.weights
    with pytest.raises(ValueError):
        weighting.update({"a": 1.0, "b": bad})
    assert weighting.weights == before
    # the rejected step was not recorded: this gives the hand-computed 7/31, 55/31 above
    assert weighting.update({"a": 1.0, "b": 4.0}) == pytest.approx({"a": 7 / 31, "b": 55 / 31})
    with pytest.raises(ValueError):
        fluctuation([1.0, bad])


def test_other_invalid_arguments_raise():
    with pytest.raises(ValueError):
        fluctuation([1.0])
    with pytest.raises(ValueError):
        AdaptiveTaskWeights([])
    with pytest.raises(ValueError):
        AdaptiveTaskWeights(["a", "a"])
    with pytest.raises(ValueError):
        AdaptiveTaskWeights(["a"], scales={"b": 1.0})
    with pytest.raises(ValueError):
        AdaptiveTaskWeights(["a"], scales={"a": 0.0})
    weighting = AdaptiveTaskWeights(["a", "b"])
    with pytest.raises(ValueError):
        weighting.update({"a": 1.0})
    with pytest.raises(ValueError):
        weighting.update({"a": 1.0, "b": 1.0, "c": 1.0})


def test_returned_weights_are_copies():
    weighting = AdaptiveTaskWeights(["a", "b"], window=3, start=2)
    returned = weighting.update({"a": 1.0, "b": 2.0})
    returned["a"] = 99.0
    weighting.weights["b"] = 99.0
    assert weighting.weights == {"a": 1.0, "b": 1.0}
