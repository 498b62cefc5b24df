"""Hostile inputs: each gives one clear line and exit code 2 (or a clean stop), and nothing
written before is lost."""
import copy
import errno
import io
import json
import pickle
from pathlib import Path

import pytest
import torch

from prunekit import load_checkpoint, pipeline
from prunekit.training import loop as training
from prunekit.data.synthetic import SyntheticIndoorScenes
from prunekit.pipeline.config import QUICK, RunConfig
from prunekit.errors import NonFiniteLossError, PrunekitError
from prunekit.export import masked_convs
from prunekit.files import atomic_write, write_json
from prunekit.models import build_model
from prunekit.ops import SparseConv2d
from prunekit.training.resume import RESUME_FILE
from helpers import invoke


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prunekit: error: "), err
    return lines[0]


def run_quick(capsys, out_dir, *extra):
    return invoke(capsys, "run", "--quick", "--no-progress", "--out", str(out_dir), *extra)


# --- config files -------------------------------------------------------------------------

BAD_CONFIGS = {
    "unknown key": ("run.json", '{"sparsty": 0.5}', "unknown setting 'sparsty'; did you mean "
                                                    "'sparsity'?"),
    "int given a string": ("run.json", '{"iterations": "ten"}',
                           "iterations must be an integer, got 'ten'"),
    "bool given a string": ("run.json", '{"compensate": "yes"}',
                            "compensate must be true or false"),
    "float given a bool": ("run.json", '{"sparsity": true}', "sparsity must be a number"),
    "pair of one": ("run.json", '{"image_size": [32]}',
                    "image_size must be a list of 2 integers or null"),
    "list of the wrong kind": ("run.json", '{"tasks": ["seg", 3]}',
                               "tasks must be a list of strings"),
    "not JSON": ("run.json", '{"sparsity": 0.5,', "is not valid JSON"),
    "not TOML": ("run.toml", 'sparsity = = 0.5', "is not valid TOML"),
    "not an object": ("run.json", '[1, 2]', "must hold one table of settings"),
    "not a number": ("run.json", '{"theta_decay": NaN}', "theta decay must be a finite number"),
    "tiny images": ("run.json", '{"image_size": [4, 40]}', "images must be at least 8x8"),
}


@pytest.mark.parametrize("name, text, message", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_bad_config_files_are_one_line(capsys, tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    code, _, err = run_quick(capsys, tmp_path / "run", "--config", str(tmp_path / name))
    assert code == 2
    assert message in one_error_line(err)
    assert not (tmp_path / "run").exists()


def test_a_missing_config_file_or_a_folder(capsys, tmp_path):
    code, _, err = run_quick(capsys, tmp_path / "run", "--config", str(tmp_path / "none.toml"))
    assert code == 2 and "does not exist" in one_error_line(err)
    code, _, err = run_quick(capsys, tmp_path / "run", "--config", str(tmp_path))
    assert code == 2 and "is not a file" in one_error_line(err)


def test_config_file_settings_and_the_command_line_winning(capsys, tmp_path):
    (tmp_path / "run.toml").write_text('sparsity = 0.8\nscore-batches = 2\niterations = 2\n'
                                       'tasks = ["seg", "depth"]\nimage_size = [32, 40]\n')
    code, _, err = run_quick(capsys, tmp_path / "run", "--config", str(tmp_path / "run.toml"),
                             "--iterations", "3")
    assert code == 0, err
    config = json.loads((tmp_path / "run" / "report.json").read_text())["config"]
    assert config["sparsity"] == 0.8 and config["score_batches"] == 2
    assert config["tasks"] == ["seg", "depth"] and config["image_size"] == [32, 40]
    assert config["iterations"] == 3  # typed on the command line


# --- data ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_in_the_input_images(capsys, tmp_path, monkeypatch, bad):
    original = SyntheticIndoorScenes.__getitem__

    def poisoned(self, index):
        sample = original(self, index)
        sample["image"][0, 0, 0] = bad
        return sample
    monkeypatch.setattr(SyntheticIndoorScenes, "__getitem__", poisoned)
    code, _, err = run_quick(capsys, tmp_path / "run")
    assert code == 2
    assert "input image of the data holds NaN or inf" in one_error_line(err)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["complete"] is False and not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_data_folder_of_another_layout(capsys, tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "images" / "0001.png").write_bytes(b"\x89PNG not really")
    code, _, err = run_quick(capsys, tmp_path / "run", "--dataset", "nyuv2", "--data-root",
                             str(root))
    assert code == 2 and "no NYUv2 data in" in one_error_line(err)
    assert "expected the .npy layout" in err and "or the JSON layout" in err
    assert not (tmp_path / "run").exists()


# --- training -----------------------------------------------------------------------------

def test_a_loss_that_becomes_nan_keeps_the_last_checkpoint(capsys, tmp_path, monkeypatch):
    original = training.check_loss

    def nan_from_step_4(task, loss, where):
        if where.endswith("step 3"):  # the fourth step (steps count from 0)
            loss = torch.tensor(float("nan"))
        original(task, loss, where)
    monkeypatch.setattr(training, "check_loss", nan_from_step_4)
    out_dir = tmp_path / "run"
    code, _, err = run_quick(capsys, out_dir, "--iterations", "6", "--checkpoint-every", "1")
    assert code == 2
    line = one_error_line(err)
    assert "loss is nan during training step 3" in line
    assert f"the last checkpoint before it is kept in {out_dir / RESUME_FILE}" in line
    kept = torch.load(out_dir / RESUME_FILE, weights_only=True)
    assert kept["resumption"]["step"] == 3
    assert json.loads((out_dir / "report.json").read_text())["complete"] is False


class FullDisk(io.RawIOBase):
    """A file on a disk with no space left: every write fails as the system's would."""

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(capsys, tmp_path,
                                                                   monkeypatch):
    original, opened = Path.open, []

    def open_(self, mode="r", *args, **kwargs):
        if self.name.startswith(f".{RESUME_FILE}.") and "w" in mode:
            opened.append(self)
            if len(opened) == 3:  # the third checkpoint finds the disk full
                return FullDisk()
        return original(self, mode, *args, **kwargs)
    monkeypatch.setattr(Path, "open", open_)
    out_dir = tmp_path / "run"
    code, _, err = run_quick(capsys, out_dir, "--iterations", "6", "--checkpoint-every", "1")
    assert code == 2
    line = one_error_line(err)
    assert f"could not write {str(out_dir / RESUME_FILE)!r}: No space left on device" in line
    monkeypatch.undo()
    kept = torch.load(out_dir / RESUME_FILE, weights_only=True)  # the second, whole
    assert kept["resumption"]["step"] == 2
    assert not list(out_dir.glob(".*.tmp"))


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    write_json(path, {"old": True})

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(PrunekitError, match="No space left on device"):
        write_json(path, {"new": True})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    with pytest.raises(PrunekitError, match="could not write"):  # a folder where a file goes
        atomic_write(tmp_path / "report.json" / "x", lambda temporary: None)


# --- checkpoints to resume from -------------------------------------------------------------

@pytest.fixture
def stopped_run(tmp_path, monkeypatch):
    """A quick run killed right after its second checkpoint."""
    class Killed(BaseException):
        pass
    from prunekit.pipeline.steps import PhaseCheckpoints
    original, written = PhaseCheckpoints.write, []

    def write(self, state):
        original(self, state)
        written.append(state.step)
        if len(written) == 2:
            raise Killed()
    monkeypatch.setattr(PhaseCheckpoints, "write", write)
    with pytest.raises(Killed):
        pipeline.run(RunConfig(out=str(tmp_path / "run"), **{**QUICK, "iterations": 6,
                                                           "checkpoint_every": 1}))
    monkeypatch.undo()
    return tmp_path / "run"


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "empty"])
def test_a_damaged_resume_checkpoint(capsys, stopped_run, damage):
    path = stopped_run / RESUME_FILE
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:len(data) // 2], "random bytes": bytes(range(256)) * 8,
                      "empty": b""}[damage])
    code, _, err = invoke(capsys, "run", "--resume", str(stopped_run))
    assert code == 2 and "could not be read as a checkpoint" in one_error_line(err)


def test_a_checkpoint_that_is_not_a_resume_checkpoint(capsys, stopped_run, tmp_path):
    torch.save({"model": {}}, stopped_run / RESUME_FILE)
    code, _, err = invoke(capsys, "run", "--resume", str(stopped_run))
    assert code == 2 and "is not a prunekit resume checkpoint" in one_error_line(err)


def test_a_resume_checkpoint_of_another_model(capsys, stopped_run):
    path = stopped_run / RESUME_FILE
    state = torch.load(path, weights_only=True)
    state["config"]["width"] = 0.25  # the weights are of the 0.125 model
    torch.save(state, path)
    code, _, err = invoke(capsys, "run", "--resume", str(stopped_run))
    assert code == 2 and "does not fit the run it describes" in one_error_line(err)
    assert path.is_file()  # nothing lost


def test_a_resume_in_another_number_of_processes(capsys, stopped_run):
    path = stopped_run / RESUME_FILE
    state = torch.load(path, weights_only=True)
    state["world_size"] = 2
    torch.save(state, path)
    code, _, err = invoke(capsys, "run", "--resume", str(stopped_run))
    assert code == 2 and "checkpointed in 2 process(es)" in one_error_line(err)


def test_resume_refuses_other_settings_and_finished_runs(capsys, stopped_run):
    code, _, err = invoke(capsys, "run", "--resume", str(stopped_run), "--sparsity", "0.5")
    assert code == 2 and "leave out --sparsity" in one_error_line(err)
    code, _, err = invoke(capsys, "run", "--resume", str(stopped_run))
    assert code == 0, err
    code, _, err = invoke(capsys, "run", "--resume", str(stopped_run))
    assert code == 2 and "the run finished" in one_error_line(err)
    code, _, err = invoke(capsys, "run", "--resume", str(stopped_run / "nothing"))
    assert code == 2 and "does not exist" in one_error_line(err)


# --- masked models survive copies ---------------------------------------------------------

@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("pruned") / "run"
    pipeline.run(RunConfig(out=str(out_dir), **QUICK))
    return out_dir


def all_sparse(model, masks):
    """``model`` with every masked conv a SparseConv2d (the kept weights only)."""
    for name, conv in masked_convs(model, masks):
        model.set_submodule(name, SparseConv2d.from_conv(conv, masks[f"{name}.weight"]))
    return model


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("kernels", ["masked dense", "sparse"])
def test_masked_models_survive_deepcopy_pickle_and_state_dict(pruned_run, kernels):
    model, masks = load_checkpoint(pruned_run / "checkpoint.pt")
    if kernels == "sparse":
        model = all_sparse(model, masks)
    x = torch.randn(2, 3, 32, 40, generator=torch.Generator().manual_seed(0))
    expected = outputs(model, x)
    for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        for task, output in outputs(copied, x).items():
            assert torch.equal(output, expected[task])
    config = torch.load(pruned_run / "checkpoint.pt", weights_only=True)["config"]
    fresh = build_model(config["model"], config["task_channels"], config["width"])
    if kernels == "sparse":
        fresh = all_sparse(fresh, masks)
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert not any(name.endswith("_orig") for name in fresh.state_dict())
    for task, output in outputs(fresh, x).items():
        assert torch.equal(output, expected[task])
