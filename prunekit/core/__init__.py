"""The pieces a run is made of: masks, layouts, saliency, pruning and the plugin contract,
as functions on tensors and models that hold no run state."""
