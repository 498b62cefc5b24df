"""Shared fixtures: a tiny multi-task model, its tasks and batches.

Tests load only prunekit's own plugins, so whatever else is installed cannot change them.
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("PRUNEKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
# tests/ mirrors the packages; the modules every folder shares (helpers) live here
sys.path.insert(0, str(Path(__file__).parent))

import pytest
import torch
from torch import nn

from prunekit import MultiTaskLayout
from prunekit.tasks import DepthTask, NormalTask, SegmentationTask

NUM_CLASSES = 5

# The pure-torch oracles must be exact float32 on CUDA too: cuDNN's default TF32 convolutions are
# off from float32 by about 1e-3.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False


class TinyMultiTaskNet(nn.Module):
    """A conv trunk and one small head per task: big enough for saliency, fast in tests."""

    def __init__(self, tasks=("seg", "depth", "normal")):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        )
        channels = {"seg": NUM_CLASSES, "depth": 1, "normal": 3}
        self.heads = nn.ModuleDict({
            t: nn.Sequential(nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, channels[t], 1))
            for t in tasks
        })

    def forward(self, x):
        features = self.trunk(x)
        return {t: head(features) for t, head in self.heads.items()}

    def layout(self):
        return MultiTaskLayout(shared=["trunk"], heads={t: [f"heads.{t}"] for t in self.heads})


def make_tasks(names=("seg", "depth", "normal")):
    all_tasks = {"seg": SegmentationTask(NUM_CLASSES), "depth": DepthTask(), "normal": NormalTask()}
    return {n: all_tasks[n] for n in names}


def make_batches(count=3, batch_size=2, size=(8, 10), seed=0):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        normal = torch.randn(batch_size, 3, *size, generator=g)
        batches.append({
            "image": torch.randn(batch_size, 3, *size, generator=g),
            "seg": torch.randint(0, NUM_CLASSES, (batch_size, *size), generator=g),
            "depth": torch.rand(batch_size, 1, *size, generator=g) * 5 + 0.5,
            "normal": normal / normal.norm(dim=1, keepdim=True),
        })
    return batches


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return TinyMultiTaskNet()


@pytest.fixture
def tasks():
    return make_tasks()


@pytest.fixture
def batches():
    return make_batches()


@pytest.fixture(params=["best", "default"])
def cpu_build(request):
    """Runs a kernel test twice on the CPU: with the hot loops' build this CPU picks (AVX2 where it
    has it) and with the default build, which other x86-64 CPUs run."""
    from prunekit import ops

    if request.param == "default":
        with ops.default_simd():
            yield "default"
    else:
        yield ops.simd_level()
