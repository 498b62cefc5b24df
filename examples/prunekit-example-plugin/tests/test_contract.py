"""The plugin's own tests: each method keeps prunekit's plugin contract (prunekit.testing)."""
import pytest

from prunekit.testing import assert_plugin_ok
from prunekit_example_plugin.arbiters import WeightedVoteArbiter
from prunekit_example_plugin.metrics import DiceMetric
from prunekit_example_plugin.scorers import MagnitudeScorer, SynFlowScorer


@pytest.mark.parametrize("plugin", [SynFlowScorer(), MagnitudeScorer(), WeightedVoteArbiter(),
                                    DiceMetric()], ids=lambda p: p.name)
def test_keeps_the_contract(plugin):
    assert_plugin_ok(plugin)
