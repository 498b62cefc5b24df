"""NYUv2 in both layouts (the .npy folders, the DiSparse/AdaShare JSON) as nyuv2 and nyuv2-40."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from prunekit import PrunekitError
from prunekit.cli import main
from prunekit.data import NYU13_CLASSES, NYU40_CLASSES, NYUv2, NYUv2Json, NYUv2Json40, build_dataset
from prunekit.data.synthetic import CLASS_ID, IGNORE_INDEX
from helpers import write_nyuv2

SIZE = (8, 10)
MEAN_BGR = np.array([104.00698793, 116.66876762, 122.67891434])
# Couprie et al.'s 13-class id (1-based) of each NYU40 class 1..40, written out independently of
# the loader's table.
NYU13_OF_NYU40 = [12, 5, 6, 1, 4, 9, 10, 12, 13, 6, 8, 6, 13, 10, 6, 13, 6, 7, 7, 5, 7, 3, 2, 6,
                  11, 7, 7, 7, 7, 7, 7, 6, 7, 7, 7, 7, 7, 7, 6, 7]


def decoded(pixels):
    """8-bit normals back in [-1, 1], scaled to unit length unless far from it."""
    normals = pixels / 255 * 2 - 1
    length = np.linalg.norm(normals, axis=-1, keepdims=True)
    return np.where(length > 0.5, normals / np.maximum(length, 0.5), normals)


def write_json_layout(root, counts=(("train", 3), ("test", 2)), name="nyu_v2_3task.json"):
    """A tiny dataset in the JSON layout; returns {(split, index): the arrays written}."""
    rng = np.random.default_rng(5)
    for folder in ("img", "seg", "normal_mask", "depth"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    listing, written = {}, {}
    for split, count in counts:
        listing[split] = []
        for i in range(count):
            stem = f"{split}{i:03d}"
            image = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
            seg = rng.integers(0, 40, SIZE).astype(np.uint8)
            seg[0, :4] = (255, 45, 7, 24)  # unlabelled, out of range, door, television
            normal = rng.integers(0, 255, (*SIZE, 3), dtype=np.uint8)
            normal[1, 0] = (10, 255, 20)   # a channel at 255: no reading
            depth = (rng.random(SIZE) * 5).astype(np.float32)
            depth[2] = 0                    # no reading
            Image.fromarray(image).save(root / "img" / f"{stem}.png")
            Image.fromarray(seg).save(root / "seg" / f"{stem}.png")
            Image.fromarray(normal).save(root / "normal_mask" / f"{stem}.png")
            np.save(root / "depth" / f"{stem}.npy", depth)
            listing[split].append([f"img/{stem}.png", f"seg/{stem}.png",
                                   f"normal_mask/{stem}.png", f"depth/{stem}.npy"])
            written[split, i] = dict(image=image, seg=seg, normal=normal, depth=depth)
    (root / name).write_text(json.dumps(listing))
    return written


@pytest.fixture
def json_root(tmp_path):
    return tmp_path, write_json_layout(tmp_path)


def test_json_layout_samples(json_root):
    root, written = json_root
    train = build_dataset("nyuv2", "train", str(root))
    assert isinstance(train, NYUv2Json) and len(train) == 3
    assert train.num_classes == 13 and train.class_names == NYU13_CLASSES
    assert train.tasks == ("seg", "depth", "normal")
    sample, raw = train[1], written["train", 1]
    assert set(sample) == {"image", "seg", "depth", "normal"}
    assert sample["image"].shape == (3, *SIZE) and sample["image"].dtype == torch.float32
    assert sample["seg"].shape == SIZE and sample["seg"].dtype == torch.int64
    assert sample["depth"].shape == (1, *SIZE) and sample["depth"].dtype == torch.float32
    assert sample["normal"].shape == (3, *SIZE) and sample["normal"].dtype == torch.float32
    # BGR order, the mean subtracted, no scaling
    expected = raw["image"][..., ::-1].astype(np.float64) - MEAN_BGR
    assert np.allclose(sample["image"].permute(1, 2, 0).numpy(), expected, atol=1e-4)
    assert sample["image"][0, 0, 0] == pytest.approx(raw["image"][0, 0, 2] - 104.00698793,
                                                     abs=1e-4)
    # normals: R, G, B -> x, y, z in [-1, 1]; a pixel with a channel at 255 has no reading
    normal = sample["normal"].permute(1, 2, 0).numpy()
    assert np.allclose(normal[0, 0], decoded(raw["normal"][0, 0]), atol=1e-6)
    assert (normal[1, 0] == 0).all()
    valid = ~(raw["normal"] == 255).any(axis=-1)
    assert np.allclose(normal[valid], decoded(raw["normal"][valid]), atol=1e-6)
    assert normal.min() >= -1 and normal.max() <= 1
    lengths = np.linalg.norm(normal[valid], axis=-1)
    stored_lengths = np.linalg.norm(raw["normal"][valid] / 255 * 2 - 1, axis=-1)
    assert np.allclose(lengths[stored_lengths > 0.5], 1, atol=1e-5)  # unit again after 8 bits
    # depth as stored, 0 kept for no reading
    assert torch.equal(sample["depth"][0], torch.from_numpy(raw["depth"]))
    assert (sample["depth"][0, 2] == 0).all()


def test_json_layout_maps_40_classes_to_13(json_root):
    root, written = json_root
    seg, stored = build_dataset("nyuv2", "train", str(root))[0]["seg"], written["train", 0]["seg"]
    assert seg[0, 0] == IGNORE_INDEX and seg[0, 1] == IGNORE_INDEX  # 255 and 45 ignored
    assert seg[0, 2] == CLASS_ID["wall"]   # door
    assert seg[0, 3] == CLASS_ID["tv"]     # television
    labelled = stored < 40
    expected = np.array(NYU13_OF_NYU40)[stored[labelled]] - 1
    assert np.array_equal(seg.numpy()[labelled], expected)
    assert 0 <= seg[seg != IGNORE_INDEX].min() and seg[seg != IGNORE_INDEX].max() < 13


@pytest.mark.parametrize("name40, name13", [("wall", "wall"), ("door", "wall"),
                                             ("picture", "painting"), ("blinds", "window"),
                                             ("desk", "table"), ("books", "books"),
                                             ("floor mat", "floor"), ("ceiling", "ceiling"),
                                             ("night stand", "furniture"), ("lamp", "objects")])
def test_named_classes_map_as_couprie(name40, name13):
    stored = NYU40_CLASSES.index(name40)
    assert NYUv2Json.labels[stored] == NYU13_CLASSES.index(name13)


def test_nyuv2_40_keeps_the_40_classes(json_root):
    root, written = json_root
    dataset = build_dataset("nyuv2-40", "train", str(root))
    assert isinstance(dataset, NYUv2Json40) and dataset.num_classes == 40
    assert len(NYU40_CLASSES) == 40 and NYU40_CLASSES[7] == "door"
    seg, stored = dataset[2]["seg"].numpy(), written["train", 2]["seg"]
    assert np.array_equal(seg, np.where(stored < 40, stored, IGNORE_INDEX))


def test_json_splits_and_resize(json_root):
    root, written = json_root
    val = build_dataset("nyuv2", "val", str(root))
    assert len(val) == 2  # prunekit's val split is the JSON's "test" list
    expected = written["test", 1]["image"][..., ::-1].astype(np.float64) - MEAN_BGR
    assert np.allclose(val[1]["image"].permute(1, 2, 0).numpy(), expected, atol=1e-4)
    resized = build_dataset("nyuv2-40", "train", str(root), size=(4, 5))[0]
    assert resized["image"].shape == (3, 4, 5) and resized["seg"].shape == (4, 5)
    assert resized["depth"].shape == (1, 4, 5) and resized["normal"].shape == (3, 4, 5)
    assert resized["seg"].dtype == torch.int64


def test_layout_detection(tmp_path):
    npy, both, other_name = tmp_path / "npy", tmp_path / "both", tmp_path / "other"
    write_nyuv2(npy, "train", 2)
    write_nyuv2(npy, "val", 1)
    assert isinstance(build_dataset("nyuv2", "train", str(npy)), NYUv2)
    write_nyuv2(both, "train", 2)
    write_nyuv2(both, "val", 1)
    write_json_layout(both)
    assert isinstance(build_dataset("nyuv2", "train", str(both)), NYUv2)        # .npy preferred
    assert isinstance(build_dataset("nyuv2-40", "train", str(both)), NYUv2Json40)
    write_json_layout(other_name, name="my_split.json")  # the only *.json of the root
    assert len(build_dataset("nyuv2", "val", str(other_name))) == 2
    (other_name / "notes.json").write_text("{}")            # two: neither is taken
    with pytest.raises(PrunekitError, match="no NYUv2 data .*\\.npy layout.*JSON layout"):
        build_dataset("nyuv2", "train", str(other_name))
    with pytest.raises(PrunekitError, match="no NYUv2 data"):
        build_dataset("nyuv2-40", "train", str(tmp_path))
    with pytest.raises(PrunekitError, match="does not exist"):
        build_dataset("nyuv2-40", "train", str(tmp_path / "missing"))
    with pytest.raises(PrunekitError, match="nyuv2-40 needs --data-root"):
        build_dataset("nyuv2-40", "train", None)


def test_nyuv2_40_on_the_npy_layout_fails_in_one_line(tmp_path):
    write_nyuv2(tmp_path, "train", 2)
    with pytest.raises(PrunekitError, match="only 13 classes") as error:
        build_dataset("nyuv2-40", "train", str(tmp_path))
    assert "\n" not in str(error.value)


def rewrite_json(root, content):
    (root / "nyu_v2_3task.json").write_text(content)


@pytest.mark.parametrize("content, message", [
    ("{", "cannot read .* as JSON"),
    ("[]", "is not a file of sample lists"),
    ('{"train": [["a.png", "b.png", "c.png", "d.npy"]]}',
     "has no 'test' split \\(it has: train\\)"),
    ('{"train": [], "test": []}', "not a non-empty list"),
    ('{"train": [["a.png", "b.png", "c.png"]], "test": []}', "entry 0 .* not a list of 4 paths"),
    ('{"train": {"a": 1}, "test": []}', "not a non-empty list"),
    ("[" * 100_000, "cannot read .* as JSON"),       # nested past Python's recursion limit
])
def test_json_structure_errors(json_root, content, message):
    root, _ = json_root
    rewrite_json(root, content)
    split = "val" if "has no 'test'" in message else "train"
    with pytest.raises(PrunekitError, match=message) as error:
        build_dataset("nyuv2", split, str(root))
    assert "\n" not in str(error.value)


def test_file_errors(json_root):
    root, _ = json_root
    (root / "depth" / "train001.npy").unlink()
    with pytest.raises(PrunekitError, match="1 file\\(s\\) listed .* missing.*train001.npy"):
        build_dataset("nyuv2", "train", str(root))
    assert len(build_dataset("nyuv2", "val", str(root))) == 2  # the other split still reads
    (root / "img" / "test000.png").write_bytes(b"not a png")
    with pytest.raises(PrunekitError, match="cannot read image .*test000.png"):
        build_dataset("nyuv2", "val", str(root))[0]
    Image.fromarray(np.zeros((*SIZE, 3), np.uint8)).save(root / "seg" / "test001.png")
    with pytest.raises(PrunekitError, match="seg/test001.png.* has 3 channels"):
        build_dataset("nyuv2", "val", str(root))[1]
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "seg" / "test001.png")
    with pytest.raises(PrunekitError, match="different sizes"):
        build_dataset("nyuv2", "val", str(root))[1]


def test_cli_runs_on_the_json_layout(tmp_path, capsys):
    root = tmp_path / "nyu"
    write_json_layout(root, counts=(("train", 4), ("test", 2)))
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--quick", "--no-progress", "--dataset", "nyuv2", "--data-root", str(root),
              "--image-size", "16x20", "--out", str(tmp_path / "run")])
    first = capsys.readouterr()
    assert exit_.value.code == 0, first.err
    assert "split val: 2 samples, fewer than --val-samples 4" in first.err  # --quick asks 4
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["config"]["dataset"] == "nyuv2"
    assert report["data"] == {"loader": "NYUv2Json", "image_size": [16, 20], "train_samples": 4,
                              "val_samples": 2}
    assert set(report["metrics"]) == {"seg", "depth", "normal"}
    rewrite_json(root, '{"train": []}')
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--quick", "--no-progress", "--dataset", "nyuv2-40", "--data-root",
              str(root), "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "not a non-empty list" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_labels_outside_the_8_bit_range_are_ignored(json_root):
    """Label files in a format that stores negatives (an int32 TIFF here) are not clipped into
    a class: -1 and 300 are ignored like 255."""
    root, written = json_root
    lists = json.loads((root / "nyu_v2_3task.json").read_text())
    labels = written["train", 0]["seg"].astype(np.int32)
    labels[0, :3] = (-1, 300, 7)
    Image.fromarray(labels, mode="I").save(root / "seg" / "train000.tif")
    lists["train"][0][1] = "seg/train000.tif"
    rewrite_json(root, json.dumps(lists))
    seg = build_dataset("nyuv2-40", "train", str(root))[0]["seg"]
    assert seg[0, :3].tolist() == [IGNORE_INDEX, IGNORE_INDEX, 7]
