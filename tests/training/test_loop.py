"""train()'s optimiser settings: the step schedule, weight decay, fixed task-loss weights."""
import copy

import pytest
import torch

from prunekit.training.loop import OptimiserSettings, train
from prunekit.training.task_weighting import (AdaptiveTaskWeights, combined_weights,
                                              fixed_task_weights)

from conftest import TinyMultiTaskNet, make_batches, make_tasks


def learning_rates(settings: OptimiserSettings, iterations: int, lr: float = 1.0) -> list:
    """The learning rate each step of a phase trains at."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimiser = torch.optim.Adam([parameter], lr=lr)
    schedule = settings.scheduler(optimiser, iterations)
    rates = []
    for _ in range(iterations):
        rates.append(optimiser.param_groups[0]["lr"])
        optimiser.step()
        schedule.step()
    return rates


def test_the_step_schedule_multiplies_the_rate_every_n_steps():
    rates = learning_rates(OptimiserSettings(lr_schedule="step", step_every=4000,
                                             step_factor=0.5), 12001, lr=1e-3)
    assert rates[0] == rates[3999] == 1e-3
    assert rates[4000] == rates[7999] == pytest.approx(5e-4, rel=1e-12)
    assert rates[8000] == pytest.approx(2.5e-4, rel=1e-12)
    assert rates[12000] == pytest.approx(1.25e-4, rel=1e-12)


def test_the_default_schedule_is_cosine_decay_over_the_phase():
    rates = learning_rates(OptimiserSettings(), 4)
    assert rates == pytest.approx([1.0, (1 + 2 ** -0.5) / 2, 0.5, (1 - 2 ** -0.5) / 2])


def trained(settings=OptimiserSettings(), steps=3, **options):
    """A tiny model after ``steps`` steps on fixed batches, from the same initial weights."""
    torch.manual_seed(0)
    model = TinyMultiTaskNet()
    train(model, make_tasks(), make_batches(count=steps), steps, 1e-2, None,
          torch.device("cpu"), settings=settings, **options)
    return model


def norm(model) -> float:
    return float(sum(p.detach().pow(2).sum() for n, p in model.named_parameters()
                     if n.endswith("weight")))


def test_weight_decay_shrinks_the_weights_compared_with_none():
    decayed, plain = trained(OptimiserSettings(weight_decay=1.0)), trained()
    assert norm(decayed) < norm(plain)


def test_extra_groups_keep_their_own_weight_decay():
    seen = []
    torch.manual_seed(0)
    model = TinyMultiTaskNet()
    extra = torch.nn.Parameter(torch.zeros(1))
    train(model, make_tasks(), make_batches(count=1), 1, 1e-2, None, torch.device("cpu"),
          extra_groups=[{"params": [extra], "lr": 0.1, "weight_decay": 0.1}],
          settings=OptimiserSettings(weight_decay=5e-4),
          after_step=lambda step, batch, optimiser: seen.extend(
              g["weight_decay"] for g in optimiser.param_groups))
    assert seen == [5e-4, 0.1]


def gradients_of_one_step(model, **options) -> dict:
    grads = {}

    def keep(step, batch, optimiser):  # the gradients the optimiser stepped on
        grads.update({n: p.grad.clone() for n, p in model.named_parameters()})
    train(model, make_tasks(("seg", "normal")), make_batches(count=1), 1, 1e-3, None,
          torch.device("cpu"), after_step=keep, **options)
    return grads


def test_fixed_task_weights_scale_each_loss_the_optimiser_sees():
    torch.manual_seed(0)
    model = TinyMultiTaskNet(("seg", "normal"))
    reference = copy.deepcopy(model).train()
    weights = fixed_task_weights(["seg=1", "normal=20"], ["seg", "normal"])
    grads = gradients_of_one_step(model, loss_weights=weights)

    (batch,) = make_batches(count=1)
    tasks = make_tasks(("seg", "normal"))
    outputs = reference(batch["image"])
    (tasks["seg"].loss(outputs["seg"], batch["seg"])
     + 20 * tasks["normal"].loss(outputs["normal"], batch["normal"])).backward()
    for name, parameter in reference.named_parameters():
        torch.testing.assert_close(grads[name], parameter.grad, rtol=1e-5, atol=1e-7)
    torch.manual_seed(0)
    unweighted = gradients_of_one_step(TinyMultiTaskNet(("seg", "normal")))
    assert not torch.allclose(unweighted["trunk.0.weight"], grads["trunk.0.weight"])


def test_fixed_weights_multiply_the_adaptive_ones():
    adaptive = AdaptiveTaskWeights(["seg", "normal"], window=2)
    adaptive.update({"seg": 1.0, "normal": 1.0})
    adaptive.update({"seg": 0.5, "normal": 0.9})
    fixed = {"normal": 20.0}
    expected = {t: fixed.get(t, 1.0) * w for t, w in adaptive.weights.items()}
    assert combined_weights(fixed, adaptive) == expected
    assert combined_weights(fixed, None) == fixed
    assert combined_weights({}, None) == {}


def test_fixed_task_weights_read_task_equals_weight():
    assert fixed_task_weights(["seg=1", " normal = 20"], ["seg", "normal"]) == {
        "seg": 1.0, "normal": 20.0}
    assert fixed_task_weights([], ["seg"]) == {}
