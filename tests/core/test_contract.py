"""The plugin contract (prunekit.contract), checked in-process on the tiny model.

Broken plugins installed through real entry points and run through the CLI are in
test_plugin_contract.py; here each check is pinned on its own, with the message it gives.
"""
import json
import math

import numpy as np
import pytest
import torch

from prunekit import JOINT, Arbiter, Metric, PrunekitError, Scorer, Thresholder, compute_masks
from prunekit.core import contract
from prunekit.core.contract import PluginError
from prunekit.files import non_finite_keys, write_json
from prunekit.interfaces import ScoringContext
from prunekit.core.masks import measured_sparsity
from prunekit.core.pruning import round_sparsities
from prunekit.registry import default_registry
from prunekit.testing import check_plugin

from conftest import make_tasks


def builtin(kind, name):
    return default_registry().get(kind, name)


@pytest.fixture
def layout(tiny_model):
    return tiny_model.layout().resolve(tiny_model)


def context(model, layout, batches, **extra):
    return ScoringContext(model, layout, make_tasks(), batches, torch.device("cpu"),
                          lambda task, loss, where: None, **extra)


class Returning(Scorer):
    """A joint scorer returning whatever ``make(layout)`` builds."""
    name = "returning"
    description = "test scorer"
    per_task = False
    needs_data = False

    def __init__(self, make):
        self.make = make

    def score(self, context):
        return self.make(context.layout)


def scores_of(layout, change=lambda name, scores: scores):
    return {JOINT: {n: change(n, torch.rand(p.shape)) for n, p in layout.params.items()}}


# ---------------------------------------------------------------------------------------------
# scorers

def first_conv(layout):
    return next(n for n, p in layout.params.items() if p.dim() == 4)


BROKEN_SCORES = {
    "broadcastable shape": (lambda layout: scores_of(
        layout, lambda n, s: s[:, :1, :1, :1] if s.dim() == 4 else s),
        r"saliency of '.*': expected shape \[8, 3, 3, 3\], got \[8, 1, 1, 1\]"),
    "integer dtype": (lambda layout: scores_of(layout, lambda n, s: (s * 10).long()),
                      "expected a floating dtype, got torch.int64"),
    "NaN": (lambda layout: scores_of(layout, lambda n, s: s.index_fill(0, torch.tensor([0]),
                                                                       math.nan)),
            "expected finite values, got nan"),
    "-inf": (lambda layout: scores_of(layout, lambda n, s: s.index_fill(0, torch.tensor([0]),
                                                                        -math.inf)),
             "expected finite values, got -inf"),
    "wrong device": (lambda layout: scores_of(layout, lambda n, s: s.to("meta")),
                     "expected device cpu, got meta"),
    "a tensor left out": (lambda layout: {JOINT: dict(list(scores_of(layout)[JOINT].items())[1:])},
                          r"returned no saliency tensors for 'trunk.0.weight'"),
    "a tensor not asked for": (lambda layout: {JOINT: {**scores_of(layout)[JOINT],
                                                       "trunk.1.weight": torch.ones(8)}},
                               r"returned saliency tensors for 'trunk.1.weight', which was not "
                               r"asked for"),
    "a task key for a joint scorer": (lambda layout: {"seg": scores_of(layout)[JOINT]},
                                      r"returned saliency for 'seg', which was not asked for"),
    "a list": (lambda layout: [1, 2], "returned a list, expected a dict of saliency"),
    "None": (lambda layout: None, r"score\(\) returned None"),
    "sparse layout": (lambda layout: scores_of(layout, lambda n, s: s.to_sparse()),
                      "expected a dense \\(strided\\) tensor, got layout torch.sparse_coo"),
    "not a tensor": (lambda layout: scores_of(layout, lambda n, s: s.tolist()),
                     "expected a tensor, got list"),
}


@pytest.mark.parametrize("make,message", BROKEN_SCORES.values(), ids=BROKEN_SCORES.keys())
def test_a_broken_score_is_one_error_naming_the_scorer(tiny_model, layout, make, message):
    with pytest.raises(PluginError, match=message) as error:
        contract.score(Returning(make), context(tiny_model, layout, []))
    assert str(error.value).startswith(f"scorer 'returning' (module {__name__}, not "
                                       "installed): ")
    assert "\n" not in str(error.value)


def test_a_scorer_must_leave_the_models_weights_alone(tiny_model, layout):
    def abs_in_place(layout):  # SynFlow done carelessly: the run would train |w|
        for param in layout.params.values():
            param.data.abs_()
        return scores_of(layout)

    with pytest.raises(PluginError, match=r"score\(\) changed the model's weights "
                                          r"'trunk.0.weight'; score a copy"):
        contract.score(Returning(abs_in_place), context(tiny_model, layout, []))


def test_a_raising_scorer_is_a_plugin_error_with_the_cause_kept(tiny_model, layout):
    def boom(layout):
        raise KeyError("seg")

    with pytest.raises(PluginError, match=r"score\(\) raised KeyError: 'seg'") as error:
        contract.score(Returning(boom), context(tiny_model, layout, []))
    assert isinstance(error.value.__cause__, KeyError)  # --debug shows where


def test_prunekit_errors_raised_inside_a_plugin_pass_unchanged(tiny_model, layout):
    def nan_loss(layout):
        raise PrunekitError("the loss of task 'seg' is nan during scoring")

    with pytest.raises(PrunekitError) as error:
        contract.score(Returning(nan_loss), context(tiny_model, layout, []))
    assert type(error.value) is PrunekitError
    assert str(error.value) == "the loss of task 'seg' is nan during scoring"


def test_per_task_scores_must_cover_every_task(tiny_model, layout, batches):
    class PerTask(Scorer):
        name = "two-of-three"
        description = "forgets a task"

        def score(self, context):
            return {t: {n: torch.rand(context.layout.params[n].shape)
                        for n in context.layout.task_params(t)} for t in ("seg", "depth")}

    with pytest.raises(PluginError, match="returned no saliency for 'normal'"):
        contract.score(PerTask(), context(tiny_model, layout, batches))


def test_a_filter_scorer_may_leave_tensors_out_but_scores_per_filter(tiny_model, layout):
    class Filters(Returning):
        granularity = "filter"

    name = first_conv(layout)
    good = Filters(lambda lay: {JOINT: {name: torch.rand(lay.params[name].shape[0])}})
    assert set(contract.score(good, context(tiny_model, layout, []))[JOINT]) == {name}
    per_element = Filters(lambda lay: {JOINT: {name: torch.rand(lay.params[name].shape)}})
    with pytest.raises(PluginError, match=r"expected shape \[8\], got \[8, 3, 3, 3\]"):
        contract.score(per_element, context(tiny_model, layout, []))
    with pytest.raises(PluginError, match="returned no saliency tensors at all"):
        contract.score(Filters(lambda lay: {JOINT: {}}), context(tiny_model, layout, []))


def test_builtin_scorers_keep_the_contract(tiny_model, layout, batches):
    for name in ("snip", "disparse-snip", "gradflow", "magnitude", "random", "disparse-rigl"):
        saliency = contract.score(builtin("scorer", name), context(tiny_model, layout, batches))
        assert saliency


# ---------------------------------------------------------------------------------------------
# thresholders

class Keeping(Thresholder):
    name = "keeping"
    description = "test thresholder"
    scopes = ("global", "layer")

    def __init__(self, make):
        self.make = make

    def masks(self, scores, keep_ratio, scope=None):
        return self.make(scores, keep_ratio)


def topk(scores, keep_ratio):
    return builtin("thresholder", "topk").masks(scores, keep_ratio)


BROKEN_MASKS = {
    "ignores keep_ratio": (lambda s, r: {n: torch.ones_like(t, dtype=torch.bool)
                                         for n, t in s.items()},
                           r"kept 2\d+ of 2\d+ elements at keep ratio 0.1; expected 2\d+ \(give "
                           r"or take \d+, one per tensor\)"),
    "keeps a few too many": (lambda s, r: {n: m | (torch.rand(m.shape) < 0.05)
                                           for n, m in topk(s, r).items()},
                             r"kept \d+ of \d+ elements at keep ratio 0.1; expected"),
    "float masks": (lambda s, r: {n: m.float() for n, m in topk(s, r).items()},
                    "expected dtype torch.bool, got torch.float32"),
    "flattened masks": (lambda s, r: {n: m.flatten() for n, m in topk(s, r).items()},
                        r"expected shape \[8, 3, 3, 3\], got \[216\]"),
    "a mask left out": (lambda s, r: dict(list(topk(s, r).items())[1:]),
                        "returned no masks for 'trunk.0.weight'"),
    "masks on another device": (lambda s, r: {n: m.to("meta") for n, m in topk(s, r).items()},
                                "expected device cpu, got meta"),
    "None": (lambda s, r: None, r"masks\(\) returned None"),
    "sparse masks": (lambda s, r: {n: m.to_sparse() for n, m in topk(s, r).items()},
                     "expected a dense \\(strided\\) tensor, got layout torch.sparse_coo"),
    "scores changed in place": (lambda s, r: topk({n: t.clamp_(min=0) for n, t in s.items()}, r),
                                r"masks\(\) changed its input scores of 'trunk.0.weight' in "
                                r"place"),
}


@pytest.mark.parametrize("make,message", BROKEN_MASKS.values(), ids=BROKEN_MASKS.keys())
def test_a_broken_thresholder_is_one_error_naming_it(layout, make, message):
    scores = {n: torch.rand(p.shape) for n, p in layout.params.items()}
    with pytest.raises(PluginError, match=message) as error:
        contract.threshold(Keeping(make), scores, 0.1, None)
    assert str(error.value).startswith("thresholder 'keeping' (")


def test_keep_counts_may_be_off_by_one_per_tensor_and_no_more(layout):
    scores = {n: torch.rand(p.shape) for n, p in layout.params.items()}
    asked = round(0.1 * sum(s.numel() for s in scores.values()))

    def keeping(extra):
        def make(s, r):
            masks = topk(s, r)
            flat = torch.cat([m.flatten() for m in masks.values()])
            flat[(~flat).nonzero()[:extra, 0]] = True
            sizes = [m.numel() for m in masks.values()]
            return {n: part.reshape(masks[n].shape)
                    for n, part in zip(masks, flat.split(sizes))}
        return Keeping(make)

    slack = len(scores)
    masks = contract.threshold(keeping(slack), scores, 0.1, None)
    assert sum(int(m.sum()) for m in masks.values()) == asked + slack
    with pytest.raises(PluginError, match=f"kept {asked + slack + 1} of"):
        contract.threshold(keeping(slack + 1), scores, 0.1, None)


def test_scope_reaches_the_thresholder_only_when_given(layout):
    seen = []

    class Recording(Thresholder):
        name = "recording"
        description = "records its scope"

        def masks(self, scores, keep_ratio, **kwargs):
            seen.append(kwargs)
            return topk(scores, keep_ratio)

    scores = {n: torch.rand(p.shape) for n, p in layout.params.items()}
    contract.threshold(Recording(), scores, 0.5, None)
    contract.threshold(Recording(), scores, 0.5, "global")
    assert seen == [{}, {"scope": "global"}]


# ---------------------------------------------------------------------------------------------
# arbiters

class Merging(Arbiter):
    name = "merging"
    description = "test arbiter"

    def __init__(self, make):
        self.make = make

    def merge(self, masks):
        return self.make(masks)


TASK_MASKS = [torch.tensor([[1, 0, 0], [1, 1, 0]], dtype=torch.bool),
              torch.tensor([[0, 0, 1], [1, 0, 0]], dtype=torch.bool)]

BROKEN_MERGES = {
    "keeps every weight": (lambda masks: torch.ones_like(masks[0]),
                           r"expected a subset of the tasks' union, got 2 element\(s\) that no "
                           r"task kept"),
    "flattened": (lambda masks: masks[0].flatten(), r"expected shape \[2, 3\], got \[6\]"),
    "uint8": (lambda masks: masks[0].to(torch.uint8), "expected dtype torch.bool, got torch.uint8"),
    "another device": (lambda masks: masks[0].to("meta"), "expected device cpu, got meta"),
    "a list": (lambda masks: list(masks), "expected a tensor, got list"),
    "None": (lambda masks: None, r"merge\(\) returned None"),
    "sparse": (lambda masks: masks[0].to_sparse(), "expected a dense \\(strided\\) tensor"),
    "a union written into the first mask": (
        lambda masks: [masks[0].__ior__(m) for m in masks[1:]][-1],
        r"merge\(\) changed its input mask 0 of 'trunk.0.weight' in place"),
}


@pytest.mark.parametrize("merge,message", BROKEN_MERGES.values(), ids=BROKEN_MERGES.keys())
def test_a_broken_arbiter_is_one_error_naming_it_and_the_tensor(merge, message):
    with pytest.raises(PluginError, match=message) as error:
        contract.merge(Merging(merge), TASK_MASKS, "trunk.0.weight")
    assert str(error.value).startswith("arbiter 'merging' (")
    assert "'trunk.0.weight'" in str(error.value) or "returned None" in str(error.value)


def test_builtin_arbiters_stay_inside_the_union():
    for name in ("or", "and"):
        merged = contract.merge(builtin("arbiter", name), TASK_MASKS, "w")
        assert not (merged & ~(TASK_MASKS[0] | TASK_MASKS[1])).any()


# ---------------------------------------------------------------------------------------------
# metrics

class Scoring(Metric):
    name = "scoring"
    description = "test metric"

    def __init__(self, value):
        self.value = value

    def layer_score(self, mask_a, mask_b, saliency_a, saliency_b):
        return self.value


@pytest.mark.parametrize("value,message", [
    (math.nan, "expected a finite number, got nan"),
    (math.inf, "expected a finite number, got inf"),
    (torch.tensor(0.5), "expected a float, got Tensor"),
    (True, "expected a float, got bool"),
    ("0.5", "expected a float, got str"),
    (None, r"layer_score\(\) returned None"),
    (10 ** 400, "expected a finite number, got 1000000000"),
])
def test_a_broken_metric_is_one_error_naming_it(value, message):
    masks, saliency = TASK_MASKS, [torch.rand(2, 3), torch.rand(2, 3)]
    with pytest.raises(PluginError, match=message) as error:
        contract.layer_score(Scoring(value), *masks, *saliency, "trunk.0.weight")
    assert str(error.value).startswith("metric 'scoring' (")


def test_a_metric_must_leave_its_inputs_alone():
    class Clearing(Metric):
        name = "clearing"
        description = "zeroes a saliency"

        def layer_score(self, mask_a, mask_b, saliency_a, saliency_b):
            saliency_b.zero_()
            return 0.5

    masks = [m.clone() for m in TASK_MASKS]
    with pytest.raises(PluginError, match=r"changed its input saliency_b of 'w' in place"):
        contract.layer_score(Clearing(), *masks, torch.rand(2, 3), torch.rand(2, 3), "w")


@pytest.mark.parametrize("value", [1, 0.25, np.float64(0.75)])
def test_metric_numbers_are_floats(value):
    got = contract.layer_score(Scoring(value), *TASK_MASKS, torch.rand(2, 3), torch.rand(2, 3),
                               "w")
    assert type(got) is float and got == float(value)


# ---------------------------------------------------------------------------------------------
# compute_masks: declarations, rounds, the requested sparsity

def test_objects_passed_from_python_have_their_declarations_checked(tiny_model, tasks):
    class Odd(Returning):
        granularity = "row"

    with pytest.raises(PluginError, match="granularity must be 'element' or 'filter', got 'row'"):
        compute_masks(tiny_model, tiny_model.layout(), tasks, [], scorer=Odd(scores_of))
    with pytest.raises(PrunekitError, match="expected a scorer name or a prunekit.Scorer"):
        compute_masks(tiny_model, tiny_model.layout(), tasks, [], scorer=Returning)


class AllOrNothing(Arbiter):
    """Inside the contract (a subset of the union), but the merged density jumps from 0 to the
    union's: no keep ratio reaches a target in between."""
    name = "all-or-nothing"
    description = "the union when it keeps over 30% of the tensor, else nothing"

    def merge(self, masks):
        union = torch.stack(list(masks)).any(0)
        return union if union.float().mean() > 0.3 else torch.zeros_like(union)


def test_masks_missing_the_requested_sparsity_stop_with_the_plugins_named(tiny_model, tasks,
                                                                         batches):
    with pytest.raises(PrunekitError) as error:
        compute_masks(tiny_model, tiny_model.layout(), tasks, batches, arbiter=AllOrNothing(),
                      sparsity=0.7)  # the shared tensors' jump steps over 0.7 on this model
    message = str(error.value)
    assert message.startswith("the masks are ")
    assert ", 0.700 was requested (tolerance 0.005): the plugins in play are scorer " \
           "'disparse-snip' (prunekit " in message
    assert "thresholder 'topk' (prunekit " in message
    assert message.endswith(f"arbiter 'all-or-nothing' (module {__name__}, not "
                            "installed)")


def test_without_compensation_a_miss_is_returned_as_measured(tiny_model, tasks, batches):
    result = compute_masks(tiny_model, tiny_model.layout(), tasks, batches,
                           arbiter=AllOrNothing(), sparsity=0.7, compensate=False)
    assert abs(result.achieved - 0.7) > contract.SPARSITY_TOLERANCE


def test_round_sparsities_exponential_and_linear():
    assert round_sparsities(0.9, 1) == [0.9]
    assert round_sparsities(0.9, 2) == pytest.approx([1 - 0.1 ** 0.5, 0.9])
    assert round_sparsities(0.9, 3, "linear") == pytest.approx([0.3, 0.6, 0.9])
    assert round_sparsities(0.1, 4, "linear")[-1] == 0.1


def test_a_scorer_declaring_rounds_scores_each_round_on_the_pruned_model(tiny_model, tasks):
    seen = []

    class Rounds(Scorer):
        name = "rounds"
        description = "magnitude in three rounds"
        per_task = False
        needs_data = False
        rounds = 3
        schedule = "linear"

        def score(self, context):
            weights = {n: p.detach().clone() for n, p in context.layout.params.items()}
            seen.append((context.round, context.rounds, context.input_shape,
                         sum(int((w == 0).sum()) for w in weights.values())))
            return {JOINT: {n: w.abs() for n, w in weights.items()}}

    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    total = sum(p.numel() for p in tiny_model.layout().resolve(tiny_model).params.values())
    result = compute_masks(tiny_model, tiny_model.layout(), tasks, [], scorer=Rounds(),
                           sparsity=0.6, input_shape=(1, 3, 8, 10))
    assert [s[:3] for s in seen] == [(r, 3, (1, 3, 8, 10)) for r in (1, 2, 3)]
    zeros = [s[3] for s in seen]
    assert zeros[0] == 0
    assert zeros[1] == pytest.approx(0.2 * total, abs=2)  # the first round's prune, zeroed
    assert zeros[2] == pytest.approx(0.4 * total, abs=2)
    assert abs(result.achieved - 0.6) <= contract.SPARSITY_TOLERANCE
    for name, value in tiny_model.named_parameters():  # the weights come back
        assert torch.equal(value.detach(), before[name])


# ---------------------------------------------------------------------------------------------
# prunekit.testing

def test_the_plugin_check_lists_what_a_broken_plugin_gets():
    findings = check_plugin(Merging(lambda masks: torch.ones_like(masks[0])))
    failed = [f for f in findings if not f.ok]
    assert len(failed) == 4
    assert all("expected a subset of the tasks' union" in f.problem for f in failed)
    # where the union is everything (or there is nothing), keeping all is within the contract
    assert [f.check for f in findings if f.ok] == ["3 random masks of an empty tensor",
                                                   "3 full masks"]
    assert check_plugin("or") and all(f.ok for f in check_plugin("or"))


# ---------------------------------------------------------------------------------------------
# what is measured and written

def test_sparsity_is_counted_from_the_saved_weights(tiny_model, layout):
    masks = {n: torch.rand(p.shape) < 0.5 for n, p in layout.params.items()}
    state = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    for name, mask in masks.items():
        state[name][~mask] = 0
    name = first_conv(layout)
    state[name][masks[name]] = 0  # kept but zero: the model has it pruned
    summary = measured_sparsity(state, masks, layout)
    zeros = sum(int((state[n] == 0).sum()) for n in masks)
    assert summary["achieved"] == zeros / sum(m.numel() for m in masks.values())
    assert summary["layers"][name] == 1.0
    assert summary["masked"] < summary["achieved"]
    state[name][0, 0, 0, 0] = 1.0
    masks[name][0, 0, 0, 0] = False
    with pytest.raises(PrunekitError, match=r"1 pruned weight\(s\) of 'trunk.0.weight' are not "
                                            "zero in the saved model"):
        measured_sparsity(state, masks, layout)


def test_report_json_is_strict_and_names_each_nulled_value(tmp_path):
    data = {"metrics": {"seg": {"miou": math.nan, "acc": 0.5}}, "curve": [1.0, math.inf]}
    assert non_finite_keys(data) == ["metrics.seg.miou", "curve[1]"]
    write_json(tmp_path / "r.json", data)

    def refuse(constant):
        raise ValueError(constant)

    written = json.loads((tmp_path / "r.json").read_text(), parse_constant=refuse)
    assert written == {"metrics": {"seg": {"miou": None, "acc": 0.5}}, "curve": [1.0, None]}
