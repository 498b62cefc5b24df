"""Filter importance for structured pruning: Taylor (Molchanov et al., CVPR 2019) and CosPrune.

Both score whole output filters (``granularity = "filter"``): one score per output channel of
each prunable tensor, summed over the scoring batches.

- ``taylor``: (sum over the filter of w * dL/dw)^2 from the summed multi-task loss, the
  first-order Taylor estimate of the loss change when the filter is removed.
- ``cosprune``: the sum over task pairs of the cosine similarity between the tasks' gradients on
  the filter's weights; low scores mark filters where the tasks pull apart, which go first.
  Shared (backbone) filters only: heads are not scored.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from prunekit import JOINT, GradientScorer, Scorer, ScoringContext, hookimpl
from prunekit.core.saliency import preserved_state, task_losses


class TaylorScorer(GradientScorer):
    name = "taylor"
    description = "Taylor filter importance (sum over a filter of w * dL/dw)^2"
    per_task = False
    granularity = "filter"

    @staticmethod
    def criterion(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return (weight * grad).flatten(1).sum(dim=1).square()


def pairwise_filter_cosine(grads: list[torch.Tensor]) -> torch.Tensor:
    """Per output filter, the sum over task pairs of the cosine of their gradients (0 if zero)."""
    flat = [g.flatten(1) for g in grads]
    total = flat[0].new_zeros(flat[0].shape[0])
    for a, b in itertools.combinations(flat, 2):
        total += F.cosine_similarity(a, b, dim=1)
    return total


class CosPruneScorer(Scorer):
    name = "cosprune"
    description = "CosPrune: per shared filter, summed task-gradient cosines"
    per_task = False
    granularity = "filter"

    def score(self, context: ScoringContext):
        layout = context.layout
        tensors = [layout.params[n] for n in layout.shared]
        scores = {n: p.new_zeros(p.shape[0], dtype=torch.float32)
                  for n, p in zip(layout.shared, tensors)}
        with preserved_state(context.model):
            for batch in context.progress(context.batches, "scoring"):
                losses = list(task_losses(context, batch).values())
                per_task = [torch.autograd.grad(loss, tensors, retain_graph=i < len(losses) - 1)
                            for i, loss in enumerate(losses)]
                for j, name in enumerate(layout.shared):
                    scores[name] += pairwise_filter_cosine([g[j] for g in per_task]).float()
        return {JOINT: scores}


@hookimpl
def prunekit_register_scorers(register):
    register(TaylorScorer())
    register(CosPruneScorer())
