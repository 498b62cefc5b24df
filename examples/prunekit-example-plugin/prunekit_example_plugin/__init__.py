"""A third-party prunekit plugin: two scorers, an arbiter and a metric.

prunekit finds this module through the entry point ``example = prunekit_example_plugin`` in the
group ``prunekit`` (see pyproject.toml) and calls its ``prunekit_register_*`` hooks.
"""
from __future__ import annotations

from prunekit import hookimpl

from .arbiters import WeightedVoteArbiter
from .metrics import DiceMetric
from .scorers import MagnitudeScorer, SynFlowScorer


@hookimpl
def prunekit_register_scorers(register):
    register(SynFlowScorer())
    register(MagnitudeScorer())


@hookimpl
def prunekit_register_arbiters(register):
    register(WeightedVoteArbiter())


@hookimpl
def prunekit_register_metrics(register):
    register(DiceMetric())
