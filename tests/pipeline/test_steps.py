"""Steps: the scoring batches (--score-batch-size) and what every training phase is given."""
import pytest

from prunekit import pipeline
from prunekit.pipeline import steps
from prunekit.pipeline.config import QUICK, RunConfig
from prunekit.training.loop import OptimiserSettings


@pytest.fixture
def scored_batch_sizes(monkeypatch):
    """The number of samples in every batch a run scores on."""
    sizes = []
    original = steps.compute_masks

    def compute_masks(model, layout, tasks, batches, *args, **kwargs):
        batches = list(batches)
        sizes.extend(len(batch["image"]) for batch in batches)
        return original(model, layout, tasks, batches, *args, **kwargs)
    monkeypatch.setattr(steps, "compute_masks", compute_masks)
    return sizes


@pytest.mark.parametrize("score_batch_size, expected", [(None, 2), (2, 2), (3, 3)])
def test_scoring_batches_have_the_scoring_batch_size(tmp_path, scored_batch_sizes,
                                                     score_batch_size, expected):
    pipeline.run(RunConfig(**{**QUICK, "iterations": 1, "score_batches": 2,
                              "score_batch_size": score_batch_size,
                              "out": str(tmp_path / "r")}))
    assert scored_batch_sizes == [expected, expected]


def test_every_phase_trains_with_the_runs_optimiser_settings(tmp_path, monkeypatch):
    given = []
    original = steps.train

    def train(*args, **kwargs):
        given.append((kwargs["settings"], kwargs["loss_weights"]))
        return original(*args, **kwargs)
    monkeypatch.setattr(steps, "train", train)
    pipeline.run(RunConfig(**{**QUICK, "mode": "pretrained", "iterations": 1,
                              "finetune_iterations": 1, "weight_decay": 5e-4,
                              "lr_schedule": "step", "lr_step_every": 4000,
                              "lr_step_factor": 0.5, "task_loss_weights": ("normal=20",),
                              "out": str(tmp_path / "r")}))
    expected = (OptimiserSettings(5e-4, "step", 4000, 0.5), {"normal": 20.0})
    assert given == [expected, expected]


def test_the_step_options_apply_only_to_the_step_schedule():
    config = RunConfig(lr_step_every=4000, lr_step_factor=0.5)
    assert config.optimiser_settings() == OptimiserSettings()
