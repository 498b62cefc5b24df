"""Scorers against a plain-autograd reference: a mask variable m multiplying each weight."""
import pytest
import torch
from torch.func import functional_call

from prunekit import JOINT, ScoringContext
from prunekit.registry import default_registry
from prunekit.core.batch import check_loss


def context_for(model, tasks, batches):
    layout = model.layout().resolve(model)
    return ScoringContext(model, layout, tasks, batches, torch.device("cpu"), check_loss)


def reference_mask_gradients(model, tasks, batches, loss_of, names):
    """Sum over batches of |dL/dm| for masks m = 1 multiplying the named weights."""
    params = dict(model.named_parameters())
    totals = {n: torch.zeros_like(params[n]) for n in names}
    model.train()
    for batch in batches:
        masks = {n: torch.ones_like(params[n], requires_grad=True) for n in names}
        masked = {n: (p * masks[n] if n in masks else p) for n, p in params.items()}
        outputs = functional_call(model, masked, (batch["image"],))
        loss = loss_of(outputs, batch)
        grads = torch.autograd.grad(loss, [masks[n] for n in names])
        for n, g in zip(names, grads):
            totals[n] += g.abs()
    total = sum(t.sum() for t in totals.values())
    return {n: t / total for n, t in totals.items()}


def test_disparse_snip_matches_per_task_mask_gradients(tiny_model, tasks, batches):
    scorer = default_registry().get("scorer", "disparse-snip")
    saliency = scorer.score(context_for(tiny_model, tasks, batches))
    layout = tiny_model.layout().resolve(tiny_model)
    assert set(saliency) == set(tasks)
    for name, task in tasks.items():
        names = layout.task_params(name)
        expected = reference_mask_gradients(
            tiny_model, tasks, batches,
            lambda out, b, name=name, task=task: task.loss(out[name], b[name]), names)
        assert list(saliency[name]) == names
        for n in names:
            torch.testing.assert_close(saliency[name][n], expected[n], rtol=1e-4, atol=1e-9)
        assert sum(float(s.sum()) for s in saliency[name].values()) == pytest.approx(1.0, rel=1e-5)


def test_joint_snip_matches_summed_loss_mask_gradients(tiny_model, tasks, batches):
    scorer = default_registry().get("scorer", "snip")
    saliency = scorer.score(context_for(tiny_model, tasks, batches))
    names = list(tiny_model.layout().resolve(tiny_model).params)
    expected = reference_mask_gradients(
        tiny_model, tasks, batches,
        lambda out, b: sum(t.loss(out[n], b[n]) for n, t in tasks.items()), names)
    assert list(saliency) == [JOINT]
    for n in names:
        torch.testing.assert_close(saliency[JOINT][n], expected[n], rtol=1e-4, atol=1e-9)


def test_per_task_scoring_runs_one_forward_per_batch(tiny_model, tasks, batches):
    forwards = []
    tiny_model.trunk.register_forward_hook(lambda *args: forwards.append(1))
    default_registry().get("scorer", "disparse-snip").score(context_for(tiny_model, tasks, batches))
    assert len(forwards) == len(batches)


def test_scoring_leaves_model_state_unchanged(tiny_model, tasks, batches):
    tiny_model.eval()
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    default_registry().get("scorer", "disparse-snip").score(context_for(tiny_model, tasks, batches))
    assert not tiny_model.training
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in tiny_model.parameters())


def test_nan_loss_during_scoring_is_a_clear_error(tiny_model, tasks, batches):
    from prunekit.errors import NonFiniteLossError

    batches[1]["image"][0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="loss is nan during scoring"):
        default_registry().get("scorer", "disparse-snip").score(
            context_for(tiny_model, tasks, batches))
