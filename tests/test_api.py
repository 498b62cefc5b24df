"""The Python API on a user's own model, as the README shows it."""
import pytest
import torch
from torch import nn

import prunekit
from prunekit.tasks import DepthTask, SegmentationTask


class UserModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.seg_head = nn.Conv2d(8, 4, 1)
        self.depth_head = nn.Conv2d(8, 1, 1)

    def forward(self, x):
        features = self.encoder(x)
        return {"seg": self.seg_head(features), "depth": self.depth_head(features)}


def scoring_batches(count=2):
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.randn(2, 3, 6, 6, generator=g),
             "seg": torch.randint(0, 4, (2, 6, 6), generator=g),
             "depth": torch.rand(2, 1, 6, 6, generator=g) + 0.5} for _ in range(count)]


def test_readme_example_on_a_user_model():
    torch.manual_seed(0)
    model = UserModel()
    layout = prunekit.MultiTaskLayout(shared=["encoder"],
                                      heads={"seg": ["seg_head"], "depth": ["depth_head"]})
    tasks = {"seg": SegmentationTask(num_classes=4), "depth": DepthTask()}
    result = prunekit.compute_masks(model, layout, tasks, scoring_batches(),
                                    scorer="disparse-snip", arbiter="or", sparsity=0.6)
    assert result.requested == 0.6 and abs(result.achieved - 0.6) <= 0.005
    assert set(result.masks) == {"encoder.0.weight", "encoder.2.weight", "seg_head.weight",
                                 "depth_head.weight"}
    masks = prunekit.AppliedMasks(model, result.masks)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    batch = scoring_batches(1)[0]
    out = model(batch["image"])
    (tasks["seg"].loss(out["seg"], batch["seg"]) + tasks["depth"].loss(out["depth"], batch["depth"])).backward()
    optimiser.step()
    masks.zero_pruned()
    for name, param in model.named_parameters():
        if name in result.masks:
            assert (param[~result.masks[name]] == 0).all()


def test_plugin_objects_can_be_passed_directly():
    from prunekit_plugins.arbiters import IntersectionArbiter
    from prunekit_plugins.snip import DisparseSnipScorer

    model = UserModel()
    layout = prunekit.MultiTaskLayout(shared=["encoder"],
                                      heads={"seg": ["seg_head"], "depth": ["depth_head"]})
    tasks = {"seg": SegmentationTask(num_classes=4), "depth": DepthTask()}
    result = prunekit.compute_masks(model, layout, tasks, scoring_batches(),
                                    scorer=DisparseSnipScorer(), arbiter=IntersectionArbiter(),
                                    sparsity=0.5)
    for name in ("encoder.0.weight", "encoder.2.weight"):
        both = result.task_masks["seg"][name] & result.task_masks["depth"][name]
        assert torch.equal(result.masks[name], both)


def test_tasks_must_match_the_layout():
    layout = prunekit.MultiTaskLayout(shared=["encoder"], heads={"seg": ["seg_head"]})
    with pytest.raises(prunekit.PrunekitError, match="do not match the layout"):
        prunekit.compute_masks(UserModel(), layout, {"depth": DepthTask()}, scoring_batches())
