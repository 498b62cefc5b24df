"""prunekit: pruning for multi-task neural networks, with plugins for every method.

The pieces a user or plugin author needs are importable from here; see docs/architecture.md.
"""
from ._version import __version__
from .errors import PrunekitError
from .hookspecs import hookimpl
from .interfaces import (JOINT, Arbiter, Masks, Metric, Plugin, Saliency, Scorer, ScoringContext,
                         Thresholder)
from .core.layout import MultiTaskLayout, ResolvedLayout
from .core.masks import AppliedMasks, sparsity_summary
from .core.saliency import GradientScorer
from .api import compute_masks
from .pipeline.outputs import load_checkpoint
from .pipeline.engine import run
from .pipeline.config import RunConfig

__all__ = [
    "__version__", "PrunekitError", "hookimpl", "JOINT", "Arbiter", "Masks", "Metric", "Plugin",
    "Saliency", "Scorer", "ScoringContext", "Thresholder", "MultiTaskLayout", "ResolvedLayout",
    "AppliedMasks", "sparsity_summary", "GradientScorer", "compute_masks", "RunConfig", "load_checkpoint", "run",
]
