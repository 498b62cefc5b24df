"""A user's own model through --model MODULE:FUNCTION, and torchvision's segmentation models
(random weights, no downloads) with two task heads pruned through the Python API."""
import json
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import segmentation

import prunekit
from prunekit import load_checkpoint
from prunekit.tasks import DepthTask, SegmentationTask
from helpers import invoke

USER_NET = textwrap.dedent('''
    import torch.nn.functional as F
    from torch import nn
    from prunekit import MultiTaskLayout

    class Net(nn.Module):
        def __init__(self, task_channels, width):
            super().__init__()
            hidden = max(4, int(32 * width))
            self.trunk = nn.Sequential(nn.Conv2d(3, hidden, 3, padding=1), nn.ReLU(),
                                       nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU())
            self.heads = nn.ModuleDict({task: nn.Conv2d(hidden, channels, 1)
                                        for task, channels in task_channels.items()})

        def forward(self, x):
            features = self.trunk(x)
            return {task: head(features) for task, head in self.heads.items()}

    def with_layout(task_channels, width):
        model = Net(task_channels, width)
        return model, MultiTaskLayout(shared=["trunk"],
                                      heads={task: [f"heads.{task}"] for task in task_channels})

    class NetWithLayout(Net):
        def layout(self):
            return MultiTaskLayout(shared=["trunk"],
                                   heads={task: [f"heads.{task}"] for task in self.heads})

    def with_method(task_channels, width):
        return NetWithLayout(task_channels, width)

    def broken(task_channels, width):
        raise ValueError("no such depth")

    def not_a_model(task_channels, width):
        return 42
''')


@pytest.fixture
def user_net(tmp_path):
    path = tmp_path / "user_net.py"
    path.write_text(USER_NET)
    return path


def test_a_user_model_from_a_file_is_pruned_trained_and_loaded_again(capsys, tmp_path,
                                                                       user_net):
    out_dir = tmp_path / "run"
    code, _, err = invoke(capsys, "run", "--quick", "--no-progress", "--model",
                          f"{user_net}:with_layout", "--tasks", "seg,depth", "--out",
                          str(out_dir))
    assert code == 0, err
    report = json.loads((out_dir / "report.json").read_text())
    assert report["complete"] and abs(report["sparsity"]["achieved"] - 0.9) < 0.05
    model, masks = load_checkpoint(out_dir / "checkpoint.pt")  # imports the builder again
    assert set(masks) == {"trunk.0.weight", "trunk.2.weight", "heads.seg.weight",
                          "heads.depth.weight"}
    for name, param in model.named_parameters():
        if name in masks:
            assert (param[~masks[name]] == 0).all()


def test_a_relative_file_the_layout_method_and_loading_from_elsewhere(capsys, tmp_path,
                                                                       monkeypatch, user_net):
    monkeypatch.chdir(user_net.parent)
    out_dir = tmp_path / "run"
    code, _, err = invoke(capsys, "run", "--quick", "--no-progress", "--model",
                          "user_net.py:with_method", "--tasks", "seg", "--out", str(out_dir))
    assert code == 0, err
    recorded = json.loads((out_dir / "report.json").read_text())["config"]["model"]
    assert recorded == f"{user_net.resolve()}:with_method"  # loads from any folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    model, masks = load_checkpoint(out_dir / "checkpoint.pt")
    assert set(masks) == {"trunk.0.weight", "trunk.2.weight", "heads.seg.weight"}


def test_a_module_on_the_working_directory(capsys, tmp_path, monkeypatch):
    (tmp_path / "prunekit_test_nets.py").write_text(USER_NET)
    monkeypatch.chdir(tmp_path)
    code, _, err = invoke(capsys, "run", "--quick", "--no-progress", "--model",
                          "prunekit_test_nets:with_layout", "--tasks", "seg,depth", "--out",
                          str(tmp_path / "run"))
    assert code == 0, err


def test_two_files_of_one_name_stay_apart_and_a_failed_import_is_not_kept(tmp_path):
    from prunekit.models import build_model
    first, second = tmp_path / "a" / "nets.py", tmp_path / "b" / "nets.py"
    for path, scale in ((first, "32"), (second, "64")):
        path.parent.mkdir()
        path.write_text(USER_NET.replace("int(32 * width)", f"int({scale} * width)"))
    sizes = [sum(p.numel() for p in build_model(f"{path}:with_layout", {"seg": 3}, 1.0)
                 .parameters()) for path in (first, second)]
    assert sizes[0] < sizes[1]
    broken = tmp_path / "c" / "nets.py"
    broken.parent.mkdir()
    broken.write_text("raise RuntimeError('half written')\n")
    with pytest.raises(prunekit.PrunekitError, match="could not import.*half written"):
        build_model(f"{broken}:with_layout", {"seg": 3}, 1.0)
    broken.write_text(USER_NET)
    assert isinstance(build_model(f"{broken}:with_layout", {"seg": 3}, 1.0), nn.Module)


@pytest.mark.parametrize("function, message", [
    ("broken", "failed: ValueError: no such depth"),
    ("not_a_model", "must return a model with a layout() method or (model, MultiTaskLayout)"),
    ("missing", "has no function 'missing'"),
])
def test_user_model_errors_are_one_line(capsys, tmp_path, user_net, function, message):
    code, _, err = invoke(capsys, "run", "--quick", "--model", f"{user_net}:{function}",
                          "--out", str(tmp_path / "run"))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err


def test_a_user_model_module_that_does_not_import(capsys, tmp_path):
    code, _, err = invoke(capsys, "run", "--quick", "--model", "no_such_package.nets:build",
                          "--out", str(tmp_path / "run"))
    assert code == 2 and "could not import 'no_such_package.nets'" in err
    code, _, err = invoke(capsys, "run", "--quick", "--model", str(tmp_path / "none.py:build"),
                          "--out", str(tmp_path / "run"))
    assert code == 2 and "does not exist" in err


# --- torchvision's segmentation models with two heads -------------------------------------

TASK_CHANNELS = {"seg": 5, "depth": 1}


class TwoHeads(nn.Module):
    """A torchvision segmentation model's backbone, shared, and one classifier per task."""

    def __init__(self, build, uses_all_features: bool):
        super().__init__()
        self.backbone = build(num_classes=1).backbone
        self.heads = nn.ModuleDict({task: build(num_classes=channels).classifier
                                    for task, channels in TASK_CHANNELS.items()})
        self.uses_all_features = uses_all_features  # LRASPP's head reads two feature maps

    def forward(self, x):
        features = self.backbone(x)
        inputs = features if self.uses_all_features else features["out"]
        return {task: F.interpolate(head(inputs), size=x.shape[-2:], mode="bilinear",
                                    align_corners=False)
                for task, head in self.heads.items()}


def torchvision_builder(name):
    def build(num_classes):
        options = dict(weights=None, weights_backbone=None, num_classes=num_classes)
        if name != "lraspp_mobilenet_v3_large":
            options["aux_loss"] = False
        return getattr(segmentation, name)(**options)
    return build


@pytest.mark.parametrize("name", ["deeplabv3_resnet50", "fcn_resnet50",
                                  "lraspp_mobilenet_v3_large"])
def test_torchvision_segmentation_models_with_two_heads(name):
    torch.manual_seed(0)
    model = TwoHeads(torchvision_builder(name), uses_all_features=name.startswith("lraspp"))
    layout = prunekit.MultiTaskLayout(shared=["backbone"],
                                      heads={task: [f"heads.{task}"] for task in TASK_CHANNELS})
    tasks = {"seg": SegmentationTask(num_classes=5), "depth": DepthTask()}
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(2, 3, 64, 64, generator=g),
             "seg": torch.randint(0, 5, (2, 64, 64), generator=g),
             "depth": torch.rand(2, 1, 64, 64, generator=g) + 0.5}
    result = prunekit.compute_masks(model, layout, tasks, [batch], scorer="disparse-snip",
                                    arbiter="or", sparsity=0.9)
    convs_and_linears = {f"{name}.weight" for name, module in model.named_modules()
                         if isinstance(module, (nn.Conv2d, nn.Linear))}
    assert set(result.masks) == convs_and_linears  # every conv/linear weight has a mask
    assert abs(result.achieved - 0.9) < 0.05
    prunekit.AppliedMasks(model, result.masks)
    with torch.no_grad():
        outputs = model.eval()(batch["image"])
    assert outputs["seg"].shape == (2, 5, 64, 64) and outputs["depth"].shape == (2, 1, 64, 64)
    assert all(torch.isfinite(output).all() for output in outputs.values())
