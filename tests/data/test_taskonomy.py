"""Tiny-Taskonomy in DiSparse's layout (a tiny fixture written here) and the keypoint/edge tasks."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from prunekit import PrunekitError
from prunekit.data import NATIVE_SIZES, Taskonomy, build_dataset
from prunekit.data.synthetic import IGNORE_INDEX
from prunekit.data.taskonomy import disparse_path
from prunekit.pipeline.report import delta_t
from prunekit.tasks import DenseL1Task, build_tasks

SIZE = (16, 16)
DOMAINS = {"image": "rgb", "seg": "segment_semantic", "normal": "normal",
           "depth": "depth_zbuffer", "keypoint": "keypoints2d", "edge": "edge_texture"}
# Building -> number of views; the csv puts alpha in train, beta in test, gamma in val only.
BUILDINGS = {"alpha": 2, "beta": 1, "gamma": 1}
SPLIT_CSV = "id,train,val,test\nalpha,1,0,0\ngamma,0,1,0\nbeta,0,0,1\n"


def file_path(root, key, building, view):
    domain = DOMAINS[key]
    return root / domain / "taskonomy" / building / f"point_{view}_view_0_domain_{domain}.png"


def stored_pixels(rng):
    """What each domain's PNG holds, with values at and around every threshold."""
    seg = rng.integers(0, 18, SIZE).astype(np.uint8)
    seg[0, :5] = [0, 1, 17, 18, 255]
    depth = rng.integers(0, 65536, SIZE).astype(np.uint16)
    depth[0, :4] = [0, 64499, 64500, 65535]
    keypoint = rng.integers(0, 700, SIZE).astype(np.uint16)
    keypoint[0, :3] = [0, 327, 328]            # 0.005 * 2^16 = 327.68
    edge = rng.integers(0, 8000, SIZE).astype(np.uint16)
    edge[0, :3] = [0, 5242, 5243]              # 0.08 * 2^16 = 5242.88
    return {"image": rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8), "seg": seg,
            "normal": rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8), "depth": depth,
            "keypoint": keypoint, "edge": edge}


def write_taskonomy(root, split_file="csv"):
    """The Tiny-Taskonomy folders with BUILDINGS, and the split as a csv or a json file."""
    rng = np.random.default_rng(0)
    stored = {}
    for building, views in BUILDINGS.items():
        for view in range(views):
            pixels = stored_pixels(rng)
            for key, array in pixels.items():
                path = file_path(root, key, building, view)
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path)
            stored[building, view] = pixels
    if split_file == "csv":
        (root / "train_val_test_tiny.csv").write_text(SPLIT_CSV)
    else:  # DiSparse's file lists, paths in the older BUILDING/DOMAIN/FILE form
        def group(building, view):
            return [f"{building}/{DOMAINS[key]}/{file_path(root, key, building, view).name}"
                    for key in DOMAINS]
        lists = {"train": [group("alpha", 1), group("alpha", 0)], "test": [group("beta", 0)]}
        (root / "taskonomy.json").write_text(json.dumps(lists))
    return stored


def unit_length(normals):
    """Decoded normals scaled to length 1, except those far from it (no normal stored)."""
    length = np.linalg.norm(normals, axis=-1, keepdims=True)
    return np.where(length > 0.5, normals / np.maximum(length, 0.5), normals)


def expected_sample(pixels):
    """DiSparse's normalisations, written out from the stored values."""
    d = pixels["depth"].astype(np.float64)
    raw_seg = pixels["seg"].astype(np.int64)
    seg = np.where(raw_seg <= 1, 0, raw_seg - 1)
    seg[raw_seg > 17] = IGNORE_INDEX
    mean = np.array([104.00698793, 116.66876762, 122.67891434])
    return {
        "image": (pixels["image"][..., ::-1] - mean).transpose(2, 0, 1),
        "seg": seg,
        "normal": unit_length(pixels["normal"] / 255.0 * 2 - 1).transpose(2, 0, 1),
        "depth": np.where(d < 64500, np.log(1 + d) / np.log(2 ** 16), 0.0)[None],
        "keypoint": (np.clip(pixels["keypoint"] / 2 ** 16, 0, 0.005) / 0.005 * 2 - 1)[None],
        "edge": (np.clip(pixels["edge"] / 2 ** 16, 0, 0.08) / 0.08 * 2 - 1)[None],
    }


@pytest.fixture
def csv_root(tmp_path):
    root = tmp_path / "tiny"
    return root, write_taskonomy(root)


def test_samples_match_disparse_normalisations(csv_root):
    root, stored = csv_root
    train = Taskonomy(root, "train", size=SIZE)
    assert len(train) == 2 and train.tasks == ("seg", "normal", "depth", "keypoint", "edge")
    assert train.num_classes == 17 and len(train.class_names) == 17
    for view in range(2):  # the building's views, in name order
        sample, expected = train[view], expected_sample(stored["alpha", view])
        assert set(sample) == set(expected)
        assert sample["seg"].dtype == torch.int64 and sample["seg"].shape == SIZE
        assert torch.equal(sample["seg"], torch.from_numpy(expected["seg"]))
        for key in ("image", "normal", "depth", "keypoint", "edge"):
            assert sample[key].dtype == torch.float32
            assert sample[key].shape == expected[key].shape, key
            assert np.allclose(sample[key].numpy(), expected[key], atol=1e-5), key


def test_targets_at_the_thresholds(csv_root):
    root, _ = csv_root
    s = Taskonomy(root, "train", size=SIZE)[0]
    assert s["seg"][0, :5].tolist() == [0, 0, 16, IGNORE_INDEX, IGNORE_INDEX]
    depth = s["depth"][0, 0, :4]
    assert depth[0] == 0                     # log(1 + 0): 0, which the depth task skips too
    assert depth[1] == pytest.approx(math.log(64500) / math.log(2 ** 16))
    assert depth[2] == 0 and depth[3] == 0   # 64500 and above: no reading
    assert s["keypoint"][0, 0, :3].tolist() == pytest.approx([-1.0, 327 / 327.68 * 2 - 1, 1.0])
    assert s["edge"][0, 0, :3].tolist() == pytest.approx([-1.0, 5242 / 5242.88 * 2 - 1, 1.0])
    for key in ("normal", "keypoint", "edge"):
        assert s[key].min() >= -1 and s[key].max() <= 1


def test_depth_no_reading_is_left_out_by_the_depth_task(csv_root):
    root, stored = csv_root
    dataset = Taskonomy(root, "train", size=SIZE)
    depth = dataset[0]["depth"][None]
    task = build_tasks(["depth"], dataset)["depth"]
    invalid = torch.from_numpy(stored["alpha", 0]["depth"] >= 64500)[None, None]
    prediction = depth.clone()
    prediction[invalid] = 100.0               # wrong only where there is no reading
    assert float(task.loss(prediction, depth)) == 0.0


def test_splits_from_the_building_csv(csv_root):
    root, stored = csv_root
    val = build_dataset("taskonomy", "val", str(root), size=SIZE)
    assert len(val) == 1                      # val is the csv's test column: beta, not gamma
    expected = expected_sample(stored["beta", 0])
    assert np.allclose(val[0]["depth"].numpy(), expected["depth"], atol=1e-6)


def test_default_size_and_resizing(csv_root):
    root, stored = csv_root
    assert NATIVE_SIZES["taskonomy"] == (256, 256)
    full = build_dataset("taskonomy", "train", str(root))[0]
    assert full["image"].shape == (3, 256, 256) and full["seg"].shape == (256, 256)
    half = Taskonomy(root, "train", size=(8, 8))[0]
    expected = expected_sample(stored["alpha", 0])
    assert half["image"].shape == (3, 8, 8) and half["edge"].shape == (1, 8, 8)
    # targets are resized by nearest: every second stored pixel, values unchanged
    assert torch.equal(half["seg"], torch.from_numpy(expected["seg"][::2, ::2]))
    assert np.allclose(half["depth"].numpy(), expected["depth"][:, ::2, ::2], atol=1e-6)


def test_disparse_json_file_lists(tmp_path):
    root = tmp_path / "tiny"
    stored = write_taskonomy(root, split_file="json")
    assert disparse_path("alpha/rgb/x.png") == "rgb/taskonomy/alpha/x.png"
    assert disparse_path("rgb/taskonomy/alpha/x.png") == "rgb/taskonomy/alpha/x.png"
    train = Taskonomy(root, "train", size=SIZE)
    assert len(train) == 2                    # the json's order: view 1 first
    expected = expected_sample(stored["alpha", 1])
    assert np.allclose(train[0]["keypoint"].numpy(), expected["keypoint"], atol=1e-6)
    val = Taskonomy(root, "val", size=SIZE)   # the json's "test" list
    assert len(val) == 1
    assert torch.equal(val[0]["seg"], torch.from_numpy(expected_sample(stored["beta", 0])["seg"]))


def test_json_errors(tmp_path):
    root = tmp_path / "tiny"
    write_taskonomy(root, split_file="json")
    lists = json.loads((root / "taskonomy.json").read_text())
    (root / "taskonomy.json").write_text(json.dumps({"train": lists["train"]}))
    with pytest.raises(PrunekitError, match="has no 'test' split \\(it has: train\\)"):
        Taskonomy(root, "val")
    (root / "taskonomy.json").write_text(json.dumps({"train": [lists["train"][0][:5]]}))
    with pytest.raises(PrunekitError, match="entry 0 of split 'train' .* is not a list of 6 "
                                            "paths"):
        Taskonomy(root, "train")
    (root / "taskonomy.json").write_text("{not json")
    with pytest.raises(PrunekitError, match="cannot read .*taskonomy.json"):
        Taskonomy(root, "train")
    (root / "taskonomy.json").write_text(json.dumps({"train": [["elsewhere/rgb/a.png"] * 6]}))
    with pytest.raises(PrunekitError, match="missing image file \\(of the first 'train' sample\\) "
                                            ".*rgb/taskonomy/elsewhere/a.png"):
        Taskonomy(root, "train")


def test_layout_errors(tmp_path):
    with pytest.raises(PrunekitError, match="needs --data-root"):
        build_dataset("taskonomy", "train", None)
    with pytest.raises(PrunekitError, match="does not exist"):
        build_dataset("taskonomy", "train", str(tmp_path / "missing"))
    (tmp_path / "rgb" / "taskonomy").mkdir(parents=True)
    with pytest.raises(PrunekitError, match="lacks the folder\\(s\\) segment_semantic/taskonomy, "
                                            "normal/taskonomy.*Tiny-Taskonomy layout"):
        build_dataset("taskonomy", "train", str(tmp_path))
    root = tmp_path / "tiny"
    write_taskonomy(root)
    (root / "train_val_test_tiny.csv").unlink()
    with pytest.raises(PrunekitError, match="neither taskonomy.json .* nor train_val_test_tiny"):
        Taskonomy(root, "train")
    (root / "train_val_test_tiny.csv").write_text(SPLIT_CSV + "delta,1,0,0\n")
    with pytest.raises(PrunekitError, match="missing building folder .*rgb/taskonomy/delta"):
        Taskonomy(root, "train")
    (root / "train_val_test_tiny.csv").write_text("building,split\nalpha,train\n")
    with pytest.raises(PrunekitError, match="needs the columns id,train,val,test"):
        Taskonomy(root, "train")


def test_missing_and_wrong_files_are_one_line(csv_root):
    root, _ = csv_root
    file_path(root, "edge", "alpha", 1).unlink()
    dataset = Taskonomy(root, "train", size=SIZE)
    dataset[0]
    with pytest.raises(PrunekitError, match="missing image file .*point_1_view_0_domain_edge_tex"):
        dataset[1]
    depth = file_path(root, "depth", "alpha", 0)
    Image.fromarray(np.zeros(SIZE, np.uint8)).save(depth)   # 8-bit: the wrong scale
    with pytest.raises(PrunekitError, match="not a one-channel 16-bit PNG"):
        dataset[0]
    file_path(root, "seg", "alpha", 0).write_bytes(b"not a png")
    with pytest.raises(PrunekitError, match="cannot read image .*segment_semantic") as error:
        dataset[0]
    assert "\n" not in str(error.value)


def test_older_seg_file_name_is_found(csv_root):
    root, stored = csv_root
    for view in range(2):
        path = file_path(root, "seg", "alpha", view)
        path.rename(path.with_name(f"point_{view}_view_0_domain_segmentsemantic.png"))
    dataset = Taskonomy(root, "train", size=SIZE)
    for view in range(2):
        expected = expected_sample(stored["alpha", view])["seg"]
        assert torch.equal(dataset[view]["seg"], torch.from_numpy(expected))


def test_dense_l1_loss_metric_and_gradient():
    task = DenseL1Task("keypoint")
    assert task.name == "keypoint" and task.channels == 1
    assert task.higher_is_better == {"abs_err": False}
    target = torch.tensor([[[[0.5, -1.0, math.nan, 1.0]]]])
    prediction = torch.tensor([[[[0.0, 0.0, 5.0, 1.0]]]], requires_grad=True)
    loss = task.loss(prediction, target)
    assert loss.item() == pytest.approx((0.5 + 1.0 + 0.0) / 3)   # the NaN pixel is left out
    loss.backward()
    assert prediction.grad.flatten().tolist() == pytest.approx([-1 / 3, 1 / 3, 0.0, 0.0])
    meter = task.meter()
    meter.update(prediction.detach(), target)
    meter.update(torch.full((1, 1, 1, 2), 0.25), torch.tensor([[[[0.0, 1.0]]]]))
    assert meter.compute()["abs_err"] == pytest.approx((0.5 + 1.0 + 0.0 + 0.25 + 0.75) / 5)
    assert math.isnan(DenseL1Task("edge").meter().compute()["abs_err"])
    empty = torch.zeros(1, 1, 1, 2, requires_grad=True)
    nothing = task.loss(empty, torch.full((1, 1, 1, 2), math.nan))
    nothing.backward()
    assert nothing.item() == 0.0 and torch.equal(empty.grad, torch.zeros_like(empty))


def test_keypoint_and_edge_tasks_by_name_and_in_delta_t(csv_root):
    root, _ = csv_root
    tasks = build_tasks(["keypoint", "edge"], Taskonomy(root, "train", size=SIZE))
    assert {name: task.name for name, task in tasks.items()} == {"keypoint": "keypoint",
                                                                "edge": "edge"}
    base = {"keypoint": {"abs_err": 0.2}, "edge": {"abs_err": 0.4}}
    better = {"keypoint": {"abs_err": 0.1}, "edge": {"abs_err": 0.4}}
    result = delta_t(better, base, tasks)
    assert result["per_task"] == pytest.approx({"keypoint": 50.0, "edge": 0.0})
    with pytest.raises(PrunekitError, match="no targets for task\\(s\\) keypoint"):
        build_tasks(["seg", "keypoint"], build_dataset("synthetic", "val", size=(8, 8)))


def test_cli_run_with_five_taskonomy_tasks(csv_root, tmp_path, capsys):
    from prunekit.cli import main
    root, _ = csv_root
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--quick", "--dataset", "taskonomy", "--data-root", str(root), "--tasks",
              "seg,normal,depth,keypoint,edge", "--image-size", "16x16", "--out", str(out)])
    assert exit_.value.code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert set(report["metrics"]) == {"seg", "normal", "depth", "keypoint", "edge"}
    for task in ("keypoint", "edge"):
        assert set(report["metrics"][task]) == {"abs_err"}
        # targets and the predictions of a barely trained head lie in [-1, 1] and near 0
        assert 0 < report["metrics"][task]["abs_err"] < 2


def test_json_lists_in_the_older_seg_spelling_find_the_files_on_disk(tmp_path):
    """AdaShare's lists say segmentsemantic; a download may hold segment_semantic/ folders with
    files ending in _domain_segmentsemantic.png (or any mix): the spelling on disk is used."""
    root = tmp_path / "tiny"
    stored = write_taskonomy(root, split_file="json")
    for building, views in BUILDINGS.items():
        for view in range(views):
            path = file_path(root, "seg", building, view)
            path.rename(path.with_name(f"point_{view}_view_0_domain_segmentsemantic.png"))
    lists = json.loads((root / "taskonomy.json").read_text())
    for entries in lists.values():
        for entry in entries:
            entry[1] = entry[1].replace("segment_semantic", "segmentsemantic")
    (root / "taskonomy.json").write_text(json.dumps(lists))
    train = Taskonomy(root, "train", size=SIZE)
    assert torch.equal(train[1]["seg"], torch.from_numpy(expected_sample(stored["alpha", 0])["seg"]))


def test_files_of_other_sizes_are_resized_each_on_its_own(csv_root):
    root, stored = csv_root
    depth = file_path(root, "depth", "alpha", 0)
    Image.fromarray(np.repeat(np.repeat(stored["alpha", 0]["depth"], 2, 0), 2, 1)).save(depth)
    sample = Taskonomy(root, "train", size=SIZE)[0]
    assert all(value.shape[-2:] == SIZE for value in sample.values())
    expected = expected_sample(stored["alpha", 0])["depth"]
    assert np.allclose(sample["depth"].numpy(), expected, atol=1e-6)  # 2x nearest, then back


def test_the_first_sample_is_checked_when_the_split_opens(csv_root):
    root, _ = csv_root
    file_path(root, "keypoint", "alpha", 0).unlink()
    with pytest.raises(PrunekitError, match="missing keypoint file \\(of the first 'train' "
                                            "sample\\)"):
        Taskonomy(root, "train", size=SIZE)


def test_a_file_missing_mid_run_is_one_line_also_from_a_loading_worker(csv_root, tmp_path,
                                                                        capsys):
    from prunekit.cli import main
    root, _ = csv_root
    file_path(root, "edge", "alpha", 1).unlink()
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--quick", "--no-progress", "--dataset", "taskonomy", "--data-root",
              str(root), "--tasks", "seg,edge", "--image-size", "16x16", "--workers", "1",
              "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    # the 1-sample validation split is smaller than --quick's --val-samples 4: a warning first
    lines = [line for line in err.strip().splitlines()
             if not line.startswith("prunekit: warning: dataset taskonomy, split val")]
    assert len(lines) == 1, err
    assert lines[0].startswith("prunekit: error: missing image file ")
    assert "Traceback" not in err and "point_1_view_0_domain_edge_texture.png" in err
