"""Gradflow, RigL, magnitude and random scorers against plain-autograd references on the tiny model.

The references run the model as it is (train mode, no copy), call ``loss.backward()`` once per
batch and combine the parameters' ``.grad`` by hand. Each formula test also checks that plausible
wrong formulas differ from the reference, so a match really pins the formula down.
"""
import pytest
import torch

from conftest import TinyMultiTaskNet
from prunekit import JOINT, ScoringContext
from prunekit.registry import default_registry
from prunekit.core.batch import check_loss

GRADIENT_SCORERS = ["gradflow", "disparse-gradflow", "rigl", "disparse-rigl"]


def scorer(name):
    return default_registry().get("scorer", name)


def context_for(model, tasks, batches, seed=0):
    layout = model.layout().resolve(model)
    return ScoringContext(model, layout, tasks, batches, torch.device("cpu"), check_loss, seed=seed)


def score(name, model, tasks, batches, seed=0):
    return scorer(name).score(context_for(model, tasks, batches, seed))


def joint_loss(tasks):
    return lambda outputs, batch: sum(t.loss(outputs[n], batch[n]) for n, t in tasks.items())


def task_loss(name, task):
    return lambda outputs, batch: task.loss(outputs[name], batch[name])


def gradients_per_batch(model, batches, loss_of, names):
    """[{name: dL/dw}] for each batch, from a plain loss.backward() in training mode."""
    params = dict(model.named_parameters())
    model.train()
    per_batch = []
    for batch in batches:
        model.zero_grad(set_to_none=True)
        loss_of(model(batch["image"]), batch).backward()
        per_batch.append({n: params[n].grad.detach().clone() for n in names})
    model.zero_grad(set_to_none=True)
    return per_batch


def sum_of_abs(per_batch):
    return {n: sum(grads[n].abs() for grads in per_batch) for n in per_batch[0]}


def abs_of_sum(per_batch):
    return {n: sum(grads[n] for grads in per_batch).abs() for n in per_batch[0]}


def normalised(scores):
    total = sum(s.sum() for s in scores.values())
    return {n: s / total for n, s in scores.items()}


def weights(model, names):
    params = dict(model.named_parameters())
    return {n: params[n].detach() for n in names}


def expected_gradflow(per_batch, w):
    return normalised({n: g * w[n].square() for n, g in sum_of_abs(per_batch).items()})


def expected_rigl(per_batch):
    return normalised(sum_of_abs(per_batch))


def assert_scores_close(actual, expected):
    assert list(actual) == list(expected)
    for n in expected:
        torch.testing.assert_close(actual[n], expected[n], rtol=1e-4, atol=1e-10, msg=n)


def assert_scores_differ(actual, wrong):
    """At least one tensor must differ: the reference tells this wrong formula apart."""
    assert not all(torch.allclose(actual[n], wrong[n], rtol=1e-3, atol=1e-10) for n in wrong)


def expected_entries(model, tasks, batches, per_task):
    """{entry: (per-batch gradients, tensor names)}: per task, or one joint entry."""
    layout = model.layout().resolve(model)
    if per_task:
        groups = {name: (task_loss(name, task), layout.task_params(name))
                  for name, task in tasks.items()}
    else:
        groups = {JOINT: (joint_loss(tasks), list(layout.params))}
    return {key: (gradients_per_batch(model, batches, loss_of, names), names)
            for key, (loss_of, names) in groups.items()}


def zero_some_weights(model, fraction=0.3):
    """Zero a random fraction of the 3x3 conv weights, as pruning would; return their masks.

    The heads' 1x1 output convs stay dense: with as few as one output channel, zeroing their
    weights would cut whole channels off, and the incoming weights of a cut channel truly have
    zero gradient. Random positions rather than a stride avoid cutting channels elsewhere.
    """
    g = torch.Generator().manual_seed(5)
    zeroed = {}
    with torch.no_grad():
        for n, p in model.layout().resolve(model).params.items():
            if p.shape[-1] == 3:
                zeroed[n] = torch.rand(p.shape, generator=g) < fraction
                p[zeroed[n]] = 0.0
    return zeroed


@pytest.mark.parametrize("name, per_task", [("gradflow", False), ("disparse-gradflow", True)])
def test_gradflow_is_normalised_sum_of_abs_gradient_times_squared_weight(
        name, per_task, tiny_model, tasks, batches):
    saliency = score(name, tiny_model, tasks, batches)
    entries = expected_entries(tiny_model, tasks, batches, per_task)
    assert list(saliency) == list(entries)
    for key, (per_batch, names) in entries.items():
        w = weights(tiny_model, names)
        assert_scores_close(saliency[key], expected_gradflow(per_batch, w))
        assert sum(float(s.sum()) for s in saliency[key].values()) == pytest.approx(1.0, rel=1e-5)
        # Wrong formulas that a match must exclude: |w| for w^2, |sum g| for sum |g|, no
        # normalisation.
        total = sum_of_abs(per_batch)
        assert_scores_differ(saliency[key], normalised({n: total[n] * w[n].abs() for n in names}))
        assert_scores_differ(saliency[key], normalised(
            {n: g * w[n].square() for n, g in abs_of_sum(per_batch).items()}))
        assert_scores_differ(saliency[key], {n: total[n] * w[n].square() for n in names})


@pytest.mark.parametrize("name, per_task", [("rigl", False), ("disparse-rigl", True)])
def test_rigl_is_normalised_sum_of_abs_gradient(name, per_task, tiny_model, tasks, batches):
    saliency = score(name, tiny_model, tasks, batches)
    entries = expected_entries(tiny_model, tasks, batches, per_task)
    assert list(saliency) == list(entries)
    for key, (per_batch, names) in entries.items():
        w = weights(tiny_model, names)
        assert_scores_close(saliency[key], expected_rigl(per_batch))
        total = sum_of_abs(per_batch)
        assert_scores_differ(saliency[key], normalised(abs_of_sum(per_batch)))
        assert_scores_differ(saliency[key], normalised({n: total[n] * w[n].abs() for n in names}))
        assert_scores_differ(saliency[key], total)


def test_per_task_entries_score_each_task_loss_not_the_sum(tiny_model, tasks, batches):
    # On the shared tensors a task's entry must come from its own loss: the joint gradient
    # differs, so scoring the summed loss for every task would fail this.
    per_task = score("disparse-rigl", tiny_model, tasks, batches)
    layout = tiny_model.layout().resolve(tiny_model)
    joint = gradients_per_batch(tiny_model, batches, joint_loss(tasks), layout.shared)
    joint_on_shared = sum_of_abs(joint)
    for name in tasks:
        shared_part = {n: per_task[name][n] for n in layout.shared}
        assert_scores_differ(normalised(shared_part), normalised(joint_on_shared))


@pytest.mark.parametrize("name, per_task", [("rigl", False), ("disparse-rigl", True)])
def test_rigl_scores_weights_that_are_exactly_zero(name, per_task, tiny_model, tasks, batches):
    # A grow score must rank pruned (zero) connections: the dense gradient still reaches them.
    zeroed = zero_some_weights(tiny_model)
    saliency = score(name, tiny_model, tasks, batches)
    for key, (per_batch, names) in expected_entries(tiny_model, tasks, batches, per_task).items():
        assert_scores_close(saliency[key], expected_rigl(per_batch))
        zeroed_names = [n for n in names if n in zeroed]
        at_zeros = torch.cat([saliency[key][n][zeroed[n]] for n in zeroed_names])
        # A few may be exactly zero where a ReLU is dead for every input; nearly all are not.
        assert float((at_zeros > 0).float().mean()) > 0.95, key
        for n in zeroed_names:
            assert (saliency[key][n][zeroed[n]] > 0).any(), f"{key}/{n}"


def test_gradflow_gives_zero_weights_zero_score(tiny_model, tasks, batches):
    # The contrast with rigl: w^2 removes pruned weights from gradflow's ranking.
    zeroed = zero_some_weights(tiny_model)
    saliency = score("gradflow", tiny_model, tasks, batches)[JOINT]
    for n, mask in zeroed.items():
        assert (saliency[n][mask] == 0).all(), n
        assert (saliency[n][~mask] > 0).any(), n


def test_magnitude_is_abs_weight_without_data(tiny_model, tasks):
    saliency = score("magnitude", tiny_model, tasks, [])
    params = tiny_model.layout().resolve(tiny_model).params
    assert list(saliency) == [JOINT]
    assert list(saliency[JOINT]) == list(params)
    for n, p in params.items():
        assert (p < 0).any(), "the check needs negative weights to tell |w| from w"
        assert saliency[JOINT][n].dtype == torch.float32
        assert not saliency[JOINT][n].requires_grad
        assert torch.equal(saliency[JOINT][n], p.detach().abs()), n


def test_random_scores_are_uniform_in_unit_interval(tiny_model, tasks):
    saliency = score("random", tiny_model, tasks, [], seed=3)
    params = tiny_model.layout().resolve(tiny_model).params
    assert list(saliency) == [JOINT]
    assert list(saliency[JOINT]) == list(params)
    values = torch.cat([s.reshape(-1) for s in saliency[JOINT].values()])
    assert all(saliency[JOINT][n].shape == p.shape for n, p in params.items())
    assert values.min() >= 0 and values.max() < 1
    assert 0.4 < float(values.mean()) < 0.6  # about 3000 draws: mean 0.5 +- 0.005
    # Same-shaped tensors get different draws, not one re-seeded draw each.
    assert not torch.equal(saliency[JOINT]["heads.seg.0.weight"],
                           saliency[JOINT]["heads.depth.0.weight"])


def test_random_scores_follow_the_seed_only(tiny_model, tasks):
    first = score("random", tiny_model, tasks, [], seed=7)[JOINT]
    again = score("random", tiny_model, tasks, [], seed=7)[JOINT]
    other_seed = score("random", tiny_model, tasks, [], seed=8)[JOINT]
    torch.manual_seed(123)
    other_weights = score("random", TinyMultiTaskNet(), tasks, [], seed=7)[JOINT]
    for n in first:
        assert torch.equal(first[n], again[n]), n
        assert not torch.equal(first[n], other_seed[n]), n
        assert torch.equal(first[n], other_weights[n]), n


def test_random_scores_leave_the_global_generator_alone(tiny_model, tasks):
    state = torch.get_rng_state()
    score("random", tiny_model, tasks, [], seed=7)
    assert torch.equal(torch.get_rng_state(), state)


def randomise_batchnorm_statistics(model):
    """Non-default running statistics, so restoring them is not the same as resetting them."""
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g))
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)
                module.num_batches_tracked.fill_(17)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("name", GRADIENT_SCORERS)
def test_scoring_restores_batchnorm_statistics_and_mode(name, training, tiny_model, tasks, batches):
    randomise_batchnorm_statistics(tiny_model)
    tiny_model.train(training)
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    modes_seen = []
    tiny_model.trunk[1].register_forward_hook(lambda module, *_: modes_seen.append(module.training))

    score(name, tiny_model, tasks, batches)

    assert modes_seen == [True] * len(batches)  # scoring runs in training mode
    assert all(m.training == training for m in tiny_model.modules())
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in tiny_model.parameters())


@pytest.mark.parametrize("name, per_task, needs_data, needs_trained, grows", [
    ("gradflow", False, True, True, False),
    ("disparse-gradflow", True, True, True, False),
    ("rigl", False, True, False, True),
    ("disparse-rigl", True, True, False, True),
    ("snip", False, True, False, False),
    ("disparse-snip", True, True, False, False),
])
def test_gradient_scorer_flags(name, per_task, needs_data, needs_trained, grows):
    s = scorer(name)
    assert (s.per_task, s.needs_data, s.needs_trained, s.grows) == (
        per_task, needs_data, needs_trained, grows)
    assert s.granularity == "element"


@pytest.mark.parametrize("name", ["magnitude", "random"])
def test_data_free_scorer_flags(name):
    s = scorer(name)
    assert s.needs_data is False
    assert s.per_task is False
    assert s.grows is False


def test_scoring_keeps_each_modules_own_mode(tiny_model, tasks, batches):
    """A model training with frozen BatchNorm stays so after scoring."""
    frozen = next(m for m in tiny_model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    tiny_model.train()
    frozen.eval()
    scorer = default_registry().get("scorer", "rigl")
    scorer.score(ScoringContext(tiny_model, tiny_model.layout().resolve(tiny_model), tasks,
                                batches, torch.device("cpu"), check_loss))
    assert tiny_model.training and not frozen.training
