"""Training augmentation (--augment): scale, crop or pad back to size, flip; reproducible draws."""
import math

import numpy as np
import pytest
import torch

from prunekit import PrunekitError
from prunekit.data import augment as augment_module
from prunekit.data.augment import Augmented, SeededSampler, augment, crop_or_pad
from prunekit.data.synthetic import IGNORE_INDEX
from prunekit.pipeline.engine import Run
from prunekit.pipeline.config import QUICK, RunConfig
from prunekit.core.batch import no_progress
from helpers import quick_run


def sample(height=6, width=8):
    generator = torch.Generator().manual_seed(0)
    normal = torch.nn.functional.normalize(torch.randn(3, height, width, generator=generator), dim=0)
    return {"image": torch.rand(3, height, width, generator=generator),
            "seg": torch.randint(0, 5, (height, width), generator=generator),
            "depth": torch.rand(1, height, width, generator=generator) + 0.5,
            "normal": normal,
            "keypoint": torch.rand(1, height, width, generator=generator)}


def fixed(monkeypatch, scale, flip):
    monkeypatch.setattr(augment_module, "SCALES", (scale, scale))
    monkeypatch.setattr(augment_module, "FLIP_PROBABILITY", 1.0 if flip else 0.0)


def test_scale_one_without_flip_is_the_identity(monkeypatch):
    fixed(monkeypatch, 1.0, flip=False)
    original = sample()
    out = augment(original, np.random.default_rng(1))
    for key, value in original.items():
        assert out[key].dtype == value.dtype and torch.equal(out[key], value), key


def test_flip_mirrors_every_target_and_negates_the_normals_x(monkeypatch):
    fixed(monkeypatch, 1.0, flip=True)
    original = sample()
    out = augment(original, np.random.default_rng(1))
    for key in ("image", "seg", "depth", "keypoint"):
        assert torch.equal(out[key], original[key].flip(-1)), key
    normal = original["normal"].flip(-1)
    assert torch.equal(out["normal"][0], -normal[0])
    assert torch.equal(out["normal"][1:], normal[1:])


def test_shrinking_pads_each_target_with_what_its_task_leaves_out(monkeypatch):
    fixed(monkeypatch, 0.5, flip=False)
    out = augment(sample(8, 12), np.random.default_rng(3))
    assert all(value.shape[-2:] == (8, 12) for value in out.values())
    padded = out["seg"] == IGNORE_INDEX
    assert padded.float().mean() == 0.75  # a 4x6 sample inside an 8x12 window
    assert (out["depth"][0][padded] == 0).all() and (out["depth"][0][~padded] > 0).all()
    assert (out["normal"][:, padded] == 0).all()
    assert out["normal"][:, ~padded].norm(dim=0).sub(1).abs().max() < 1e-5
    assert out["keypoint"][0][padded].isnan().all() and out["keypoint"][0][~padded].isfinite().all()
    assert (out["image"][:, padded] == 0).all()


def test_enlarging_crops_a_window_of_the_nearest_upsampled_targets(monkeypatch):
    fixed(monkeypatch, 1.5, flip=False)
    original = sample(6, 8)
    rng_draws = np.random.default_rng(4)
    out = augment(original, rng_draws)
    scaled = torch.nn.functional.interpolate(original["seg"][None, None].float(), size=(9, 12),
                                             mode="nearest")[0, 0].long()
    windows = [scaled[top:top + 6, left:left + 8] for top in range(4) for left in range(5)]
    assert any(torch.equal(out["seg"], window) for window in windows)
    assert set(out["seg"].unique().tolist()) <= set(original["seg"].unique().tolist())


def test_crop_or_pad_cuts_or_places_each_axis_on_its_own():
    tensor = torch.arange(2 * 3 * 5.0).reshape(2, 3, 5)
    out = crop_or_pad(tensor, (4, 3), top=1, left=2, fill=-1.0)
    assert out.shape == (2, 4, 3)
    assert (out[:, 0] == -1).all()                                  # rows: placed one down
    assert torch.equal(out[:, 1:], tensor[:, :, 2:5])              # columns: cut from the third
    assert torch.equal(crop_or_pad(tensor, (3, 5), 0, 0, 0.0), tensor)


def test_draws_depend_on_the_epoch_seed_and_index_only():
    dataset = Augmented([sample(), sample()])
    a, b = dataset[(1, 7)], dataset[(1, 7)]
    assert all(torch.equal(a[k], b[k]) or (a[k].isnan() == b[k].isnan()).all() for k in a)
    different = [dataset[(1, seed)]["seg"] for seed in range(8)]
    assert any(not torch.equal(different[0], other) for other in different[1:])
    assert torch.equal(dataset[0]["image"], sample()["image"])  # a plain index: as stored


def test_the_sampler_gives_each_epoch_one_seed_from_the_loader_generator():
    generator = torch.Generator().manual_seed(0)
    sampler = SeededSampler(list(range(10)), generator)
    state = generator.get_state()
    first = list(sampler)
    assert sorted(index for index, _ in first) == list(range(10))
    assert len({seed for _, seed in first}) == 1
    second = list(sampler)
    assert second != first
    generator.set_state(state)
    assert list(sampler) == first  # the state at the epoch's start decides the epoch


def prepared(**settings) -> Run:
    run = Run(RunConfig(**{**QUICK, **settings}), no_progress)
    run.check()
    run.prepare()
    return run


def test_augment_reaches_the_training_loader_only(tmp_path):
    session = prepared(augment=True, out=str(tmp_path))
    assert isinstance(session.ctx.train_loader.dataset, Augmented)
    assert isinstance(session.ctx.train_loader.sampler, SeededSampler)
    assert not isinstance(session.ctx.val_loader.dataset, Augmented)
    batch = next(iter(session.ctx.train_loader))
    plain = prepared(out=str(tmp_path / "plain"))
    assert batch["image"].shape == next(iter(plain.ctx.train_loader))["image"].shape
    assert not math.isnan(float(batch["image"].sum()))


def test_the_cli_flag_turns_augmentation_on_and_the_report_says_so(capsys, tmp_path):
    report, _ = quick_run(capsys, tmp_path / "augmented", "--augment", "--iterations", "2")
    assert report["config"]["augment"] is True
    report, _ = quick_run(capsys, tmp_path / "plain", "--iterations", "2")
    assert report["config"]["augment"] is False


def test_augment_with_held_out_selection_samples(tmp_path):
    """--retrain-from-scratch holds samples out (a Subset, which has __getitems__): the
    augmented rest still loads through the (index, seed) keys."""
    run = prepared(augment=True, retrain_from_scratch=True, mode="iterative", scorer="taylor",
                   out=str(tmp_path))
    batch = next(iter(run.ctx.train_loader))
    assert batch["image"].shape[0] == QUICK["batch_size"]
    assert not isinstance(run.mode.selection_loader.dataset, Augmented)


def test_integer_targets_without_a_known_padding_are_refused(monkeypatch):
    fixed(monkeypatch, 0.5, flip=False)
    with pytest.raises(PrunekitError, match="does not know how to pad the torch.int64 target "
                                            "'instance'"):
        augment({**sample(), "instance": torch.zeros(1, 6, 8, dtype=torch.long)},
                np.random.default_rng(0))
