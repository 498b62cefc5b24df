"""Thresholding, arbitration and sparsity compensation."""
import pytest
import torch

from prunekit import JOINT, compute_masks
from prunekit.core.masks import density
from prunekit.models import build_model
from prunekit.ops import topk_mask_reference
from prunekit.core.pruning import prune
from prunekit.registry import default_registry

from conftest import make_batches, make_tasks


def plugin(kind, name):
    return default_registry().get(kind, name)


def random_saliency(layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {task: {n: torch.rand(layout.params[n].shape, generator=g)
                   for n in layout.task_params(task)} for task in layout.tasks}


@pytest.fixture
def layout(tiny_model):
    return tiny_model.layout().resolve(tiny_model)


def test_or_merges_shared_tensors_and_heads_keep_their_own_task_mask(layout):
    saliency = random_saliency(layout)
    result = prune(saliency, layout, plugin("thresholder", "topk"), plugin("arbiter", "or"), 0.6,
                   compensate=False)
    for name in layout.shared:
        union = torch.zeros_like(result.masks[name])
        for task in layout.tasks:
            union |= result.task_masks[task][name]
        assert torch.equal(result.masks[name], union)
    for task in layout.tasks:
        for name in layout.heads[task]:
            assert torch.equal(result.masks[name], result.task_masks[task][name])


def test_each_task_keeps_exactly_its_top_k_over_shared_and_own_head(layout):
    saliency = random_saliency(layout)
    result = prune(saliency, layout, plugin("thresholder", "topk"), plugin("arbiter", "or"), 0.7)
    for task in layout.tasks:
        names = layout.task_params(task)
        flat = torch.cat([saliency[task][n].reshape(-1) for n in names])
        k = round(result.keep_ratio * flat.numel())
        expected = topk_mask_reference(flat, k)
        got = torch.cat([result.task_masks[task][n].reshape(-1) for n in names])
        assert int(got.sum()) == k
        assert torch.equal(got, expected)


def test_ties_break_towards_the_lower_index_across_tensors(layout):
    saliency = {t: {n: torch.ones(layout.params[n].shape) for n in layout.task_params(t)}
                for t in layout.tasks}
    task = layout.tasks[0]
    masks = plugin("thresholder", "topk").masks(saliency[task], 0.5)
    flat = torch.cat([masks[n].reshape(-1) for n in layout.task_params(task)])
    k = round(0.5 * flat.numel())
    assert flat[:k].all() and not flat[k:].any()


def test_layer_scope_keeps_the_same_fraction_of_every_tensor(layout):
    from prunekit_plugins.topk import TopKThresholder

    scores = random_saliency(layout)[layout.tasks[0]]
    masks = TopKThresholder().masks(scores, 0.25, scope="layer")
    for name, mask in masks.items():
        assert int(mask.sum()) == round(0.25 * mask.numel())
        assert torch.equal(mask, topk_mask_reference(scores[name], int(mask.sum())))


def test_union_without_compensation_is_denser_than_asked(layout):
    result = prune(random_saliency(layout), layout, plugin("thresholder", "topk"),
                   plugin("arbiter", "or"), 0.8, compensate=False)
    assert result.achieved < 0.8 - 0.01
    assert result.keep_ratio == pytest.approx(0.2)


@pytest.mark.parametrize("arbiter", ["or", "and", "majority"])
def test_compensation_hits_the_requested_sparsity_for_every_arbiter(layout, arbiter):
    result = prune(random_saliency(layout), layout, plugin("thresholder", "topk"),
                   plugin("arbiter", arbiter), 0.75)
    assert abs(result.achieved - 0.75) <= 0.005
    assert result.achieved == pytest.approx(1 - density(result.masks))


def test_joint_saliency_needs_no_arbiter_and_is_exact(layout):
    g = torch.Generator().manual_seed(1)
    saliency = {JOINT: {n: torch.rand(p.shape, generator=g) for n, p in layout.params.items()}}
    result = prune(saliency, layout, plugin("thresholder", "topk"), None, 0.9)
    total = sum(p.numel() for p in layout.params.values())
    assert sum(int(m.sum()) for m in result.masks.values()) == round(0.1 * total)


@pytest.fixture(scope="module")
def deeplab_scoring():
    torch.manual_seed(0)
    tasks = make_tasks()
    model = build_model("deeplab-resnet34", {n: t.channels for n, t in tasks.items()}, 0.125)
    return model, model.layout().resolve(model), tasks, make_batches(2, 2, (32, 40))


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7, 0.9])
def test_disparse_snip_on_deeplab_achieves_requested_sparsity(deeplab_scoring, sparsity):
    model, layout, tasks, batches = deeplab_scoring
    result = compute_masks(model, layout, tasks, batches, "disparse-snip", "or", "topk", sparsity)
    assert abs(result.achieved - sparsity) <= 0.005
    assert set(result.masks) == set(layout.params)
    assert all(m.dtype == torch.bool and m.shape == layout.params[n].shape
               for n, m in result.masks.items())


def test_nan_saliency_is_a_clear_error(layout):
    from prunekit.errors import PrunekitError

    saliency = random_saliency(layout)
    saliency[layout.tasks[1]][layout.shared[0]][0] = float("nan")
    with pytest.raises(PrunekitError, match="not finite"):
        prune(saliency, layout, plugin("thresholder", "topk"), plugin("arbiter", "or"), 0.5)


def test_within_holds_for_scores_below_minus_one(layout):
    """Weights outside ``within`` rank last even when a scorer's scores are all very negative."""
    from prunekit_plugins.topk import TopKThresholder

    scores = {JOINT: {n: -1000.0 - torch.rand(p.shape) for n, p in layout.params.items()}}
    first = prune(scores, layout, TopKThresholder(), None, 0.5)
    second = prune(scores, layout, TopKThresholder(), None, 0.75, within=first.masks)
    assert abs(second.achieved - 0.75) <= 0.005
    assert all(not (second.masks[n] & ~first.masks[n]).any() for n in layout.params)


def test_thresholder_without_a_scope_argument_still_works(layout):
    from prunekit import Thresholder
    from prunekit_plugins.topk import TopKThresholder

    class OldStyle(Thresholder):
        name, description = "old-style", "written before scopes existed"

        def masks(self, scores, keep_ratio):
            return TopKThresholder().masks(scores, keep_ratio)

    scores = {JOINT: {n: torch.rand(p.shape) for n, p in layout.params.items()}}
    assert abs(prune(scores, layout, OldStyle(), None, 0.6).achieved - 0.6) <= 0.005
