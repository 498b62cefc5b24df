"""pluggy hook specifications: how a plugin hands prunekit its methods.

A plugin module (registered under the entry-point group ``prunekit``) implements one or more of
these hooks with ``@prunekit.hookimpl`` and calls ``register`` once per method object.
"""
import pluggy

hookspec = pluggy.HookspecMarker("prunekit")
hookimpl = pluggy.HookimplMarker("prunekit")


@hookspec
def prunekit_register_scorers(register):
    """Register saliency scorers.

    :param register: call ``register(scorer)`` with each ``prunekit.Scorer`` instance.
    Every implementation is called; return values are ignored.
    """


@hookspec
def prunekit_register_thresholders(register):
    """Register thresholders, which turn saliency into masks at a target density.

    :param register: call ``register(thresholder)`` with each ``prunekit.Thresholder`` instance.
    Every implementation is called; return values are ignored.
    """


@hookspec
def prunekit_register_arbiters(register):
    """Register arbiters, which merge the per-task masks of a shared tensor into one.

    :param register: call ``register(arbiter)`` with each ``prunekit.Arbiter`` instance.
    Every implementation is called; return values are ignored.
    """


@hookspec
def prunekit_register_metrics(register):
    """Register metrics, which compare two tasks' subnetworks layer by layer.

    :param register: call ``register(metric)`` with each ``prunekit.Metric`` instance.
    Every implementation is called; return values are ignored.
    """
