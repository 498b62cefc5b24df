"""Overhead of RigL's drop-and-grow updates on the default model and data (``--mode dynamic``).

Run with:  make bench   (or .venv/bin/python -m pytest benchmarks -k rigl)

Both benchmarks train the default run's model (DeepLab-ResNet-34, width 0.125, 64x80 synthetic
images, batch 8, ERK random masks at sparsity 0.9) for one update interval (25 steps):

  training        25 training steps of sparse training with fixed masks (the baseline).
  with_update     the same 25 steps, plus the one RigL update that falls due at the last step
                  (per-task grow scores from disparse-rigl on that batch, drop, grow, merge).

Their ratio minus one is the update's overhead as a share of training time.
"""
import pytest
import torch

from prunekit.pipeline.engine import Run
from prunekit.pipeline.config import RunConfig
from prunekit.core.masks import AppliedMasks
from prunekit.registry import default_registry
from prunekit.core.rigl import RigLSchedule, RigLUpdater
from prunekit.training.loop import train
from prunekit.core.batch import no_progress

CONFIG = RunConfig(mode="dynamic")
ROUNDS = 5


@pytest.fixture(scope="module")
def sparse_run():
    torch.manual_seed(0)
    run = Run(CONFIG, no_progress)
    run.check()
    run.ctx.device = torch.device("cpu")
    run.build()
    initial = run.steps.prune(CONFIG.sparsity,
                              scorer=default_registry().get("scorer", "random"))
    return run.ctx, AppliedMasks(run.ctx.model, initial.masks)


def train_one_interval(run, applied, after_step=None):
    train(run.model, run.tasks, run.train_loader, CONFIG.update_interval, CONFIG.lr, applied,
          run.device, after_step=after_step)


@pytest.mark.parametrize("method", ["training", "with_update"])
def test_rigl_update_overhead(benchmark, sparse_run, method):
    run, applied = sparse_run
    updater = None
    if method == "with_update":
        schedule = RigLSchedule(CONFIG.update_interval, end=10**9, alpha=CONFIG.drop_fraction)
        updater = RigLUpdater(run.model, run.layout, run.tasks, applied, run.scorer, run.arbiter,
                              schedule)
    benchmark.group = f"rigl update, interval {CONFIG.update_interval}, cpu"
    benchmark.extra_info.update(method=method, baseline="training")
    benchmark.pedantic(train_one_interval, args=(run, applied, updater), rounds=ROUNDS,
                       warmup_rounds=1)
    if updater is not None:
        assert updater.updates >= 1  # the measured intervals did include updates
