"""Data-free scorers: SynFlow (iterative, declared to the core) and weight magnitude."""
from __future__ import annotations

import copy

import torch

from prunekit import JOINT, Saliency, Scorer, ScoringContext


class SynFlowScorer(Scorer):
    """Iterative Synaptic Flow pruning (Tanaka et al., NeurIPS 2020).

    The score of a weight is |w * dR/dw|, where R is the sum of the outputs of the network with
    every weight and buffer replaced by its absolute value, fed an input of ones. No data: the
    score only depends on the weights, so pruning in many rounds (the paper's 100, on an
    exponential schedule) avoids layer collapse. The core runs the rounds: it zeroes the
    weights pruned so far before each call.
    """

    name = "example-synflow"
    description = "SynFlow: data-free synaptic flow |w * dR/dw| of the all-ones input, 100 rounds"
    per_task = False
    needs_data = False
    rounds = 100
    schedule = "exponential"

    def score(self, context: ScoringContext) -> Saliency:
        if context.input_shape is None:
            raise ValueError("SynFlow builds its own input and needs context.input_shape")
        # float64: the flow is a product over every layer and overflows float32 in deep nets
        model = copy.deepcopy(context.model).double().eval()
        with torch.no_grad():
            for value in model.state_dict().values():
                if value.is_floating_point():
                    value.abs_()
        params = dict(model.named_parameters())
        names = list(context.layout.params)
        ones = torch.ones(context.input_shape, dtype=torch.float64, device=context.device)
        flow = sum(output.sum() for output in model(ones).values())
        grads = torch.autograd.grad(flow, [params[n] for n in names], allow_unused=True)
        return {JOINT: {name: (params[name].detach() * grad).abs() if grad is not None
                        else torch.zeros_like(params[name], dtype=torch.float64)
                        for name, grad in zip(names, grads)}}


class MagnitudeScorer(Scorer):
    name = "example-magnitude"
    description = "weight magnitude |w| of every prunable tensor, one joint saliency, no data"
    per_task = False
    needs_data = False

    def score(self, context: ScoringContext) -> Saliency:
        return {JOINT: {name: param.detach().abs()
                        for name, param in context.layout.params.items()}}
