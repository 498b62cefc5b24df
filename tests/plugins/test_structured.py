"""Filter-importance scorers (taylor, cosprune) against plain autograd on the tiny model."""
import itertools

import pytest
import torch

from prunekit import JOINT, ScoringContext
from prunekit.registry import default_registry
from prunekit.core.batch import check_loss
from prunekit_plugins.structured import pairwise_filter_cosine


def score(name, model, tasks, batches):
    layout = model.layout().resolve(model)
    context = ScoringContext(model, layout, tasks, batches, torch.device("cpu"), check_loss)
    return default_registry().get("scorer", name).score(context), layout


def gradients(model, loss_of, batches, names):
    """Per batch, the gradients of ``loss_of(outputs, batch)`` on the named tensors."""
    params = dict(model.named_parameters())
    model.train()
    for batch in batches:
        outputs = model(batch["image"])
        yield torch.autograd.grad(loss_of(outputs, batch), [params[n] for n in names])


def test_taylor_is_the_squared_filter_sum_of_w_times_grad(tiny_model, tasks, batches):
    saliency, layout = score("taylor", tiny_model, tasks, batches)
    names = list(layout.params)
    total_loss = lambda outputs, batch: sum(t.loss(outputs[k], batch[k]) for k, t in tasks.items())
    expected = {n: torch.zeros(layout.params[n].shape[0]) for n in names}
    for grads in gradients(tiny_model, total_loss, batches, names):
        for name, grad in zip(names, grads):
            weight = layout.params[name].detach()
            expected[name] += torch.stack([(weight[f] * grad[f]).sum() ** 2
                                           for f in range(weight.shape[0])])
    total = sum(t.sum() for t in expected.values())
    assert set(saliency) == {JOINT} and list(saliency[JOINT]) == names
    for name in names:
        assert saliency[JOINT][name].shape == (layout.params[name].shape[0],)
        torch.testing.assert_close(saliency[JOINT][name], expected[name] / total)


def test_cosprune_sums_pairwise_cosines_of_task_gradients_on_shared_filters(tiny_model, tasks,
                                                                            batches):
    saliency, layout = score("cosprune", tiny_model, tasks, batches)
    assert list(saliency[JOINT]) == layout.shared  # heads are not scored
    expected = {n: torch.zeros(layout.params[n].shape[0]) for n in layout.shared}
    per_task = {k: list(gradients(tiny_model, lambda o, b, k=k, t=t: t.loss(o[k], b[k]), batches,
                                  layout.shared))
                for k, t in tasks.items()}
    for b in range(len(batches)):
        for j, name in enumerate(layout.shared):
            for a, c in itertools.combinations(tasks, 2):
                ga, gc = per_task[a][b][j], per_task[c][b][j]
                expected[name] += torch.stack([
                    torch.dot(ga[f].flatten(), gc[f].flatten())
                    / (ga[f].norm() * gc[f].norm()).clamp_min(1e-8)
                    for f in range(ga.shape[0])])
    for name in layout.shared:
        torch.testing.assert_close(saliency[JOINT][name], expected[name], rtol=1e-4, atol=1e-5)


def test_pairwise_filter_cosine_on_hand_made_gradients():
    same = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    opposite = torch.tensor([[2.0, 0.0], [0.0, -1.0], [0.0, 0.0]])
    # filter 0 agrees (cos 1), filter 1 conflicts (cos -1), filter 2 has no gradient (0)
    assert pairwise_filter_cosine([same, opposite]).tolist() == [1.0, -1.0, 0.0]
    assert pairwise_filter_cosine([same, same, opposite]).tolist() == [3.0, -1.0, 0.0]


@pytest.mark.parametrize("name", ["taylor", "cosprune"])
def test_filter_scorers_are_refused_by_prunekit_run(name):
    from prunekit import PrunekitError
    from prunekit.pipeline.engine import Run
    from prunekit.pipeline.config import RunConfig
    from prunekit.core.batch import no_progress

    with pytest.raises(PrunekitError, match="scores whole filters"):
        Run(RunConfig(scorer=name), no_progress).check()
