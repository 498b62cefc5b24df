"""The shipped paper configurations (configs/*.toml): every one valid, listed, and usable."""
import json

import pytest

from prunekit.cli.base import cli
from prunekit.cli.options import DEFAULTS
from prunekit.pipeline.config import RunConfig
from prunekit.pipeline.config_file import (PRESETS_DIR, command_line, find_preset, parse,
                                           presets, read_config_file)
from prunekit.pipeline.engine import Run
from prunekit.core.batch import no_progress

from helpers import invoke

SHIPPED = presets()
RUN_PRESETS = [p for p in SHIPPED if p.command == "run"]
OTHER_PRESETS = [p for p in SHIPPED if p.command != "run"]


def test_every_seed_has_its_presets():
    names = {p.name for p in SHIPPED}
    for setting in ("static", "pretrained", "dynamic"):
        for data in ("nyuv2", "cityscapes", "taskonomy"):
            assert f"disparse-{setting}-{data}" in names
    assert {"adapmtl-nyuv2", "taylor-nyuv2", "cosprune-nyuv2", "watershed-nyuv2",
            "similarity-taskonomy", "group-taskonomy"} <= names


@pytest.mark.parametrize("found", RUN_PRESETS, ids=lambda p: p.name)
def test_a_run_preset_builds_a_valid_config_with_known_plugins(found):
    config = RunConfig(**{**DEFAULTS, **read_config_file(found.path)})
    Run(config, no_progress).check()  # validate, plugins by name, the mode's own checks
    assert config.dataset != "synthetic" and config.width == 1.0
    assert found.summary


@pytest.mark.parametrize("found", OTHER_PRESETS, ids=lambda p: p.name)
def test_another_commands_preset_names_only_its_options(found):
    command = cli.commands[found.command]
    options = {option.lstrip("-") for param in command.params for option in param.opts}
    for key in parse(found.path):
        assert key.replace("_", "-") in options, (found.name, key)


def test_disparse_presets_score_as_the_authors_code_does():
    for found in RUN_PRESETS:
        if found.name.startswith("disparse-"):
            settings = read_config_file(found.path)
            assert settings["score_resolution"] == "output" and settings["batch_size"] == 16


def test_presets_lists_each_preset_on_one_line(capsys):
    code, out, _ = invoke(capsys, "presets")
    assert code == 0
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines] == [p.name for p in SHIPPED]
    assert all(f"prunekit {p.command}" in line for p, line in zip(SHIPPED, lines))


def test_a_preset_without_its_data_is_the_data_error(capsys, tmp_path):
    code, _, err = invoke(capsys, "run", "--preset", "disparse-static-nyuv2", "--no-progress",
                          "--out", str(tmp_path / "r"))
    assert code == 2
    assert err.strip() == "prunekit: error: --dataset nyuv2-40 needs --data-root PATH"


@pytest.mark.parametrize("args, message", [
    (["--preset", "disparse-static"], "unknown preset 'disparse-static'"),
    (["--preset", "watershed-nyuv2"], "is for prunekit similarity, not prunekit run; type: "
                                      "prunekit similarity --tasks seg,normal"),
    (["--preset", "adapmtl-nyuv2", "--config", "x.toml"], "not both")])
def test_preset_mistakes_are_one_line(capsys, args, message):
    code, _, err = invoke(capsys, "run", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_typed_options_win_over_the_preset(capsys, tmp_path):
    code, _, err = invoke(capsys, "run", "--preset", "disparse-static-nyuv2", "--no-progress",
                          "--dataset", "synthetic", "--width", "0.125", "--image-size", "32x40",
                          "--iterations", "2", "--score-batches", "1", "--batch-size", "2",
                          "--val-samples", "4", "--out", str(tmp_path / "r"))
    assert code == 0, err
    config = json.loads((tmp_path / "r" / "report.json").read_text())["config"]
    assert (config["dataset"], config["iterations"], config["score_batches"]) == (
        "synthetic", 2, 1)
    assert (config["score_resolution"], config["lr"], config["tasks"]) == (
        "output", 1e-3, ["seg", "normal"])


def test_the_command_line_of_a_preset_reads_back_its_settings():
    line = command_line(find_preset("group-taskonomy", "group"))
    assert line == "prunekit group --table-tasks s,d,n,k,e --lower-is-better --budget 3.0"
    assert PRESETS_DIR.name == "configs"


def test_group_and_similarity_take_their_presets(capsys, tmp_path):
    """The group preset's columns, budget and loss direction apply to a table given beside it;
    a typed --budget wins; a run preset is refused by similarity."""
    half, alone = "\t".join(["1.0"] * 5), ["\t" * i + "0.9" + "\t" * (4 - i) for i in range(5)]
    pair = ["0.5\t0.5\t\t\t"]  # s and d train well together (lower is better)
    (tmp_path / "val.txt").write_text("\n".join([half, *alone, *pair]) + "\n")
    code, out, err = invoke(capsys, "group", "--preset", "group-taskonomy", "--table",
                            str(tmp_path / "val.txt"), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["budget"] == 3.0 and sorted(result["tasks"]) == sorted("sdnke")
    assert ["d", "s"] in [sorted(network["tasks"]) for network in result["networks"]]
    code, out, err = invoke(capsys, "group", "--preset", "group-taskonomy", "--table",
                            str(tmp_path / "val.txt"), "--budget", "5", "--json")
    assert code == 0 and json.loads(out)["budget"] == 5.0
    code, _, err = invoke(capsys, "similarity", "--preset", "disparse-static-nyuv2")
    assert code == 2 and "is for prunekit run, not prunekit similarity" in err
    code, _, err = invoke(capsys, "similarity", "--preset", "watershed-nyuv2")
    assert code == 2 and err.strip() == "prunekit: error: --dataset nyuv2-40 needs --data-root PATH"


# the authors' config_{nyuv2,cityscapes,taskonomy}.py (LAMBDAS, WEIGHT_DECAY, DECAY_LR_*) and
# AdapMTL's args.py; docs/methods.md
AUTHORS_TRAINING = {
    "disparse-nyuv2": (5e-4, 4000, 0.5, ("seg=1", "normal=20")),
    "disparse-cityscapes": (5e-4, 4000, 0.5, ("seg=1", "depth=20")),
    "disparse-taskonomy": (5e-4, 12000, 0.3, ("seg=1", "normal=3", "depth=2", "keypoint=7",
                                              "edge=7")),
    "adapmtl-nyuv2": (1e-4, 4000, 0.5, ()),
    "adapmtl-taskonomy": (1e-4, 12000, 0.3, ()),
}


@pytest.mark.parametrize("found", [p for p in RUN_PRESETS if p.name.startswith(("disparse-",
                                                                                "adapmtl-"))],
                         ids=lambda p: p.name)
def test_paper_presets_train_as_the_authors_code_does(found):
    seed, *_, data = found.name.split("-")
    config = RunConfig(**{**DEFAULTS, **read_config_file(found.path)})
    assert (config.weight_decay, config.lr_step_every, config.lr_step_factor,
            config.task_loss_weights) == AUTHORS_TRAINING[f"{seed}-{data}"]
    assert config.lr_schedule == "step"
    scores_on_four = found.name in ("disparse-static-taskonomy", "disparse-pretrained-taskonomy")
    assert config.score_batch_size == (4 if scores_on_four else None)
