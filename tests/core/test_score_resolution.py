"""Scoring losses at the input's size or at the network's own output size (DiSparse's)."""
import pytest
import torch
from torch import nn

from prunekit import ScoringContext
from prunekit.core.batch import check_loss
from prunekit.core.saliency import head_module
from prunekit.errors import PrunekitError
from prunekit.models import build_model
from prunekit.registry import default_registry
from prunekit.tasks import SegmentationTask, build_tasks, nearest_resized

from conftest import NUM_CLASSES, make_batches

SIZE = (32, 40)  # the DeepLab trunk's output is 1/8 of it: 4x5


class RecordingSegmentation(SegmentationTask):
    """Segmentation that keeps what each loss call compared."""

    def __init__(self, num_classes):
        super().__init__(num_classes)
        self.calls = []

    def loss(self, prediction, target):
        self.calls.append((tuple(prediction.shape), target.clone()))
        return super().loss(prediction, target)


class Classes:
    num_classes = NUM_CLASSES


def deeplab():
    torch.manual_seed(0)
    return build_model("deeplab-resnet34", {"seg": NUM_CLASSES, "depth": 1, "normal": 3}, 0.125)


def score(model, tasks, batches):
    layout = model.layout().resolve(model)
    context = ScoringContext(model, layout, tasks, batches, torch.device("cpu"), check_loss)
    return default_registry().get("scorer", "disparse-snip").score(context)


def tasks_at(resolution):
    return build_tasks(("seg", "depth", "normal"), Classes, resolution)


def test_the_two_resolutions_give_different_saliency():
    model, batches = deeplab(), make_batches(count=2, size=SIZE)
    at_input = score(model, tasks_at("input"), batches)
    at_output = score(model, tasks_at("output"), batches)
    for task in at_input:
        differences = [float((at_input[task][n] - at_output[task][n]).abs().max())
                       for n in at_input[task]]
        assert max(differences) > 1e-6, task


def test_output_resolution_compares_the_heads_output_with_nearest_targets():
    model, batches = deeplab(), make_batches(count=1, size=SIZE)
    batches[0]["seg"][:, 0, 0] = 255  # an ignored pixel that nearest sampling keeps
    seg = RecordingSegmentation(NUM_CLASSES)
    seg.score_resolution = "output"
    score(model, {"seg": seg}, batches)
    (shape, target), = seg.calls
    assert shape == (2, NUM_CLASSES, 4, 5)
    torch.testing.assert_close(target, batches[0]["seg"][:, ::8, ::8])
    assert target.dtype == torch.long and (target[:, 0, 0] == 255).all()


def test_input_resolution_compares_the_upsampled_prediction():
    model, batches = deeplab(), make_batches(count=1, size=SIZE)
    seg = RecordingSegmentation(NUM_CLASSES)
    score(model, {"seg": seg}, batches)
    (shape, target), = seg.calls
    assert shape == (2, NUM_CLASSES, *SIZE)
    torch.testing.assert_close(target, batches[0]["seg"])


def test_nearest_resized_keeps_values_and_layout():
    maps = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    maps[0, 0, 4, 4] = float("nan")
    resized = nearest_resized(maps, (2, 2))
    assert resized.shape == (2, 3, 2, 2)
    torch.testing.assert_close(resized, maps[..., ::4, ::4], equal_nan=True)
    assert torch.isnan(resized[0, 0, 1, 1])
    labels = torch.randint(0, 5, (2, 8, 8))
    assert nearest_resized(labels, (8, 8)) is labels


def test_the_head_module_is_the_one_that_runs_a_forward():
    model = deeplab()
    layout = model.layout().resolve(model)
    name, module = head_module(model, layout.heads["seg"])
    assert name == "heads.seg"  # not heads.seg.branches, a ModuleList
    assert module is model.heads["seg"]


class DictHeads(nn.Module):
    """A model whose head for "seg" returns a dict, not one prediction."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Conv2d(3, 4, 3, padding=1)
        self.heads = nn.ModuleDict({"seg": DictHead()})

    def forward(self, x):
        return {"seg": self.heads["seg"](self.trunk(x))["out"]}

    def layout(self):
        from prunekit import MultiTaskLayout
        return MultiTaskLayout(shared=["trunk"], heads={"seg": ["heads.seg"]})


class DictHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, NUM_CLASSES, 1)
        self.other = nn.Conv2d(4, NUM_CLASSES, 1)

    def forward(self, x):
        return {"out": self.conv(x) + self.other(x)}


def test_a_head_without_one_prediction_is_one_clear_error():
    tasks = build_tasks(("seg",), Classes, "output")
    with pytest.raises(PrunekitError, match="head of task 'seg'.*module 'heads.seg' returned dict"):
        score(DictHeads(), tasks, make_batches(count=1, size=(8, 8)))


def test_an_unknown_resolution_is_refused():
    with pytest.raises(PrunekitError, match="unknown score resolution 'half'"):
        build_tasks(("seg",), Classes, "half")
