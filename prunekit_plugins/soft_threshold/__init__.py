"""Learnable soft thresholds (AdapMTL): masks learned during training, one threshold per component.

Each component (the shared backbone and each task head) has a threshold alpha = sigmoid(theta);
the forward pass uses sign(w) * relu(|w| - alpha), so weights within the threshold are zero and
theta learns with the weights. L2 decay on theta (--theta-decay) raises the thresholds while the
task losses hold them back; they freeze once the overall sparsity reaches the target.
"""
from __future__ import annotations

from prunekit import PrunekitError, Thresholder, hookimpl


class SoftThresholdThresholder(Thresholder):
    name = "soft-threshold"
    description = "AdapMTL: one learnable soft threshold per component, learned while training"
    learns = True

    def masks(self, scores, keep_ratio, scope=None):
        raise PrunekitError("soft-threshold learns its masks during training and does not "
                            "threshold saliency; use it with prunekit run --mode static")


@hookimpl
def prunekit_register_thresholders(register):
    register(SoftThresholdThresholder())
