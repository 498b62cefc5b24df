"""The embedded synthetic scenes and the .npy loaders (NYUv2, Cityscapes)."""
import numpy as np
import pytest
import torch

from prunekit import PrunekitError
from prunekit.data import NYU13_CLASSES, NYUv2, SyntheticIndoorScenes, build_dataset
from prunekit.data.synthetic import CLASS_ID, IGNORE_INDEX, camera_rays
from helpers import write_npy_folders, write_nyuv2


@pytest.fixture(scope="module")
def samples():
    dataset = SyntheticIndoorScenes("train", size=(48, 60), length=24, seed=3)
    return [dataset[i] for i in range(len(dataset))]


def test_samples_are_deterministic_in_seed_split_and_index():
    a = SyntheticIndoorScenes("train", size=(32, 40), seed=1)
    b = SyntheticIndoorScenes("train", size=(32, 40), seed=1)
    for key in ("image", "seg", "depth", "normal"):
        assert torch.equal(a[5][key], b[5][key])
    assert not torch.equal(a[5]["image"], a[6]["image"])
    assert not torch.equal(a[5]["image"], SyntheticIndoorScenes("val", (32, 40), seed=1)[5]["image"])
    assert not torch.equal(a[5]["image"], SyntheticIndoorScenes("train", (32, 40), seed=2)[5]["image"])


def test_sample_shapes_dtypes_and_ranges(samples):
    for s in samples:
        assert s["image"].shape == (3, 48, 60) and s["image"].dtype == torch.float32
        assert s["seg"].shape == (48, 60) and s["seg"].dtype == torch.int64
        assert s["depth"].shape == (1, 48, 60) and s["normal"].shape == (3, 48, 60)
        assert 0 <= s["image"].min() and s["image"].max() <= 1
        labels = s["seg"][s["seg"] != IGNORE_INDEX]
        assert 0 <= labels.min() and labels.max() < len(NYU13_CLASSES)
        assert torch.allclose(s["normal"].norm(dim=0), torch.ones(48, 60), atol=1e-4)


def test_geometry_is_consistent_across_tasks(samples):
    seen = torch.zeros(len(NYU13_CLASSES), dtype=torch.bool)
    for s in samples:
        seg, depth, normal = s["seg"], s["depth"][0], s["normal"]
        seen[seg[seg != IGNORE_INDEX].unique()] = True
        window = seg == CLASS_ID["window"]
        assert (depth[window] == 0).all()            # no sensor reading through glass
        assert (depth[~window & (seg != IGNORE_INDEX)] > 0.05).all()
        assert depth.max() < 12
        # camera frame has y pointing down: floors face up (-y), ceilings down (+y)
        floor, ceiling = seg == CLASS_ID["floor"], seg == CLASS_ID["ceiling"]
        if floor.any():
            assert (normal[1][floor] < -0.5).all()
        if ceiling.any():
            assert (normal[1][ceiling] > 0.5).all()
        # every visible surface faces the camera
        facing = (normal.reshape(3, -1).T * camera_rays(48, 60)).sum(dim=1).reshape(48, 60)
        assert (facing < 1e-4).all()
    assert seen.sum() >= 10, "most of the 13 classes appear in a couple of dozen scenes"


def test_a_share_of_boundary_pixels_is_unlabelled(samples):
    share = sum(float((s["seg"] == IGNORE_INDEX).float().mean()) for s in samples) / len(samples)
    assert 0.002 < share < 0.1


def test_nyuv2_npy_layout(tmp_path):
    write_nyuv2(tmp_path, "train", 3)
    write_nyuv2(tmp_path, "val", 2)
    train = build_dataset("nyuv2", "train", str(tmp_path))
    assert len(train) == 3 and len(build_dataset("nyuv2", "val", str(tmp_path))) == 2
    sample = train[1]
    raw = np.load(tmp_path / "train" / "label" / "1.npy")
    assert sample["image"].shape == (3, 6, 8)
    assert sample["depth"].shape == (1, 6, 8) and sample["normal"].shape == (3, 6, 8)
    assert (sample["seg"][torch.from_numpy(raw < 0)] == IGNORE_INDEX).all()
    assert torch.equal(sample["seg"][torch.from_numpy(raw >= 0)],
                       torch.from_numpy(raw[raw >= 0]).long())
    resized = NYUv2(tmp_path, "train", size=(3, 4))[0]
    assert resized["image"].shape == (3, 3, 4) and resized["seg"].shape == (3, 4)


def test_nyuv2_errors_are_clear(tmp_path):
    with pytest.raises(PrunekitError, match="does not exist"):
        build_dataset("nyuv2", "train", str(tmp_path / "missing"))
    with pytest.raises(PrunekitError, match="needs --data-root"):
        build_dataset("nyuv2", "train", None)
    (tmp_path / "train" / "image").mkdir(parents=True)
    with pytest.raises(PrunekitError, match="lacks the folder"):
        build_dataset("nyuv2", "train", str(tmp_path))


def write_cityscapes(root, split, count, size=(8, 16)):
    rng = np.random.default_rng(1)

    def depth():
        values = rng.random((*size, 1), dtype=np.float32)
        values[0] = 0  # invalid pixels
        return values
    write_npy_folders(root, split, count, {
        "image": lambda: rng.random((*size, 3), dtype=np.float32),
        "label_19": lambda: rng.integers(-1, 19, size).astype(np.float32),  # -1: void
        "label_7": lambda: rng.integers(-1, 7, size).astype(np.float32),
        "depth": depth})


@pytest.mark.parametrize("name, folder, classes", [("cityscapes", "label_19", 19),
                                                   ("cityscapes-7", "label_7", 7)])
def test_cityscapes_npy_layout(tmp_path, name, folder, classes):
    write_cityscapes(tmp_path, "train", 3)
    write_cityscapes(tmp_path, "val", 2)
    train = build_dataset(name, "train", str(tmp_path))
    assert len(train) == 3 and len(build_dataset(name, "val", str(tmp_path))) == 2
    assert train.num_classes == classes and train.tasks == ("seg", "depth")
    sample = train[2]
    assert set(sample) == {"image", "seg", "depth"}
    assert sample["image"].shape == (3, 8, 16) and sample["image"].dtype == torch.float32
    assert sample["seg"].dtype == torch.int64 and sample["depth"].shape == (1, 8, 16)
    raw = np.load(tmp_path / "train" / folder / "2.npy")
    assert (sample["seg"][torch.from_numpy(raw < 0)] == IGNORE_INDEX).all()
    assert torch.equal(sample["seg"][torch.from_numpy(raw >= 0)],
                       torch.from_numpy(raw[raw >= 0]).long())
    assert (sample["depth"][:, 0] == 0).all()  # invalid depth stays 0: left out by the task
    resized = build_dataset(name, "train", str(tmp_path), size=(4, 8))[0]
    assert resized["seg"].shape == (4, 8) and resized["depth"].shape == (1, 4, 8)


def test_cityscapes_errors_and_tasks_it_lacks(tmp_path, capsys):
    with pytest.raises(PrunekitError, match="needs --data-root"):
        build_dataset("cityscapes", "train", None)
    (tmp_path / "train" / "image").mkdir(parents=True)
    with pytest.raises(PrunekitError, match="lacks the folder.*label_19, depth"):
        build_dataset("cityscapes", "train", str(tmp_path))
    from prunekit.cli import main
    root = tmp_path / "cs"
    write_cityscapes(root, "train", 4)
    write_cityscapes(root, "val", 2)
    with pytest.raises(SystemExit) as exit_:  # the default tasks include normals
        main(["run", "--quick", "--dataset", "cityscapes", "--data-root", str(root), "--out",
              str(tmp_path / "run")])
    assert exit_.value.code == 2
    assert "no targets for task(s) normal; its tasks: seg, depth" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--quick", "--dataset", "cityscapes", "--data-root", str(root), "--tasks",
              "seg,depth", "--image-size", "16x32", "--out", str(tmp_path / "run")])
    assert exit_.value.code == 0, capsys.readouterr().err
