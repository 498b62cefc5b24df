"""Models by name. A builder takes {task: output channels} and a width multiplier and returns a
model whose ``layout()`` declares its shared trunk and per-task heads. A name ``MODULE:FUNCTION``
is the user's own builder (``prunekit.models.user``)."""
from __future__ import annotations

from typing import Callable, Mapping

from torch import nn

from ..errors import UnknownNameError
from .backbones import mobilenetv2, vgg16
from .deeplab import MultiTaskDeepLab, deeplab_resnet34, deeplab_resnet50
from .user import build_user_model, canonical_name, is_user_model, model_layout

MODELS: dict[str, Callable[[Mapping[str, int], float], nn.Module]] = {
    "deeplab-resnet34": deeplab_resnet34,
    "deeplab-resnet50": deeplab_resnet50,
    "vgg16": vgg16,
    "mobilenetv2": mobilenetv2,
}


def build_model(name: str, task_channels: Mapping[str, int], width: float = 1.0) -> nn.Module:
    if is_user_model(name):
        return build_user_model(name, task_channels, width)
    if name not in MODELS:
        raise UnknownNameError("model", name, MODELS)
    return MODELS[name](task_channels, width)


__all__ = ["MODELS", "build_model", "canonical_name", "model_layout", "MultiTaskDeepLab", "deeplab_resnet34"]
