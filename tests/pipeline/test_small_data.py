"""Splits smaller than the options ask for: a warning naming the numbers; no batch: an error."""
import json

import pytest

from prunekit.errors import PrunekitError
from prunekit.pipeline.config import RunConfig
from prunekit.pipeline import modes
from prunekit.pipeline.data import check_not_empty, small_data_warnings

from helpers import invoke, write_nyuv2


def test_enough_data_gives_no_warning():
    config = RunConfig(batch_size=8, val_samples=128, score_batches=10)
    assert small_data_warnings(config, 80, 128, scoring=True) == []


def test_each_shortfall_names_dataset_split_and_numbers():
    config = RunConfig(dataset="nyuv2", batch_size=8, val_samples=128, score_batches=10)
    batch, val, scoring = small_data_warnings(config, 5, 50, scoring=True)
    assert batch == ("dataset nyuv2, split train: 5 samples, fewer than --batch-size 8; every "
                     "training batch holds 5")
    assert val == ("dataset nyuv2, split val: 50 samples, fewer than --val-samples 128; the "
                   "evaluation uses all 50")
    assert scoring == ("dataset nyuv2, split train: 5 samples, fewer than --score-batches 10 x "
                       "--batch-size 8 = 80; scoring sums 1 batch(es) of 5")


def test_scoring_counts_the_full_batches_the_loader_gives():
    config = RunConfig(batch_size=8, score_batches=10)
    (warning,) = small_data_warnings(config, 30, 128, scoring=True)
    assert warning.endswith("scoring sums 3 batch(es) of 8")
    assert small_data_warnings(config, 30, 128, scoring=False) == []


def test_val_samples_zero_asks_for_the_whole_split():
    assert small_data_warnings(RunConfig(val_samples=0), 2000, 3, scoring=False) == []


@pytest.mark.parametrize("mode, name, reads", [
    ("static", "disparse-snip", True), ("pretrained", "disparse-gradflow", True),
    ("static", "magnitude", False), ("dynamic", "disparse-rigl", False),
    ("iterative", "taylor", False)])
def test_which_runs_read_the_scoring_batches(mode, name, reads):
    config = modes.resolved(RunConfig(mode=mode, scorer=name))
    assert modes.select(config).reads_score_batches() is reads


def test_no_scorer_reads_no_scoring_batches():
    assert not modes.select(modes.resolved(RunConfig(dense=True))).reads_score_batches()
    learned = modes.resolved(RunConfig(thresholder="soft-threshold"))
    assert not modes.select(learned).reads_score_batches()


def test_an_empty_split_is_an_error():
    check_not_empty("nyuv2", "train", 1)
    with pytest.raises(PrunekitError, match="dataset nyuv2, split val: no samples"):
        check_not_empty("nyuv2", "val", 0)


def run_on(capsys, tmp_path, train, val, *extra):
    root = tmp_path / "nyu"
    write_nyuv2(root, "train", train, size=(16, 16))
    write_nyuv2(root, "val", val, size=(16, 16))
    return invoke(capsys, "run", "--quick", "--no-progress", "--dataset", "nyuv2",
                  "--data-root", str(root), "--out", str(tmp_path / "r"), *extra)


def test_a_small_real_dataset_warns_and_the_report_keeps_the_warnings(capsys, tmp_path):
    code, _, err = run_on(capsys, tmp_path, 3, 2, "--batch-size", "4", "--val-samples", "6",
                          "--score-batches", "2")
    assert code == 0, err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    printed = [line.removeprefix("prunekit: warning: ") for line in err.splitlines()
               if line.startswith("prunekit: warning: dataset nyuv2")]
    assert printed == [w for w in report["warnings"] if w.startswith("dataset nyuv2")]
    assert [w.split(", fewer than ")[1].split(";")[0] for w in printed] == [
        "--batch-size 4", "--val-samples 6", "--score-batches 2 x --batch-size 4 = 8"]


def test_an_empty_validation_split_stops_the_run_with_one_line(capsys, tmp_path):
    # the NYUv2 reader refuses an empty folder itself; check_not_empty covers any other dataset
    code, _, err = run_on(capsys, tmp_path, 3, 0)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("prunekit: error: ") and "val" in err
    assert not (tmp_path / "r").exists()


def test_scoring_shortfalls_count_in_scoring_batches_of_their_own_size():
    config = RunConfig(batch_size=16, score_batch_size=4, score_batches=10)
    assert small_data_warnings(config, 40, 128, scoring=True) == []
    (warning,) = small_data_warnings(config, 30, 128, scoring=True)
    assert warning == ("dataset synthetic, split train: 30 samples, fewer than --score-batches "
                       "10 x --score-batch-size 4 = 40; scoring sums 7 batch(es) of 4")
