"""Exporting a pruned run with sparse kernels (prunekit.export, `prunekit export`) and the
kernel benchmarks of the command line (`prunekit bench conv|model`)."""
import json
import re

import pytest
import torch
from torch import nn

from prunekit import export
from prunekit.cli import main
from prunekit.ops import conv_timing
from prunekit.ops.conv_timing import ConvShape, bench_conv, crossovers, format_conv_table
from prunekit.timing import WARMUP, interleaved_median_ms
from prunekit.errors import PrunekitError
from prunekit.ops import SparseConv2d
from helpers import invoke

INPUT = (32, 40)  # the quick run's image size
# how the CPU kernel cuts a sparse layer's work (sparse_conv2d_schedule)
SCHEDULE = (r"(tiles \d+x\d+|runs of \d+( \+ border)?|strided), \d+ bands? x \d+ groups?"
            r"(, in place)?")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished quick run pruned to 90%."""
    folder = tmp_path_factory.mktemp("runs") / "pruned"
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--quick", "--no-progress", "--out", str(folder)])
    assert exit_.value.code == 0
    return folder


def all_sparse(model, masks, example):
    """The model with every masked conv swapped for its SparseConv2d, whatever the timings."""
    layers = [export.LayerChoice(name, "", 0.9, None, None, "sparse")
              for name, _ in export.masked_convs(model, masks)]
    return export.with_chosen_kernels(model, masks, layers)


def test_the_run_input_size_and_layers(run_dir):
    assert export.run_input_size(run_dir) == INPUT
    assert json.loads((run_dir / "report.json").read_text())["data"]["image_size"] == list(INPUT)
    model, masks = export.load_run(run_dir, "cpu")
    convs = export.masked_convs(model, masks)
    assert len(convs) == sum(isinstance(m, nn.Conv2d) for m in model.modules()) > 50
    for name, conv in convs:  # pruned weights are zero
        assert not conv.weight[~masks[f"{name}.weight"]].any()


def test_every_conv_sparse_gives_the_masked_models_outputs(run_dir):
    model, masks = export.load_run(run_dir, "cpu")
    example = torch.randn(2, 3, *INPUT)
    sparse = all_sparse(model, masks, example)
    assert sum(isinstance(m, SparseConv2d) for m in sparse.modules()) == len(
        export.masked_convs(model, masks))
    with torch.no_grad():
        want, got = model(example), sparse(example)
    for task in want:
        torch.testing.assert_close(got[task], want[task], rtol=1e-4, atol=1e-4)


def test_an_exported_all_sparse_program_round_trips_at_any_batch(run_dir, tmp_path):
    model, masks = export.load_run(run_dir, "cpu")
    example = torch.randn(1, 3, *INPUT)
    program = export.export_program(all_sparse(model, masks, example), example)
    assert not any("dropout" in str(node.target) for node in program.graph.nodes)
    torch.export.save(program, tmp_path / "model.pt2")
    loaded = export.load_exported(tmp_path / "model.pt2")
    for batch in (1, 3):
        x = torch.randn(batch, 3, *INPUT)
        with torch.no_grad():
            want, got = model(x), loaded(x)
        for task in want:
            torch.testing.assert_close(got[task], want[task], rtol=1e-4, atol=1e-4)


def test_export_run_writes_the_model_and_the_per_layer_report(run_dir, tmp_path):
    report = export.export_run(run_dir, repeats=1, out=tmp_path / "out")
    written = json.loads((tmp_path / "out" / export.REPORT_FILE).read_text())
    assert written["input_shape"] == [1, 3, *INPUT] and written["device"] == "cpu"
    assert len(written["layers"]) == len(report.layers) > 50
    for layer in written["layers"]:
        assert layer["kernel"] in ("sparse", "dense") and 0 <= layer["sparsity"] <= 1
        assert layer["dense_ms"] > 0 and layer["sparse_ms"] > 0
        faster = "sparse" if layer["sparse_ms"] < layer["dense_ms"] else "dense"
        assert layer["kernel"] == faster
        # a sparse layer says how the kernel cut its work; a dense one has nothing to say
        assert bool(layer["schedule"]) == (faster == "sparse")
        assert re.fullmatch(SCHEDULE, layer["schedule"]) or not layer["schedule"]
    assert written["dense_ms"] > 0 and written["chosen_ms"] > 0
    assert written["sparse_layers"] == sum(l["kernel"] == "sparse" for l in written["layers"])
    model, _ = export.load_run(run_dir, "cpu")
    loaded = export.load_exported(tmp_path / "out" / export.MODEL_FILE)
    x = torch.randn(2, 3, *INPUT)
    with torch.no_grad():
        want, got = model(x), loaded(x)
    for task in want:
        torch.testing.assert_close(got[task], want[task], rtol=1e-4, atol=1e-4)
    table = export.format_report(report)
    assert "end to end" in table
    for layer in report.layers:
        if layer.kernel == "sparse":
            assert f"sparse: {layer.schedule}" in table


def test_dense_kernels_keep_every_layer_dense(run_dir, tmp_path):
    report = export.export_run(run_dir, sparse_kernels=False, repeats=1, out=tmp_path)
    assert {layer.kernel for layer in report.layers} == {"dense"}
    assert all(layer.dense_ms is None for layer in report.layers)


def test_outputs_that_differ_are_refused(run_dir):
    model, masks = export.load_run(run_dir, "cpu")
    example = torch.randn(1, 3, *INPUT)
    broken = all_sparse(model, masks, example)
    first = next(m for m in broken.modules() if isinstance(m, SparseConv2d))
    with torch.no_grad():
        first.values.add_(1.0)
    with pytest.raises(PrunekitError, match="differs from the masked model"):
        export.check_same_outputs(model, broken, example)


def test_export_cli_writes_into_the_run_folder(capsys, run_dir):
    code, out, err = invoke(capsys, "export", str(run_dir), "--repeats", "1", "--batch", "2")
    assert code == 0, err
    assert "end to end, input 2x3x32x40" in out
    assert (run_dir / "export" / "model.pt2").is_file()
    code, out, _ = invoke(capsys, "bench", "model", str(run_dir), "--repeats", "1", "--json")
    assert code == 0 and json.loads(out)["input_shape"] == [1, 3, *INPUT]


@pytest.mark.parametrize("args, message", [
    (["export", "no/such/run"], "does not exist"),
    (["export", "{empty}"], "has no checkpoint.pt"),
    (["export", "{run}", "--device", "tpu"], "--device must be cpu or cuda"),
    (["export", "{run}", "--input-size", "big"], "HEIGHTxWIDTH"),
    (["export", "{run}", "--batch", "0"], "at least 1"),
    (["bench", "conv", "--sparsity", "0.9,1.5"], "sparsities must lie in [0, 1)"),
    (["bench", "conv", "--repeats", "0"], "at least 1"),
    (["bench", "model", "{empty}"], "has no checkpoint.pt"),
])
def test_bad_input_is_one_line_and_exit_code_2(capsys, tmp_path, run_dir, args, message):
    args = [a.format(run=run_dir, empty=tmp_path) for a in args]
    code, _, err = invoke(capsys, *args)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_the_input_size_is_the_one_the_samples_had(tmp_path):
    """A dataset stored at several sizes (NYUv2: 288x384 .npy, 480x640 JSON): the report's
    record of the samples wins over the dataset's usual size."""
    (tmp_path / "report.json").write_text(json.dumps(
        {"config": {"dataset": "nyuv2", "image_size": None}, "data": {"image_size": [480, 640]}}))
    assert export.run_input_size(tmp_path) == (480, 640)


@pytest.mark.parametrize("report, message", [
    ({"config": {"image_size": 64}}, "not two sizes of at least 8"),
    ({"config": {"image_size": [64, 80, 3]}}, "not two sizes of at least 8"),
    ({"config": {"image_size": [4, 4]}}, "not two sizes of at least 8"),
    ({"config": []}, "no readable report.json"),
    ({"config": {"dataset": ["synthetic"]}}, "has no known image size"),
    ({}, "no readable report.json"),
])
def test_a_broken_report_is_one_line_and_exit_code_2(capsys, tmp_path, run_dir, report, message):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "checkpoint.pt").write_bytes((run_dir / "checkpoint.pt").read_bytes())
    (folder / "report.json").write_text(json.dumps(report))
    code, _, err = invoke(capsys, "bench", "model", str(folder), "--repeats", "1")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("drop", ["config", "masks"])
def test_a_checkpoint_without_its_config_or_masks_is_refused(capsys, tmp_path, run_dir, drop):
    folder = tmp_path / "run"
    folder.mkdir()
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    del checkpoint[drop]
    torch.save(checkpoint, folder / "checkpoint.pt")
    code, _, err = invoke(capsys, "export", str(folder), "--input-size", "32x40")
    assert code == 2 and "is not a pruned run's checkpoint" in err
    assert len(err.strip().splitlines()) == 1


def test_unwritable_outputs_are_refused_before_any_work(capsys, tmp_path, run_dir):
    (tmp_path / "file").write_text("")
    code, _, err = invoke(capsys, "export", str(run_dir), "--out", str(tmp_path / "file"))
    assert code == 2 and "is an existing file" in err
    code, _, err = invoke(capsys, "bench", "conv", "--plot", str(tmp_path))
    assert code == 2 and "is a folder" in err
    code, _, err = invoke(capsys, "bench", "conv", "--plot", str(tmp_path / "no" / "x.png"))
    assert code == 2 and "does not exist" in err


def test_a_file_that_is_not_an_exported_model_is_refused(tmp_path):
    (tmp_path / "model.pt2").write_text("not a model")
    with pytest.raises(PrunekitError, match="could not be loaded"):
        export.load_exported(tmp_path / "model.pt2")


def test_bench_conv_rows_table_and_crossovers():
    shapes = [ConvShape("3x3 8@12x12", 8, 8, 3, 12, 12, padding=1),
              ConvShape("1x1 16->4@9x7", 16, 4, 1, 9, 7)]
    rows = bench_conv([0.5, 0.9], repeats=1, shapes=shapes)
    assert [(r["layer"], r["sparsity"]) for r in rows] == [
        (s.name, p) for s in shapes for p in (0.5, 0.9)]
    for row in rows:
        assert row["speedup"] == pytest.approx(row["dense_ms"] / row["sparse_ms"], rel=1e-2)
    # the roofline: dense multiply-adds of the whole weight, sparse ones of the kept weights
    dense_macs = {"3x3 8@12x12": 12 * 12 * 8 * 8 * 9, "1x1 16->4@9x7": 9 * 7 * 16 * 4}
    for row in rows:
        assert row["dense_gmacs"] == pytest.approx(
            dense_macs[row["layer"]] / (row["dense_ms"] * 1e6), rel=1e-2, abs=1e-3)
        kept_share = row["sparse_gmacs"] * row["sparse_ms"] / (row["dense_gmacs"] * row["dense_ms"])
        assert kept_share == pytest.approx(1 - row["sparsity"], abs=0.15)  # random masks
    table = format_conv_table(rows)
    assert "3x3 8@12x12" in table and "sparsity 0.9" in table and "GMAC/s" in table


def test_bench_conv_channels_last_times_both_on_a_channels_last_input(monkeypatch):
    seen = []

    def record(conv, sparse, x, repeats):
        seen.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return conv_timing.ConvTiming(1.0, 0.5)

    monkeypatch.setattr(conv_timing, "time_dense_and_sparse", record)
    shapes = [ConvShape("1x1 16->4@9x7", 16, 4, 1, 9, 7)]
    rows = bench_conv([0.9], repeats=1, shapes=shapes, channels_last=True)
    assert seen == [True] and rows[0]["channels_last"] is True
    bench_conv([0.9], repeats=1, shapes=shapes)
    assert seen == [True, False]


def test_output_positions_of_padded_and_dilated_shapes():
    assert ConvShape("a", 1, 1, 3, 36, 48, padding=2, dilation=2).output_positions(2) == 2 * 36 * 48
    assert ConvShape("b", 1, 1, 3, 10, 10).output_positions(1) == 8 * 8
    assert ConvShape("c", 1, 1, 1, 14, 14).output_positions(3) == 3 * 14 * 14


def test_what_is_compared_is_timed_in_turns():
    calls = []
    dense, sparse = (lambda x: calls.append("dense")), (lambda x: calls.append("sparse"))
    times = interleaved_median_ms([dense, sparse], torch.zeros(1), repeats=4)
    assert calls == ["dense", "sparse"] * (WARMUP + 4)
    assert len(times) == 2 and all(ms >= 0 for ms in times)


def test_crossover_is_where_sparse_stays_faster():
    rows = [{"layer": "a", "sparsity": s, "speedup": x}
            for s, x in ((0.7, 0.8), (0.8, 1.1), (0.9, 0.9), (0.95, 2.0))]
    rows += [{"layer": "b", "sparsity": s, "speedup": x} for s, x in ((0.7, 1.2), (0.9, 3.0))]
    rows += [{"layer": "c", "sparsity": 0.9, "speedup": 0.5}]
    assert crossovers(rows) == {"a": 0.95, "b": 0.7, "c": None}


def test_bench_conv_cli_json_and_plot(capsys, tmp_path):
    plot = tmp_path / "speedup.png"
    code, out, err = invoke(capsys, "bench", "conv", "--sparsity", "0.95", "--repeats", "1",
                            "--json", "--plot", str(plot))
    assert code == 0, err
    record = json.loads(out)
    assert {row["layer"] for row in record["rows"]} == set(record["crossovers"])
    assert len(record["rows"]) == 8
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert record["channels_last"] is False


def test_bench_conv_cli_channels_last(capsys):
    code, out, err = invoke(capsys, "bench", "conv", "--sparsity", "0.95", "--repeats", "1",
                            "--channels-last", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["channels_last"] is True and len(record["rows"]) == 8
    assert all(row["channels_last"] and row["sparse_ms"] > 0 for row in record["rows"])
