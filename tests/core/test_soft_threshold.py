"""Learnable soft thresholds: formula, gradients, per-component sparsity, freezing, removal."""
import pytest
import torch

from prunekit.core.soft_threshold import SHARED, ComponentThresholds, soft_threshold


def test_forward_matches_the_formula_with_exact_zeros():
    weight = torch.tensor([-0.5, -0.1, 0.0, 0.05, 0.1, 0.3])
    theta = torch.logit(torch.tensor(0.1))  # threshold alpha = 0.1
    expected = torch.tensor([-0.4, 0.0, 0.0, 0.0, 0.0, 0.2])
    torch.testing.assert_close(soft_threshold(weight, theta), expected)


def test_gradients_match_the_analytic_subgradient():
    weight = torch.tensor([-0.5, -0.05, 0.02, 0.3], requires_grad=True)
    theta = torch.tensor(-2.0, requires_grad=True)
    upstream = torch.tensor([1.0, 2.0, 3.0, 4.0])
    (soft_threshold(weight, theta) * upstream).sum().backward()
    alpha = torch.sigmoid(theta.detach())
    kept = weight.detach().abs() > alpha
    # d/dw = 1 on kept weights, 0 on the thresholded ones
    torch.testing.assert_close(weight.grad, upstream * kept)
    # d/dtheta = -sign(w) * sigmoid'(theta) on kept weights
    slope = alpha * (1 - alpha)
    expected = -(torch.sign(weight.detach()) * kept * upstream).sum() * slope
    torch.testing.assert_close(theta.grad, expected)


@pytest.fixture
def thresholds(tiny_model):
    layout = tiny_model.layout().resolve(tiny_model)
    return ComponentThresholds(tiny_model, layout, theta_init=-30.0), layout


def test_one_threshold_per_component_in_the_model_parameters(thresholds, tiny_model):
    installed, layout = thresholds
    assert set(installed.thetas) == {SHARED, *layout.tasks}
    parameters = list(tiny_model.parameters())
    for theta in installed.thetas.values():
        assert sum(p is theta for p in parameters) == 1  # shared by its tensors, listed once


def test_model_uses_thresholded_weights(thresholds, tiny_model, batches):
    installed, layout = thresholds
    name = layout.shared[0]
    module = tiny_model.get_submodule(name.rpartition(".")[0])
    with torch.no_grad():
        installed.thetas[SHARED].fill_(torch.logit(torch.tensor(0.05)).item())
    dense = layout.params[name].detach()
    expected = torch.sign(dense) * torch.relu(dense.abs() - 0.05)
    torch.testing.assert_close(module.weight, expected)


def test_sparsity_per_component_and_overall(thresholds):
    installed, layout = thresholds
    assert installed.sparsity()["overall"] == 0.0  # sigmoid(-30) is about 1e-13
    alpha = 0.02
    with torch.no_grad():
        installed.thetas[SHARED].fill_(torch.logit(torch.tensor(alpha)).item())
    expected = sum(int((layout.params[n].abs() <= alpha).sum()) for n in layout.shared)
    sparsity = installed.sparsity()
    assert sparsity[SHARED] == pytest.approx(expected / layout.numel(layout.shared))
    assert sparsity["overall"] == pytest.approx(expected / layout.numel(layout.params))
    assert all(sparsity[task] == 0.0 for task in layout.tasks)


def test_thresholds_freeze_once_the_target_is_reached(thresholds):
    installed, _ = thresholds
    assert not installed.freeze_at(0.3)
    with torch.no_grad():
        for theta in installed.thetas.values():
            theta.fill_(5.0)  # threshold near 1: everything is pruned
    assert installed.freeze_at(0.3)
    assert all(not theta.requires_grad for theta in installed.thetas.values())
    with torch.no_grad():
        for theta in installed.thetas.values():
            theta.fill_(-30.0)
    assert installed.freeze_at(0.3)  # stays frozen: thresholds stop moving for good


def test_removal_bakes_the_sparse_weights_and_returns_their_masks(thresholds, tiny_model, batches):
    installed, layout = thresholds
    with torch.no_grad():
        installed.thetas[SHARED].fill_(torch.logit(torch.tensor(0.03)).item())
    image = batches[0]["image"]
    tiny_model.eval()
    before = tiny_model(image)
    masks = installed.remove()
    after = tiny_model(image)
    assert list(masks) == list(layout.params)
    for name in layout.params:
        assert (layout.params[name][~masks[name]] == 0).all()
    assert "parametrizations" not in "".join(n for n, _ in tiny_model.named_parameters())
    for task in before:
        torch.testing.assert_close(after[task], before[task])
