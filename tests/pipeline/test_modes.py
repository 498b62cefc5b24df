"""The four ``--mode``s through ``prunekit.pipeline.run`` with QUICK settings, and their helpers.

Six real runs in all (about 2 s each on an idle machine): dense (for a checkpoint), pretrained,
pretrained from the checkpoint, iterative, dynamic and static with gradflow. Everything else is
checked without a run.
"""
from types import SimpleNamespace

import pytest
import torch

from prunekit import JOINT, PrunekitError, compute_masks
from prunekit.pipeline.outputs import read_checkpoint
from prunekit.pipeline.engine import Run, run
from prunekit.pipeline.config import QUICK, RunConfig
from prunekit.core.masks import density
from prunekit.core.pruning import round_sparsities
from prunekit.core.semi_structured import Pattern, coverage, holds, kept_per_group, round_keeps
from prunekit.pipeline import modes
from prunekit.pipeline.modes import MODES
from prunekit.pipeline.modes.iterative import Iterative
from prunekit.ops import topk_mask_reference
from prunekit.core.pruning import prune
from prunekit.registry import default_registry
from prunekit.core.rigl import RigLSchedule
from prunekit.core.batch import no_progress
from prunekit_plugins.erk import erk_keep_counts

TOLERANCE = 0.005
DEFAULTS = {"static": ("disparse-snip", "topk"), "pretrained": ("disparse-gradflow", "topk"),
            "dynamic": ("disparse-rigl", "erk"), "iterative": ("magnitude", "topk")}


def quick_run(out, **settings):
    """One real run with QUICK settings; returns (report, checkpoint, warnings)."""
    warnings = []
    result = run(RunConfig(out=str(out), **{**QUICK, **settings}), warn=warnings.append)
    assert result.report["complete"]
    return result.report, read_checkpoint(result.out_dir / "checkpoint.pt"), warnings


def phases(report):
    return [entry["phase"] for entry in report["training"]]


def assert_pruned_weights_are_zero(checkpoint):
    for name, mask in checkpoint["masks"].items():
        assert (checkpoint["model"][name][~mask] == 0).all(), name


@pytest.fixture(scope="module")
def dense_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("dense") / "x"
    report, _, _ = quick_run(out, dense=True)
    assert phases(report) == ["training"]
    return out / "checkpoint.pt"


# ---------------------------------------------------------------------------------------------
# round_sparsities and the mode defaults (no run)


def test_round_sparsities_keep_the_same_share_each_round():
    rounds = round_sparsities(0.9, 3)
    assert len(rounds) == 3
    assert rounds[-1] == 0.9
    assert all(a < b for a, b in zip(rounds, rounds[1:]))
    shares = [(1 - s) / (1 - previous) for previous, s in zip([0.0] + rounds, rounds)]
    assert shares == pytest.approx([0.1 ** (1 / 3)] * 3)
    assert round_sparsities(0.75, 1) == [0.75]
    assert round_sparsities(0.1, 4)[-1] == 0.1  # exactly, though 1 - (1 - 0.1) is not 0.1


@pytest.mark.parametrize("mode", sorted(DEFAULTS))
def test_each_mode_has_its_default_scorer_and_thresholder(mode):
    scorer, thresholder = DEFAULTS[mode]
    assert (MODES[mode].default_scorer, MODES[mode].default_thresholder) == (scorer, thresholder)
    config = Run(RunConfig(mode=mode), no_progress).report["config"]
    assert (config["scorer"], config["thresholder"]) == (scorer, thresholder)
    chosen = modes.resolved(RunConfig(mode=mode, scorer="random", thresholder="erk"))
    assert (chosen.scorer, chosen.thresholder) == ("random", "erk")  # given ones win


# ---------------------------------------------------------------------------------------------
# pretrained


def test_pretrained_trains_dense_then_prunes_and_finetunes_at_a_tenth_of_the_lr(tmp_path):
    report, checkpoint, warnings = quick_run(tmp_path / "x", mode="pretrained")
    config = report["config"]
    assert (config["scorer"], config["thresholder"]) == DEFAULTS["pretrained"]
    assert phases(report) == ["pretraining", "finetuning"]
    pretraining, finetuning = report["training"]
    assert (pretraining["iterations"], pretraining["lr"]) == (QUICK["iterations"], config["lr"])
    assert finetuning["iterations"] == QUICK["iterations"] // 2
    assert finetuning["lr"] == pytest.approx(config["lr"] / 10)
    assert abs(report["sparsity"]["achieved"] - 0.9) <= TOLERANCE
    assert "pretraining" in report["timings"]
    # gradflow is meant for trained weights, and pretrained mode trains before it scores
    assert warnings == report["warnings"] == []
    assert_pruned_weights_are_zero(checkpoint)


def test_pretrained_from_a_checkpoint_skips_pretraining(tmp_path, dense_checkpoint):
    # no fine-tuning steps, so the final weights must be the loaded ones, masked
    report, checkpoint, _ = quick_run(tmp_path / "x", mode="pretrained",
                                      init_checkpoint=str(dense_checkpoint),
                                      finetune_iterations=0)
    assert phases(report) == ["finetuning"]
    assert "pretraining" not in report["timings"]  # loading is part of "setup" (Run.build)
    assert abs(report["sparsity"]["achieved"] - 0.9) <= TOLERANCE
    dense = read_checkpoint(dense_checkpoint)["model"]
    masks = checkpoint["masks"]
    for name, value in checkpoint["model"].items():
        expected = dense[name] * masks[name] if name in masks else dense[name]
        assert torch.equal(value, expected), name


# ---------------------------------------------------------------------------------------------
# iterative


def test_iterative_prunes_round_after_round_to_the_sparsity(tmp_path):
    report, checkpoint, _ = quick_run(tmp_path / "x", mode="iterative")
    config = report["config"]
    assert (config["scorer"], config["thresholder"]) == DEFAULTS["iterative"]
    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == list(range(1, QUICK["prune_rounds"] + 1))
    assert [r["requested"] for r in rounds] == round_sparsities(0.9, QUICK["prune_rounds"])
    achieved = [r["achieved"] for r in rounds]
    assert all(a < b for a, b in zip(achieved, achieved[1:]))
    assert abs(achieved[-1] - 0.9) <= TOLERANCE
    assert report["sparsity"]["achieved"] == pytest.approx(achieved[-1])
    assert phases(report) == ["pretraining"] + ["finetuning"] * QUICK["prune_rounds"]
    assert all(e["lr"] == pytest.approx(config["lr"] / 10) for e in report["training"][1:])
    assert_pruned_weights_are_zero(checkpoint)


@pytest.mark.parametrize("scorer", ["magnitude", "disparse-snip"])
def test_prune_within_keeps_nothing_outside_and_still_hits_the_sparsity(tiny_model, tasks,
                                                                        batches, scorer):
    layout = tiny_model.layout()
    earlier = compute_masks(tiny_model, layout, tasks, [], "random", sparsity=0.5).masks
    free = compute_masks(tiny_model, layout, tasks, batches, scorer, sparsity=0.8).masks
    assert any((free[n] & ~earlier[n]).any() for n in free)  # so the test can fail
    result = compute_masks(tiny_model, layout, tasks, batches, scorer, sparsity=0.8,
                           within=earlier)
    for name, mask in result.masks.items():
        assert not (mask & ~earlier[name]).any(), name
    assert abs(result.achieved - 0.8) <= TOLERANCE
    assert abs((1 - density(result.masks)) - 0.8) <= TOLERANCE
    if scorer == "magnitude":  # joint top-k: the largest weights among those still alive
        names = list(result.masks)
        weights = torch.cat([tiny_model.get_parameter(n).detach().abs().reshape(-1)
                             for n in names])
        alive = torch.cat([earlier[n].reshape(-1) for n in names])
        kept = torch.cat([result.masks[n].reshape(-1) for n in names])
        expected = topk_mask_reference(weights.masked_fill(~alive, -1.0), int(kept.sum()))
        assert torch.equal(kept, expected)


@pytest.mark.parametrize("per_task", [False, True])
def test_prune_within_holds_where_a_layer_has_fewer_alive_weights_than_its_share(tiny_model,
                                                                               per_task):
    layout = tiny_model.layout().resolve(tiny_model)
    g = torch.Generator().manual_seed(0)
    keys = layout.tasks if per_task else [JOINT]
    saliency = {key: {n: torch.rand(layout.params[n].shape, generator=g)
                      for n in (layout.task_params(key) if per_task else layout.params)}
                for key in keys}
    within = {n: torch.ones_like(p, dtype=torch.bool) for n, p in layout.params.items()}
    within["trunk.0.weight"] = torch.zeros_like(within["trunk.0.weight"])
    within["trunk.0.weight"].view(-1)[:3] = True  # 3 of 216 alive; layer scope keeps 50% of each
    result = prune(saliency, layout, default_registry().get("thresholder", "topk"),
                   default_registry().get("arbiter", "or"), 0.5, compensate=False,
                   scope="layer", within=within)
    assert torch.equal(result.masks["trunk.0.weight"], within["trunk.0.weight"])
    for name, mask in result.masks.items():
        assert not (mask & ~within[name]).any(), name


class FakeIterativeRun:
    """The context and steps ``Iterative.execute`` uses, on the tiny model, recording each
    phase.

    "Pretraining" and "fine-tuning" add constants to every parameter and buffer, so rewound
    weights are told apart from trained ones. Pruning draws new random scores each round.
    """

    def __init__(self, model, tasks, **settings):
        self.config = modes.resolved(RunConfig(mode="iterative", sparsity=0.8, prune_rounds=3,
                                               lr=1e-2, **settings))
        self.model, self.tasks = model, tasks
        self.scorer = default_registry().get("scorer", self.config.scorer)
        self.layout = model.layout().resolve(model)
        self.report = {}
        self.initial = self.state()
        self.phases = []

    def state(self):
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    @torch.no_grad()
    def move_everything(self, by):
        for value in self.model.state_dict().values():
            if value.is_floating_point():
                value.add_(by)

    def pretrain(self):
        self.move_everything(1.0)

    def prune(self, sparsity, within=None, keep=None):
        # fresh random scores each round: later masks nest in earlier ones only through within
        return compute_masks(self.model, self.layout, self.tasks, [], "random",
                             sparsity=sparsity, within=within, seed=len(self.phases),
                             pattern=self.config.pattern, keep=keep)

    def train_phase(self, masks, iterations, lr, phase, after_step=None):
        self.phases.append(SimpleNamespace(
            phase=phase, lr=lr, state=self.state(),
            masks={n: m.clone() for n, m in masks.named_masks().items()}))
        self.move_everything(0.25)
        masks.zero_pruned()


@pytest.mark.parametrize("rewind", [True, False])
def test_iterative_masks_shrink_and_rewinding_restores_the_initial_weights(tiny_model, tasks,
                                                                           rewind):
    fake = FakeIterativeRun(tiny_model, tasks, rewind=rewind)
    final = Iterative(fake.config, fake.scorer, None, None).execute(fake, fake)
    config = fake.config
    phase = "retraining" if rewind else "finetuning"
    assert [p.phase for p in fake.phases] == [phase] * config.prune_rounds
    lr = config.lr if rewind else config.finetune_lr
    assert [p.lr for p in fake.phases] == [lr] * config.prune_rounds
    assert ([r["requested"] for r in fake.report["rounds"]]
            == round_sparsities(config.sparsity, config.prune_rounds))
    for earlier, later in zip(fake.phases, fake.phases[1:]):
        for name in later.masks:
            assert not (later.masks[name] & ~earlier.masks[name]).any(), name
    assert all(torch.equal(final[n], fake.phases[-1].masks[n]) for n in final)
    assert abs((1 - density(final)) - 0.8) <= TOLERANCE
    for phase in fake.phases:  # the weights each fine-tuning phase starts from
        for name, value in phase.state.items():
            mask = phase.masks.get(name)
            survivors = value if mask is None else value[mask]
            initial = fake.initial[name] if mask is None else fake.initial[name][mask]
            if mask is not None:
                assert (value[~mask] == 0).all(), name
            if not value.is_floating_point() or survivors.numel() == 0:
                continue  # BatchNorm's num_batches_tracked (not moved), or pruned away
            assert torch.equal(survivors, initial) == rewind, name


# ---------------------------------------------------------------------------------------------
# dynamic


def test_dynamic_updates_masks_and_keeps_the_erk_allocation_per_layer(tmp_path):
    report, checkpoint, _ = quick_run(tmp_path / "x", mode="dynamic")
    config = report["config"]
    assert (config["scorer"], config["thresholder"]) == DEFAULTS["dynamic"]
    assert report["plugins"]["initial_scorer"]["name"] == "random"
    schedule = RigLSchedule(QUICK["update_interval"],
                            max(1, round(config["update_end"] * QUICK["iterations"])))
    due = [s + 1 for s in range(QUICK["iterations"]) if schedule.due(s + 1)]
    rigl = report["rigl"]
    assert rigl["updates"] == len(due) > 0
    assert [h["step"] for h in rigl["history"]] == due
    assert rigl["regrown"] == sum(h["regrown"] for h in rigl["history"]) > 0
    layers = report["sparsity"]["layers"]
    masks = checkpoint["masks"]
    assert list(masks) == list(layers)
    counts = erk_keep_counts([masks[n].shape for n in layers], 1 - 0.9)
    for (name, sparsity), count in zip(layers.items(), counts):
        assert int(masks[name].sum()) == count, name
        # counted from the saved weights: a regrown weight that has not moved yet is zero too
        zeros = int((checkpoint["model"][name] == 0).sum())
        assert sparsity == pytest.approx(zeros / masks[name].numel()), name
        assert sparsity >= 1 - count / masks[name].numel() - 1e-12, name
    assert abs(report["sparsity"]["masked"] - 0.9) <= TOLERANCE
    assert abs(report["sparsity"]["achieved"] - 0.9) <= TOLERANCE
    assert_pruned_weights_are_zero(checkpoint)


# ---------------------------------------------------------------------------------------------
# static, errors and warnings


def test_static_with_gradflow_warns_once_that_it_is_meant_for_trained_weights(tmp_path):
    report, _, warnings = quick_run(tmp_path / "x", scorer="gradflow")
    assert report["config"]["mode"] == "static"
    assert phases(report) == ["training"]
    assert len(warnings) == 1
    assert "trained" in warnings[0] and "gradflow" in warnings[0]
    assert report["warnings"] == warnings


@pytest.mark.parametrize("settings, message", [
    (dict(mode="dynamic", scorer="snip"),
     "--mode dynamic grows connections by a gradient score; scorer 'snip' has none "
     "(use one of: disparse-rigl, rigl)"),
    (dict(mode="statc"), "unknown mode 'statc'"),
    (dict(arbiter="majority", tasks=("seg", "depth")),
     "arbiter 'majority' needs at least 3 tasks, got 2"),
    (dict(mode="static", rewind=True), "--rewind is for --mode iterative, not static"),
    (dict(mode="pretrained", rewind=True), "--rewind is for --mode iterative, not pretrained"),
    (dict(init_checkpoint="ckpt.pt"),
     "--init-checkpoint is for --mode pretrained or iterative, not static"),
    (dict(thresholder="erk", scope="global"),
     "thresholder 'erk' supports scope layer, not 'global'"),
    (dict(mode="pretrained", dense=True),
     "--dense trains without pruning; it takes no --mode pretrained"),
])
def test_bad_combinations_are_refused_before_anything_is_written(tmp_path, settings, message):
    out = tmp_path / "x"
    with pytest.raises(PrunekitError) as error:
        run(RunConfig(out=str(out), **{**QUICK, **settings}), warn=lambda m: None)
    assert message in str(error.value)
    assert not out.exists()


def test_a_misspelt_mode_suggests_the_right_one():
    with pytest.raises(PrunekitError, match="did you mean 'static'"):
        run(RunConfig(mode="statc", **QUICK))


def test_gradual_nm_rounds_keep_fewer_per_group_each_time_inside_the_last(tiny_model, tasks):
    fake = FakeIterativeRun(tiny_model, tasks, pattern="2:4")
    final = Iterative(fake.config, fake.scorer, None, None).execute(fake, fake)
    covered = coverage(fake.layout.params, 4)[0]
    keeps = round_keeps(Pattern(2, 4), fake.config.prune_rounds)
    assert keeps == [3, 2, 2]
    for phase, keep in zip(fake.phases, keeps):
        for name in covered:
            assert (kept_per_group(phase.masks[name], 4) == keep).all(), name
    for earlier, later in zip(fake.phases, fake.phases[1:]):
        for name in later.masks:
            assert not (later.masks[name] & ~earlier.masks[name]).any(), name
    assert [r["requested"] for r in fake.report["rounds"]] == [0.25, 0.5, 0.5]
    assert all(holds(final[name], 2, 4) for name in covered)
