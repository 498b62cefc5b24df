"""Applying masks and keeping pruned weights at zero through training."""
import pytest
import torch
from torch.utils.data import DataLoader

from prunekit import AppliedMasks, sparsity_summary
from prunekit.core.masks import dense_masks
from prunekit.training.loop import train

from conftest import make_batches


def random_masks(layout, keep=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) < keep for n, p in layout.params.items()}


def test_pruned_weights_stay_exactly_zero_through_training(tiny_model, tasks):
    layout = tiny_model.layout().resolve(tiny_model)
    masks = random_masks(layout)
    before = {n: p.detach().clone() for n, p in layout.params.items()}
    applied = AppliedMasks(tiny_model, masks)
    samples = [{k: v[i] for k, v in b.items()} for b in make_batches(4) for i in range(2)]
    history = train(tiny_model, tasks, DataLoader(samples, batch_size=2), 6, 1e-2, applied,
                    torch.device("cpu"))
    assert len(history) == 6
    for name, param in layout.params.items():
        assert (param[~masks[name]] == 0).all(), name
        assert not torch.equal(param[masks[name]], before[name][masks[name]]), name


def test_all_ones_mask_changes_nothing(tiny_model, batches):
    layout = tiny_model.layout().resolve(tiny_model)
    tiny_model.eval()
    ids = {n: id(p) for n, p in tiny_model.named_parameters()}
    expected = tiny_model(batches[0]["image"])
    AppliedMasks(tiny_model, dense_masks(layout))
    got = tiny_model(batches[0]["image"])
    for task in expected:
        assert torch.equal(expected[task], got[task])
    assert ids == {n: id(p) for n, p in tiny_model.named_parameters()}


def test_sparsity_summary_counts_shared_heads_and_layers(tiny_model):
    layout = tiny_model.layout().resolve(tiny_model)
    masks = dense_masks(layout)
    first_shared, seg_head = layout.shared[0], layout.heads["seg"][0]
    masks[first_shared].view(-1)[:10] = False
    masks[seg_head][:] = False
    summary = sparsity_summary(masks, layout)
    total = layout.numel(layout.params)
    pruned = 10 + masks[seg_head].numel()
    assert summary["achieved"] == pytest.approx(pruned / total)
    assert summary["shared"] == pytest.approx(10 / layout.numel(layout.shared))
    assert summary["heads"]["seg"] == pytest.approx(
        masks[seg_head].numel() / layout.numel(layout.heads["seg"]))
    assert summary["heads"]["depth"] == 0.0
    assert summary["layers"][seg_head] == 1.0
    assert summary["layers"][first_shared] == pytest.approx(10 / masks[first_shared].numel())
