"""RigL drop-and-grow (prunekit.rigl) on the tiny model: schedule, counts, which weights move.

Each update test builds random masks at 70% sparsity per tensor, takes one Adam step (with dense
gradients, so Adam's moments are non-zero everywhere) and calls ``RigLUpdater.update`` directly.
"""
import copy
import math
from dataclasses import dataclass

import pytest
import torch

from prunekit import JOINT, AppliedMasks, Scorer
from prunekit.registry import default_registry
from prunekit.core.rigl import RigLSchedule, RigLUpdater, merged_growth
from prunekit.training.loop import train

from conftest import make_batches

SPARSITY = 0.7
STEP = 1                          # the step every direct update runs at
SCHEDULE = RigLSchedule(interval=1, end=10, alpha=0.5)
FRACTION = SCHEDULE.drop_fraction(STEP)
ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")


def plugin(kind, name):
    return default_registry().get(kind, name)


# ---------------------------------------------------------------------------------------------
# helpers


def random_masks(layout, sparsity=SPARSITY, seed=0, dense=()):
    """Exactly round((1 - sparsity) * n) random active weights per tensor; ``dense`` ones all."""
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for name, param in layout.params.items():
        keep = param.numel() if name in dense else round((1 - sparsity) * param.numel())
        mask = torch.zeros(param.numel(), dtype=torch.bool)
        mask[torch.randperm(param.numel(), generator=g)[:keep]] = True
        masks[name] = mask.view(param.shape)
    return masks


def task_losses(model, tasks, batch):
    outputs = model(batch["image"])
    return {name: task.loss(outputs[name], batch[name]) for name, task in tasks.items()}


@dataclass
class Snapshot:
    masks: dict        # parameter name -> bool mask
    params: dict       # prunable parameter name -> weights
    state: dict        # parameter name -> {Adam state key -> value}


@dataclass
class Setup:
    model: torch.nn.Module
    tasks: dict
    updater: RigLUpdater
    optimiser: torch.optim.Optimizer
    batch: dict

    @property
    def layout(self):
        return self.updater.layout

    def snapshot(self) -> Snapshot:
        state = {name: {k: v.clone() if torch.is_tensor(v) else v
                        for k, v in self.optimiser.state[p].items()}
                 for name, p in self.model.named_parameters()}
        return Snapshot({n: m.clone() for n, m in self.updater.masks.named_masks().items()},
                        {n: p.detach().clone() for n, p in self.layout.params.items()}, state)

    def update(self):
        """Run one update at STEP; return the snapshots before and after."""
        before = self.snapshot()
        self.updater.update(STEP, self.batch, self.optimiser)
        return before, self.snapshot()

    def fill_inactive(self, value=0.5):
        """Give pruned weights stale non-zero values, as if something had written to them."""
        with torch.no_grad():
            for name, mask in self.updater.masks.named_masks().items():
                self.layout.params[name].masked_fill_(~mask, value)


def rigl_setup(model, tasks, scorer="rigl", arbiter="or", schedule=SCHEDULE, dense=()):
    model.train()
    layout = model.layout().resolve(model)
    applied = AppliedMasks(model, random_masks(layout, dense=dense))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    warmup = make_batches(1, seed=10)[0]
    sum(task_losses(model, tasks, warmup).values()).backward()  # dense gradients on purpose
    optimiser.step()
    applied.zero_pruned()
    if isinstance(scorer, str):
        scorer = plugin("scorer", scorer)
    updater = RigLUpdater(model, layout, tasks, applied, scorer, plugin("arbiter", arbiter),
                          schedule)
    return Setup(model, tasks, updater, optimiser, make_batches(1, seed=11)[0])


def expected_count(mask, fraction=FRACTION):
    active = int(mask.sum())
    return min(round(fraction * active), mask.numel() - active)


def changes(before, after):
    """Per tensor: (dropped, grown) = (before & ~after, after & ~before)."""
    return {n: (before.masks[n] & ~after.masks[n], after.masks[n] & ~before.masks[n])
            for n in before.masks}


def top_by_sort(scores, allowed, count):
    """Reference: the ``count`` highest ``scores`` among ``allowed``, ties to the lower index."""
    index = allowed.reshape(-1).nonzero().squeeze(1)
    order = torch.sort(scores.reshape(-1)[index], descending=True, stable=True).indices
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[index[order[:count]]] = True
    return mask.view(scores.shape)


def smallest_by_sort(weights, active, count):
    """Reference: the ``count`` active weights of smallest magnitude, ties to the lower index."""
    index = active.reshape(-1).nonzero().squeeze(1)
    order = torch.sort(weights.reshape(-1)[index].abs(), stable=True).indices
    mask = torch.zeros(weights.numel(), dtype=torch.bool)
    mask[index[order[:count]]] = True
    return mask.view(weights.shape)


def reference_gradients(model, layout, tasks, batch, per_task):
    """|dL/dw| by plain autograd on a copy of the (masked) model: joint, or per task."""
    model = copy.deepcopy(model).train()
    params = dict(model.named_parameters())
    losses = task_losses(model, tasks, batch)
    if per_task:
        groups = {t: (losses[t], layout.task_params(t)) for t in tasks}
    else:
        groups = {JOINT: (sum(losses.values()), list(layout.params))}
    grads = {}
    for key, (loss, names) in groups.items():
        values = torch.autograd.grad(loss, [params[n] for n in names], retain_graph=True)
        grads[key] = {n: g.abs() for n, g in zip(names, values)}
    return grads


UPDATERS = [("rigl", "or"), ("disparse-rigl", "or"), ("disparse-rigl", "and"),
            ("disparse-rigl", "majority")]


# ---------------------------------------------------------------------------------------------
# schedule


def test_schedule_is_due_only_at_multiples_of_the_interval_before_the_end():
    schedule = RigLSchedule(interval=3, end=10)
    assert [s for s in range(0, 20) if schedule.due(s)] == [3, 6, 9]
    assert not schedule.due(0)
    assert [s for s in range(0, 30) if RigLSchedule(interval=5, end=20).due(s)] == [5, 10, 15]


def test_drop_fraction_starts_at_alpha_and_decays_by_the_cosine_to_zero_at_the_end():
    schedule = RigLSchedule(interval=1, end=40, alpha=0.3)
    assert schedule.drop_fraction(0) == pytest.approx(0.3)
    for t in (1, 10, 20, 33):
        expected = 0.3 / 2 * (1 + math.cos(math.pi * t / 40))
        assert schedule.drop_fraction(t) == pytest.approx(expected)
    assert schedule.drop_fraction(20) == pytest.approx(0.15)
    assert schedule.drop_fraction(40) == pytest.approx(0.0, abs=1e-12)
    fractions = [schedule.drop_fraction(t) for t in range(41)]
    assert all(a > b for a, b in zip(fractions, fractions[1:]))


# ---------------------------------------------------------------------------------------------
# one update


@pytest.mark.parametrize("scorer, arbiter", UPDATERS)
def test_every_tensor_keeps_its_number_of_active_weights(tiny_model, tasks, scorer, arbiter):
    assert len(tasks) == 3  # majority needs three
    setup = rigl_setup(tiny_model, tasks, scorer, arbiter)
    before, after = setup.update()
    for name, (dropped, grown) in changes(before, after).items():
        count = expected_count(before.masks[name])
        assert int(after.masks[name].sum()) == int(before.masks[name].sum()), name
        assert int(dropped.sum()) == count, name  # less would mean a dropped one came back
        assert int(grown.sum()) == count, name
    assert sum(expected_count(m) for m in before.masks.values()) > 0


@pytest.mark.parametrize("scorer, arbiter", UPDATERS)
def test_no_weight_dropped_in_an_update_is_regrown_in_it(tiny_model, tasks, scorer, arbiter):
    setup = rigl_setup(tiny_model, tasks, scorer, arbiter)
    before, after = setup.update()
    for name, (dropped, grown) in changes(before, after).items():
        assert not (dropped & grown).any(), name
        assert not (grown & before.masks[name]).any(), name  # grown only where inactive before
        weakest = smallest_by_sort(before.params[name], before.masks[name],
                                   expected_count(before.masks[name]))
        assert not (weakest & after.masks[name]).any(), name  # all the weakest are gone


class FavoursTheWeakest(Scorer):
    """A grow score that ranks the weakest active weights highest: a trap for regrowing them."""

    name = "favours-the-weakest"
    description = "test scorer"
    per_task = False

    def __init__(self, masks):
        self.masks = masks

    def score(self, context):
        g = torch.Generator().manual_seed(0)
        return {JOINT: {n: torch.where(self.masks[n], 1 / (p.detach().abs() + 1e-3),
                                       torch.rand(p.shape, generator=g))
                        for n, p in context.layout.params.items()}}


def test_dropped_weights_are_not_regrown_even_when_they_score_highest(tiny_model, tasks):
    setup = rigl_setup(tiny_model, tasks)
    setup.updater.scorer = FavoursTheWeakest(setup.updater.masks.named_masks())
    before, after = setup.update()
    for name, (dropped, grown) in changes(before, after).items():
        count = expected_count(before.masks[name])
        assert int(dropped.sum()) == int(grown.sum()) == count, name
        assert not (grown & before.masks[name]).any(), name


@pytest.mark.parametrize("scorer", ["rigl", "disparse-rigl"])
def test_dropped_weights_are_the_smallest_active_ones(tiny_model, tasks, scorer):
    setup = rigl_setup(tiny_model, tasks, scorer)
    before, after = setup.update()
    for name, (dropped, _) in changes(before, after).items():
        expected = smallest_by_sort(before.params[name], before.masks[name],
                                    expected_count(before.masks[name]))
        assert torch.equal(dropped, expected), name


def test_joint_growth_takes_the_highest_gradient_magnitudes_among_inactive_weights(tiny_model,
                                                                                    tasks):
    setup = rigl_setup(tiny_model, tasks, "rigl")
    grads = reference_gradients(setup.model, setup.layout, tasks, setup.batch, per_task=False)
    before, after = setup.update()
    for name, (_, grown) in changes(before, after).items():
        expected = top_by_sort(grads[JOINT][name], ~before.masks[name],
                               expected_count(before.masks[name]))
        assert torch.equal(grown, expected), name


@pytest.mark.parametrize("arbiter", ["or", "and"])
def test_per_task_growth_heads_by_their_task_shared_tensors_by_the_arbiter(tiny_model, tasks,
                                                                           arbiter):
    setup = rigl_setup(tiny_model, tasks, "disparse-rigl", arbiter)
    grads = reference_gradients(setup.model, setup.layout, tasks, setup.batch, per_task=True)
    before, after = setup.update()
    grown = {name: g for name, (_, g) in changes(before, after).items()}
    for task, names in setup.layout.heads.items():
        for name in names:
            expected = top_by_sort(grads[task][name], ~before.masks[name],
                                   expected_count(before.masks[name]))
            assert torch.equal(grown[name], expected), name
    for name in setup.layout.shared:
        count = expected_count(before.masks[name])
        proposals = torch.stack([top_by_sort(grads[t][name], ~before.masks[name], count)
                                 for t in tasks])
        if arbiter == "or":   # the union is at least count: trimmed, so nothing from outside it
            assert not (grown[name] & ~proposals.any(0)).any(), name
        else:                 # the intersection is at most count: all of it, then filled
            assert not (proposals.all(0) & ~grown[name]).any(), name


def test_regrown_weights_start_at_zero_with_fresh_adam_state(tiny_model, tasks):
    setup = rigl_setup(tiny_model, tasks)
    setup.fill_inactive(0.5)
    before, after = setup.update()
    params = dict(setup.model.named_parameters())
    stale = {key: 0 for key in ADAM_MOMENTS}  # grown places whose moments were non-zero before
    for name, (_, grown) in changes(before, after).items():
        kept = before.masks[name] & after.masks[name]
        assert (after.params[name][grown] == 0).all(), name
        assert torch.equal(after.params[name][kept], before.params[name][kept]), name
        for key in ADAM_MOMENTS:
            stale[key] += int((before.state[name][key][grown] != 0).sum())
            assert (after.state[name][key][grown] == 0).all(), (name, key)
            assert torch.equal(after.state[name][key][~grown], before.state[name][key][~grown])
        assert torch.equal(after.state[name]["step"], before.state[name]["step"])
    assert all(stale.values()), stale  # so the test can fail
    for name in params:
        if name not in before.masks:  # biases, BatchNorm: state untouched
            for key in ADAM_MOMENTS:
                assert torch.equal(after.state[name][key], before.state[name][key]), name


def test_pruned_weights_are_zero_after_the_update(tiny_model, tasks):
    setup = rigl_setup(tiny_model, tasks, "disparse-rigl", "or")
    setup.fill_inactive(0.5)
    before, after = setup.update()
    for name, (dropped, _) in changes(before, after).items():
        assert (before.params[name][dropped] != 0).all(), name
        assert (after.params[name][~after.masks[name]] == 0).all(), name
        live = setup.updater.masks.named_masks()[name]
        assert torch.equal(live, after.masks[name])  # the applied masks changed in place


def test_a_fully_dense_tensor_is_left_unchanged(tiny_model, tasks):
    dense = "trunk.3.weight"
    setup = rigl_setup(tiny_model, tasks, "rigl", dense=(dense,))
    before, after = setup.update()
    assert after.masks[dense].all()
    assert torch.equal(after.params[dense], before.params[dense])
    for key in ADAM_MOMENTS:
        assert torch.equal(after.state[dense][key], before.state[dense][key])
    others = [n for n in before.masks if n != dense]
    assert all(not torch.equal(before.masks[n], after.masks[n]) for n in others)


def test_counters_and_history_advance(tiny_model, tasks):
    setup = rigl_setup(tiny_model, tasks, "disparse-rigl", "or")
    updater = setup.updater
    expected = sum(expected_count(m) for m in updater.masks.named_masks().values())
    setup.update()
    assert (updater.updates, updater.regrown) == (1, expected)
    assert updater.history == [{"step": STEP, "drop_fraction": FRACTION, "regrown": expected}]
    second = sum(expected_count(m, SCHEDULE.drop_fraction(2))
                 for m in updater.masks.named_masks().values())
    updater.update(2, setup.batch, setup.optimiser)
    assert (updater.updates, updater.regrown) == (2, expected + second)
    assert [h["step"] for h in updater.history] == [STEP, 2]
    assert updater.history[1]["regrown"] == second


def test_training_calls_updates_at_the_scheduled_steps_only(tiny_model, tasks):
    schedule = RigLSchedule(interval=2, end=6, alpha=0.3)
    setup = rigl_setup(tiny_model, tasks, "rigl", schedule=schedule)
    updater = setup.updater
    counts = {n: int(m.sum()) for n, m in updater.masks.named_masks().items()}
    called = []
    update = updater.update

    def recording_update(step, batch, optimiser):
        called.append(step)
        update(step, batch, optimiser)

    updater.update = recording_update
    train(setup.model, tasks, make_batches(3), 7, 1e-3, updater.masks, torch.device("cpu"),
          after_step=updater)
    assert called == [2, 4]                     # steps taken so far; not 6 (the end), nor 0
    assert updater.updates == 2 and [h["step"] for h in updater.history] == [2, 4]
    assert updater.regrown > 0
    for name, mask in updater.masks.named_masks().items():
        assert int(mask.sum()) == counts[name], name
        assert (setup.layout.params[name][~mask] == 0).all(), name


# ---------------------------------------------------------------------------------------------
# merged_growth on small hand-made tensors

#                         0    1    2    3    4    5    6    7
COMBINED = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3, 0.8, 1.0, 0.2])
CANDIDATES = torch.tensor([1, 1, 1, 1, 1, 0, 0, 1], dtype=torch.bool)


def bools(*indices, size=8):
    mask = torch.zeros(size, dtype=torch.bool)
    mask[list(indices)] = True
    return mask


@pytest.mark.parametrize("arbiter, proposals, count, expected", [
    # union {0,1,2,3,5,6}, candidates among it {0,1,2,3}: more than 2, the best two by score
    ("or", [bools(0, 1, 5), bools(2, 3, 6)], 2, bools(1, 3)),
    # intersection {0,3} (plus 6, not a candidate): kept though 0 scores lowest, filled with 1
    ("and", [bools(0, 3, 6, 4), bools(0, 3, 6, 7)], 3, bools(0, 1, 3)),
    # intersection {1} is short of 4: filled by score from the other candidates 3, 2, 4
    ("and", [bools(1, 2), bools(1, 3)], 4, bools(1, 2, 3, 4)),
    # majority of three {0,2,3}: exactly count
    ("majority", [bools(0, 2, 3), bools(0, 2), bools(3, 4)], 3, bools(0, 2, 3)),
    # majority {2} is short: filled with 1 and 3, never 5 or 6 (not candidates)
    ("majority", [bools(2, 5, 6), bools(2, 5, 6), bools(4)], 3, bools(1, 2, 3)),
])
def test_merged_growth_returns_exactly_count_candidates(arbiter, proposals, count, expected):
    grown = merged_growth(proposals, COMBINED, CANDIDATES, count, plugin("arbiter", arbiter),
                          "w")
    assert int(grown.sum()) == count
    assert not (grown & ~CANDIDATES).any()
    assert torch.equal(grown, expected)
