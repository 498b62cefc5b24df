"""Layouts: which tensors are shared and which belong to each head."""
import pytest
from torch import nn

from prunekit import MultiTaskLayout, PrunekitError

from conftest import TinyMultiTaskNet


def test_resolves_conv_weights_into_shared_and_heads_in_model_order():
    model = TinyMultiTaskNet()
    layout = model.layout().resolve(model)
    assert layout.shared == ["trunk.0.weight", "trunk.3.weight"]
    assert layout.heads["seg"] == ["heads.seg.0.weight", "heads.seg.2.weight"]
    assert layout.tasks == ["seg", "depth", "normal"]
    assert layout.task_params("depth") == layout.shared + layout.heads["depth"]
    assert layout.owner("heads.normal.2.weight") == "normal"
    assert layout.owner("trunk.0.weight") == "shared"
    assert list(layout.params) == layout.shared + [n for t in layout.tasks for n in layout.heads[t]]


def test_include_globs_and_exclude_globs():
    model = TinyMultiTaskNet()
    layout = MultiTaskLayout(shared=["trunk"], heads={"seg": ["heads.seg"]},
                             include=(nn.Conv2d, "*.bias"), exclude=("trunk.0.*",))
    resolved = layout.resolve(model)
    # conv weights by type, every bias (BatchNorm's too) by glob, the first conv excluded
    assert resolved.shared == ["trunk.1.bias", "trunk.3.weight", "trunk.3.bias", "trunk.4.bias"]
    assert "heads.seg.0.bias" in resolved.heads["seg"]


def test_any_module_with_a_trunk_and_heads():
    model = nn.ModuleDict({"encoder": nn.Linear(4, 4), "a": nn.Linear(4, 2), "b": nn.Linear(4, 1)})
    resolved = MultiTaskLayout(shared=["encoder"], heads={"a": ["a"], "b": ["b"]}).resolve(model)
    assert resolved.shared == ["encoder.weight"]
    assert resolved.heads == {"a": ["a.weight"], "b": ["b.weight"]}


def test_a_task_without_parameters_is_an_error():
    model = TinyMultiTaskNet()
    layout = MultiTaskLayout(shared=["trunk"], heads={"seg": ["heads.seg"], "depth": ["nowhere"]})
    with pytest.raises(PrunekitError, match="task 'depth' with no prunable parameters"):
        layout.resolve(model)


def test_overlapping_prefixes_are_an_error():
    model = TinyMultiTaskNet()
    layout = MultiTaskLayout(shared=["trunk", "heads.seg"], heads={"seg": ["heads.seg"]})
    with pytest.raises(PrunekitError, match="claimed by both"):
        layout.resolve(model)


def test_no_shared_parameters_is_an_error():
    model = TinyMultiTaskNet()
    with pytest.raises(PrunekitError, match="shared prefixes"):
        MultiTaskLayout(shared=["backbone"], heads={"seg": ["heads.seg"]}).resolve(model)


def test_for_tasks_keeps_the_asked_heads_and_rejects_unknown_ones():
    layout = TinyMultiTaskNet().layout()
    assert list(layout.for_tasks(["depth"]).heads) == ["depth"]
    with pytest.raises(PrunekitError, match="no head for task"):
        layout.for_tasks(["edges"])
