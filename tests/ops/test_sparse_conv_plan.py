"""Tap plans of the CPU sparse_conv2d: made once per input size (sparse_conv2d_plan), kept by
SparseConv2d while its rows are unchanged, checked on every call, and carried into exported
programs. Every output is compared with the dense masked conv."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.export import export_program
from prunekit.ops import SparseConv2d, sparse_conv2d, sparse_conv2d_plan, sparse_conv2d_reference
from helpers import CUDA
from test_sparse_conv import conv_layer, random_mask

WRONG_PLAN = "plan was not made by sparse_conv2d_plan"


def sparse_layer(seed=0, density=0.3, flip=False, **options):
    """A 6->5 3x3 layer; `flip` reverses the mask's output channels (same count, other rows)."""
    generator = torch.Generator().manual_seed(seed)
    options = dict(padding=1) | options
    conv = conv_layer(6, 5, 3, generator, **options)
    mask = random_mask(conv.weight.shape, density, generator)
    return SparseConv2d.from_conv(conv, mask.flip(0) if flip else mask)


def assert_equals_dense(layer, x):
    want = F.conv2d(x, layer.dense_weight(), layer.bias, layer.stride, layer.padding,
                    layer.dilation)
    torch.testing.assert_close(layer(x), want, rtol=1e-4, atol=1e-4, equal_nan=True)


def call_with(layer, x, plan):
    return sparse_conv2d(x, layer.values, layer.row_offsets, layer.columns, layer.kernel_size,
                         layer.bias, layer.stride, layer.padding, layer.dilation, plan=plan)


def plan_of(layer, x):
    return sparse_conv2d_plan(x, layer.values, layer.row_offsets, layer.columns,
                              layer.kernel_size, layer.stride, layer.padding, layer.dilation)


def test_the_layer_plans_once_per_input_size():
    layer = sparse_layer()
    small, large = torch.randn(2, 6, 9, 11), torch.randn(1, 6, 14, 5)
    assert_equals_dense(layer, small)
    plan = layer.plan
    assert_equals_dense(layer, small[:1])  # another batch size: the same plan
    assert layer.plan is plan
    assert_equals_dense(layer, large)
    assert layer.plan is not plan
    assert_equals_dense(layer, small)


def test_a_plan_is_made_again_when_the_rows_change():
    layer = sparse_layer()
    x = torch.randn(2, 6, 9, 11)
    assert_equals_dense(layer, x)
    with torch.no_grad():  # in place: another valid column for the first kept weight
        layer.columns[0] = (layer.columns[0] + 1) % (6 * 9)
    assert_equals_dense(layer, x)
    other = sparse_layer(seed=1, density=0.6)
    layer.row_offsets, layer.columns = other.row_offsets, other.columns  # replaced
    layer.values = nn.Parameter(other.values.detach().clone())
    assert_equals_dense(layer, x)
    layer.load_state_dict(sparse_layer(seed=1, density=0.6, flip=True).state_dict())  # in place
    assert_equals_dense(layer, x)


def test_training_the_values_keeps_the_plan():
    layer = sparse_layer()
    x = torch.randn(2, 6, 9, 11)
    layer(x).square().sum().backward()
    plan = layer.plan
    torch.optim.SGD(layer.parameters(), lr=0.1).step()
    assert_equals_dense(layer, x)
    assert layer.plan is plan


def test_copies_and_state_dicts():
    layer = sparse_layer()
    x = torch.randn(2, 6, 9, 11)
    layer(x)
    assert "plan" not in layer.state_dict()
    twin = copy.deepcopy(layer)
    assert_equals_dense(twin, x)
    assert torch.equal(twin.plan, layer.plan)


def test_an_infinite_weight_left_out_of_the_plan_still_gives_nan():
    """ASPP on a small map: the plan leaves out corner taps that never land; a corner weight
    that becomes inf afterwards turns padding into NaN, as in F.conv2d."""
    generator = torch.Generator().manual_seed(4)
    conv = conv_layer(2, 3, 3, generator, padding=24, dilation=24)
    layer = SparseConv2d.from_conv(conv, torch.ones(conv.weight.shape, dtype=torch.bool))
    x = torch.randn(1, 2, 8, 10, generator=generator)
    assert_equals_dense(layer, x)
    with torch.no_grad():
        layer.values[1 * 18 + 0] = math.inf  # output channel 1, input channel 0, corner (0, 0)
    got = layer(x)
    assert_equals_dense(layer, x)
    assert got[0, 1].isnan().all() and got[0, 0].isfinite().all()


def test_a_plan_equals_planning_on_the_call():
    layer = sparse_layer(stride=2, dilation=(1, 2), padding=(1, 2))
    x = torch.randn(3, 6, 13, 17)
    plan = plan_of(layer, x)
    assert plan.dtype == torch.int64 and plan.dim() == 1
    torch.testing.assert_close(call_with(layer, x, plan), call_with(layer, x, None))
    torch.testing.assert_close(call_with(layer, x, plan), sparse_conv2d_reference(
        x, layer.dense_weight(), torch.ones(1, dtype=torch.bool), layer.bias, layer.stride,
        layer.padding, layer.dilation))


def corrupt_last(plan, value):
    plan = plan.clone()
    plan[-1] = value
    return plan


@pytest.mark.parametrize("make_wrong", [
    lambda layer, x: plan_of(layer, x[..., :-1]),                        # another input size
    lambda layer, x: plan_of(sparse_layer(padding=2), x),                # another padding
    lambda layer, x: plan_of(sparse_layer(density=0.9), x),              # another nnz
    lambda layer, x: plan_of(layer, x)[:-1],                             # truncated
    lambda layer, x: plan_of(layer, x).to(torch.int32),                  # another dtype
    lambda layer, x: corrupt_last(plan_of(layer, x), 10**9),             # offset past the images
    lambda layer, x: corrupt_last(plan_of(layer, x), -1),                # offset before them
    lambda layer, x: torch.zeros(100, dtype=torch.int64),                # not a plan
], ids=["size", "padding", "nnz", "truncated", "dtype", "offset high", "offset low", "zeros"])
def test_wrong_plans_are_refused(make_wrong):
    layer = sparse_layer()
    x = torch.randn(2, 6, 9, 11)
    with pytest.raises(RuntimeError, match=WRONG_PLAN):
        call_with(layer, x, make_wrong(layer, x))


def test_a_plan_index_out_of_range_is_refused():
    generator = torch.Generator().manual_seed(4)
    conv = conv_layer(2, 3, 3, generator, padding=24, dilation=24)
    layer = SparseConv2d.from_conv(conv, torch.ones(conv.weight.shape, dtype=torch.bool))
    x = torch.randn(1, 2, 8, 10)
    plan = plan_of(layer, x)  # leaves out the corners: ends with the taps' value indices
    call_with(layer, x, plan)
    for value in (layer.values.numel(), -1):
        with pytest.raises(RuntimeError, match=WRONG_PLAN):
            call_with(layer, x, corrupt_last(plan, value))


@pytest.mark.skipif(not CUDA, reason="no CUDA GPU on this machine")
def test_plans_are_refused_on_cuda():
    layer = sparse_layer()
    x = torch.randn(2, 6, 9, 11)
    plan = plan_of(layer, x)
    layer = layer.cuda()
    with pytest.raises(RuntimeError, match="tap plans are for CPU inputs"):
        call_with(layer, x.cuda(), plan)
    assert_equals_dense(layer, x.cuda())  # the layer passes none on CUDA


def test_an_exported_program_carries_the_plans():
    one_by_one = conv_layer(5, 4, 1, torch.Generator().manual_seed(1))
    model = nn.Sequential(sparse_layer(), nn.ReLU(),
                          SparseConv2d.from_conv(one_by_one, torch.rand(4, 5, 1, 1) < 0.5))
    x = torch.randn(1, 6, 9, 11)
    program = export_program(model, x)
    calls = [node for node in program.graph.nodes
             if node.target is torch.ops.prunekit.sparse_conv2d.default]
    assert len(calls) == 2 and all(call.args[-1] is not None for call in calls)
    assert sorted(program.graph_signature.non_persistent_buffers) == ["0.plan", "2.plan"]
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x.expand(3, -1, -1, -1)),
                                   model(x.expand(3, -1, -1, -1)))
