"""A plugin that breaks its contract ends a run with one clear error line, never a traceback.

tests/broken_plugins is a pip-installable package, ``prunekit-broken-plugins`` 0.1.0, holding
one deliberately broken plugin per way of breaking the contract (prunekit/contract.py): scorers,
thresholders, arbiters and metrics that return None, raise, return wrong keys, shapes, dtypes,
devices, non-finite values or the wrong keep counts. As in test_third_party_plugin.py it is
copied to a temporary folder, installed there with ``pip install --target`` and put on
PYTHONPATH of CLI subprocesses only.

Every broken run must exit with code 2 and one stderr line
``prunekit: error: <kind> '<name>' (prunekit-broken-plugins 0.1.0): <problem>`` (or, for masks
that miss the requested sparsity, ``prunekit: error: the masks are X sparse, Y was requested``
naming the plugins in play), show no traceback, and leave no report claiming completeness and no
checkpoint.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from plugin_packages import install, prunekit

PACKAGE = Path(__file__).parent / "broken_plugins"
DISTRIBUTION = "prunekit-broken-plugins"
VERSION = "0.1.0"
SOURCE = f"({DISTRIBUTION} {VERSION})"
ERROR = "prunekit: error: "
GOOD_SCORER = "good-per-task-magnitude"
SPARSITY = 0.9
TOLERANCE = 0.005


@dataclass(frozen=True)
class Case:
    kind: str
    name: str
    args: tuple[str, ...]
    problem: str | None = None   # a regular expression the problem text must match
    sparsity_miss: bool = False  # the error is the run's sparsity check, naming the plugins
    variant: str = ""            # tells apart two cases of one plugin

    @property
    def id(self) -> str:
        return f"{self.name}-{self.variant}" if self.variant else self.name


def default_args(kind: str, name: str) -> tuple[str, ...]:
    """Scorers run alone; thresholders with the joint, data-free magnitude scorer; arbiters
    and metrics with the default per-task scorer (disparse-snip, three tasks)."""
    return {"scorer": ("--scorer", name),
            "thresholder": ("--scorer", "magnitude", "--thresholder", name),
            "arbiter": ("--arbiter", name),
            "metric": ("--metric", name)}[kind]


def case(kind: str, name: str, problem: str | None, *args: str, **flags) -> Case:
    return Case(kind, name, tuple(args) or default_args(kind, name), problem, **flags)


SHAPE4 = r"\[\d+, \d+, \d+, \d+\]"
CASES = [
    # scorers: per-task (three tasks) unless noted, data-free
    case("scorer", "broken-scorer-broadcast-shape",
         rf"saliency of task 'seg' of '[\w.]+': expected shape {SHAPE4}, got \[\d+, 1, 1, 1\]$"),
    case("scorer", "broken-scorer-none", r"^score\(\) returned None$"),
    case("scorer", "broken-scorer-raises",
         r"^score\(\) raised ValueError: the scorer fell over second line of the message "
         r"third line$"),
    case("scorer", "broken-scorer-missing-tensor",
         r"^returned no saliency of task 'seg' tensors for '[\w.]+'$"),
    case("scorer", "broken-scorer-extra-tensor",
         r"^returned saliency of task 'seg' tensors for 'not\.a\.parameter\.weight', which was "
         r"not asked for \(expected: '[\w.]+'"),
    case("scorer", "broken-scorer-extra-task",
         r"^returned saliency for 'not-a-task', which was not asked for "
         r"\(expected: 'seg', 'depth', 'normal'\)$"),
    case("scorer", "broken-scorer-joint-key",
         r"^returned saliency for 'joint', which was not asked for"),
    case("scorer", "broken-scorer-int-dtype",
         r"saliency of task 'seg' of '[\w.]+': expected a floating dtype, got torch\.int64$"),
    case("scorer", "broken-scorer-nan",
         r"^saliency of task 'normal' of '[\w.]+': expected finite values, got nan$"),
    case("scorer", "broken-scorer-inf",
         r"^saliency of task 'seg' of '[\w.]+': expected finite values, got inf$"),
    case("scorer", "broken-scorer-meta-device",
         r"^saliency of task 'seg' of '[\w.]+': expected device cpu, got meta$"),
    case("scorer", "broken-scorer-list", r"^returned a list, expected a dict of saliency$"),
    case("scorer", "broken-scorer-tensor-per-task",
         r"^returned a Tensor, expected a dict of saliency of task 'seg' tensors$"),
    case("scorer", "broken-scorer-numpy",
         r"^saliency of task 'seg' of '[\w.]+': expected a tensor, got ndarray$"),
    case("scorer", "broken-scorer-nan-second-round",
         r"^saliency of task 'seg' of '[\w.]+': expected finite values, got nan$"),
    # right shape, dtype and device, but a sparse COO tensor (torch.sparse_coo, not strided)
    case("scorer", "broken-scorer-sparse", r"saliency of task 'seg' of '[\w.]+': .*sparse"),
    # thresholders, with the joint magnitude scorer
    case("thresholder", "broken-thresholder-keeps-all",
         r"^kept (\d+) of \1 elements at keep ratio 0\.1; expected \d+ \(give or take \d+, one "
         r"per tensor\)$"),
    case("thresholder", "broken-thresholder-keeps-too-many",
         r"^kept \d+ of \d+ elements at keep ratio 0\.1; expected \d+"),
    case("thresholder", "broken-thresholder-keeps-none",
         r"^kept 0 of \d+ elements at keep ratio 0\.1; expected \d+"),
    case("thresholder", "broken-thresholder-float-masks",
         r"^mask of '[\w.]+': expected dtype torch\.bool, got torch\.float32$"),
    case("thresholder", "broken-thresholder-wrong-shape",
         rf"^mask of '[\w.]+': expected shape {SHAPE4}, got \[\d+\]$"),
    case("thresholder", "broken-thresholder-missing-tensor", r"^returned no masks for '[\w.]+'$"),
    case("thresholder", "broken-thresholder-extra-tensor",
         r"^returned masks for 'not\.a\.parameter\.weight', which was not asked for"),
    case("thresholder", "broken-thresholder-meta-device",
         r"^mask of '[\w.]+': expected device cpu, got meta$"),
    case("thresholder", "broken-thresholder-none", r"^masks\(\) returned None$"),
    case("thresholder", "broken-thresholder-raises",
         r"^masks\(\) raised RuntimeError: the thresholder fell over$"),
    case("thresholder", "broken-thresholder-sparse", r"^mask of '[\w.]+': .*sparse"),
    # ... and with a per-task scorer, whose masks go through the bisection
    case("thresholder", "broken-thresholder-keeps-too-many",
         r"^kept \d+ of \d+ elements at keep ratio", "--thresholder",
         "broken-thresholder-keeps-too-many", "--scorer", "disparse-snip",
         variant="with-disparse-snip"),
    case("thresholder", "broken-thresholder-float-masks",
         r"expected dtype torch\.bool, got torch\.float32$", "--thresholder",
         "broken-thresholder-float-masks", "--scorer", GOOD_SCORER,
         variant="with-a-per-task-scorer"),
    # its sparse masks must be blamed on it, not on the arbiter that merges them
    case("thresholder", "broken-thresholder-sparse", r"^mask of '[\w.]+': .*sparse",
         "--thresholder", "broken-thresholder-sparse", "--scorer", GOOD_SCORER,
         variant="with-a-per-task-scorer"),
    # keeps the right count, but of the lowest scores: the second round of iterative pruning
    # keeps weights already pruned, which the run then drops; the masks overshoot the sparsity
    case("thresholder", "broken-thresholder-keeps-lowest", None, "--mode", "iterative",
         "--thresholder", "broken-thresholder-keeps-lowest", sparsity_miss=True,
         variant="iterative"),
    # arbiters, with disparse-snip on three tasks
    case("arbiter", "broken-arbiter-keeps-all",
         r"^merged mask of '[\w.]+': expected a subset of the tasks' union, got \d+ element\(s\) "
         r"that no task kept$"),
    case("arbiter", "broken-arbiter-wrong-shape",
         rf"^merged mask of '[\w.]+': expected shape {SHAPE4}, got \[\d+\]$"),
    case("arbiter", "broken-arbiter-uint8",
         r"^merged mask of '[\w.]+': expected dtype torch\.bool, got torch\.uint8$"),
    case("arbiter", "broken-arbiter-float",
         r"^merged mask of '[\w.]+': expected dtype torch\.bool, got torch\.float32$"),
    case("arbiter", "broken-arbiter-meta-device",
         r"^merged mask of '[\w.]+': expected device cpu, got meta$"),
    case("arbiter", "broken-arbiter-none", r"^merge\(\) returned None$"),
    case("arbiter", "broken-arbiter-raises",
         r"^merge\(\) raised IndexError: list index out of range$"),
    case("arbiter", "broken-arbiter-list",
         r"^merged mask of '[\w.]+': expected a tensor, got list$"),
    case("arbiter", "broken-arbiter-sparse", r"^merged mask of '[\w.]+': .*sparse"),
    # fills the tasks' masks it was given with True and returns one: it keeps weights that no
    # task kept; --no-compensate, so no sparsity check can stand in for the contract's
    case("arbiter", "broken-arbiter-keeps-all-in-place",
         r"^merge\(\) changed its input mask 0 of '[\w.]+' in place", "--arbiter",
         "broken-arbiter-keeps-all-in-place", "--no-compensate", variant="no-compensate"),
    # metrics (report.json task_overlap), with disparse-snip on three tasks
    case("metric", "broken-metric-nan",
         r"^layer_score of '[\w.]+': expected a finite number, got nan$"),
    case("metric", "broken-metric-inf",
         r"^layer_score of '[\w.]+': expected a finite number, got -inf$"),
    case("metric", "broken-metric-tensor",
         r"^layer_score of '[\w.]+': expected a float, got Tensor$"),
    case("metric", "broken-metric-none", r"^layer_score\(\) returned None$"),
    case("metric", "broken-metric-raises",
         r"^layer_score\(\) raised ZeroDivisionError: division by zero$"),
    case("metric", "broken-metric-string", r"^layer_score of '[\w.]+': expected a float, got str$"),
    case("metric", "broken-metric-bool", r"^layer_score of '[\w.]+': expected a float, got bool$"),
    # 10 ** 400 is a numbers.Real that no float can hold
    case("metric", "broken-metric-huge-int",
         r"^layer_score of '[\w.]+': expected a (float|finite number), got "),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The broken plugins installed into a fresh folder (pip runs once for this module)."""
    return install(PACKAGE, tmp_path_factory.mktemp("broken_plugins"))


def quick_run(site: Path, out: Path, *args: str, before: tuple[str, ...] = ()):
    """``prunekit [BEFORE] run --quick --no-progress --out OUT ARGS``."""
    return prunekit(site, out.parent, *before, "run", "--quick", "--no-progress",
                    "--out", str(out), *args)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one stderr line of a run a broken plugin ended, checked for the common form."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(ERROR), lines[0]
    return lines[0]


def report_of(out: Path, name: str = "report.json") -> dict | None:
    path = out / name
    return json.loads(path.read_text()) if path.exists() else None


def assert_no_complete_outputs(out: Path) -> None:
    report = report_of(out)
    assert report is None or report["complete"] is False, report
    assert not (out / "checkpoint.pt").exists()


@pytest.mark.parametrize("broken", CASES, ids=[c.id for c in CASES])
def test_a_broken_plugin_ends_the_run_with_one_line(site, tmp_path, broken: Case):
    out = tmp_path / "run"
    line = error_line(quick_run(site, out, *broken.args))
    plugin = f"{broken.kind} '{broken.name}' {SOURCE}"
    if broken.sparsity_miss:
        match = re.match(rf"{ERROR}the masks are (\d\.\d+) sparse, (\d\.\d+) was requested "
                         rf"\(tolerance [\d.e-]+\): the plugins in play are (.+)$", line)
        assert match, line
        achieved, requested = float(match[1]), float(match[2])
        assert abs(achieved - requested) > TOLERANCE, line
        assert plugin in match[3].split(", "), line
    else:
        assert line.startswith(f"{ERROR}{plugin}: "), line
        problem = line[len(f"{ERROR}{plugin}: "):]
        assert re.search(broken.problem, problem), line
    assert_no_complete_outputs(out)
    report = report_of(out)
    if report is not None:  # the failure is recorded with the run's settings
        assert report["error"] == line[len(ERROR):]


def test_debug_before_the_subcommand_shows_the_traceback(site, tmp_path):
    out = tmp_path / "run"
    result = quick_run(site, out, "--scorer", "broken-scorer-raises", before=("--debug",))
    assert result.returncode == 2, result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert "ValueError: the scorer fell over" in result.stderr  # the plugin's own exception
    last = result.stderr.splitlines()[-1]
    assert last == (f"{ERROR}scorer 'broken-scorer-raises' {SOURCE}: score() raised ValueError: "
                    "the scorer fell over second line of the message third line")
    assert_no_complete_outputs(out)


@pytest.fixture(scope="module")
def good_run(site, tmp_path_factory) -> Path:
    """A complete quick run with the package's well-behaved per-task scorer."""
    out = tmp_path_factory.mktemp("good") / "run"
    result = quick_run(site, out, "--scorer", GOOD_SCORER)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return out


def test_a_good_plugin_of_the_same_install_completes(good_run):
    report = report_of(good_run)
    assert report["complete"] is True
    assert report["plugins"]["scorer"] == {"name": GOOD_SCORER, "distribution": DISTRIBUTION,
                                           "version": VERSION}
    achieved = report["sparsity"]["achieved"]
    assert report["sparsity"]["requested"] == SPARSITY
    checkpoint = torch.load(good_run / "checkpoint.pt", weights_only=True)
    zeros = total = 0
    for name in checkpoint["masks"]:
        weight = checkpoint["model"][name]
        zeros += int((weight == 0).sum())
        total += weight.numel()
    counted = zeros / total
    assert counted == pytest.approx(achieved, abs=TOLERANCE)
    assert counted == pytest.approx(SPARSITY, abs=TOLERANCE)
    assert not (good_run / "report.incomplete.json").exists()


def test_a_broken_run_leaves_an_earlier_complete_run_alone(site, good_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(good_run, out)
    before = {name: (out / name).read_bytes() for name in ("report.json", "checkpoint.pt")}
    line = error_line(quick_run(site, out, "--arbiter", "broken-arbiter-uint8"))
    assert f"arbiter 'broken-arbiter-uint8' {SOURCE}: " in line
    for name, content in before.items():
        assert (out / name).read_bytes() == content, f"{name} changed"
    assert report_of(out)["complete"] is True
    failed = report_of(out, "report.incomplete.json")
    assert failed is not None and failed["complete"] is False
    assert failed["error"] == line[len(ERROR):]
    assert failed["config"]["arbiter"] == "broken-arbiter-uint8"


@pytest.mark.parametrize("kind, name, problem", [
    ("scorer", "broken-scorer-nan", "expected finite values, got nan"),
    ("thresholder", "broken-thresholder-keeps-all", "elements at keep ratio"),
    ("arbiter", "broken-arbiter-uint8", "expected dtype torch.bool, got torch.uint8"),
    ("metric", "broken-metric-string", "expected a float, got str"),
])
def test_plugins_check_fails_a_broken_plugin(site, tmp_path, kind, name, problem):
    result = prunekit(site, tmp_path, "plugins", "check", name)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"checking {kind} '{name}' {SOURCE}"
    fails = [line for line in lines if line.startswith("FAIL  ")]
    assert fails, result.stdout
    assert any(f"{kind} '{name}' {SOURCE}: " in line and problem in line for line in fails), \
        result.stdout
    assert re.fullmatch(r"\d+ passed, [1-9]\d* failed", lines[-1]), result.stdout


def test_plugins_check_passes_a_built_in(site, tmp_path):
    result = prunekit(site, tmp_path, "plugins", "check", "or")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"checking arbiter 'or' \(prunekit \S+\)", lines[0]), result.stdout
    assert not [line for line in lines if line.startswith("FAIL")], result.stdout
    assert re.fullmatch(r"\d+ passed, 0 failed", lines[-1]), result.stdout
