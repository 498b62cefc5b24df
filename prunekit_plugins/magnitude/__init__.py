"""Weight magnitude |w|: the criterion of iterative magnitude pruning and RigL's drop step."""
from __future__ import annotations

from prunekit import JOINT, Scorer, ScoringContext, hookimpl


class MagnitudeScorer(Scorer):
    name = "magnitude"
    description = "weight magnitude |w| (iterative magnitude pruning, lottery tickets)"
    per_task = False
    needs_data = False

    def score(self, context: ScoringContext):
        return {JOINT: {name: param.detach().abs().float()
                        for name, param in context.layout.params.items()}}


@hookimpl
def prunekit_register_scorers(register):
    register(MagnitudeScorer())
