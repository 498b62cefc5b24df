"""The embedded synthetic scenes and the NYUv2 .npy loader."""
import numpy as np
import pytest
import torch

from prunekit import PrunekitError
from prunekit.data import NYU13_CLASSES, NYUv2, SyntheticIndoorScenes, build_dataset
from prunekit.data.synthetic import CLASS_ID, IGNORE_INDEX, camera_rays


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


def write_nyuv2(root, split, count, size=(6, 8)):
    rng = np.random.default_rng(0)
    for folder in ("image", "label", "depth", "normal"):
        (root / split / folder).mkdir(parents=True)
    for i in range(count):
        np.save(root / split / "image" / f"{i}.npy", rng.random((*size, 3), dtype=np.float32))
        label = rng.integers(-1, 13, size).astype(np.float32)
        np.save(root / split / "label" / f"{i}.npy", label)
        np.save(root / split / "depth" / f"{i}.npy", rng.random((*size, 1), dtype=np.float32) * 5)
        normal = rng.normal(size=(*size, 3)).astype(np.float32)
        np.save(root / split / "normal" / f"{i}.npy", normal / np.linalg.norm(normal, axis=-1,
                                                                                keepdims=True))


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
