"""Which prunable tensors of a multi-task model are shared and which belong to each task head.

A layout is declared by module-name prefixes, so any ``nn.Module`` with a shared trunk and
per-task heads can be pruned::

    layout = MultiTaskLayout(shared=["encoder"], heads={"seg": ["seg_head"], "depth": ["depth_head"]})
    resolved = layout.resolve(model)
    resolved.shared            # ['encoder.conv1.weight', ...]
    resolved.heads["seg"]      # ['seg_head.0.weight', ...]
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Mapping, Sequence, Union

from torch import nn

from ..errors import PrunekitError

Selector = Union[type, str]
DEFAULT_INCLUDE: tuple[Selector, ...] = (nn.Conv2d, nn.Linear)


def under_prefix(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


@dataclass(frozen=True)
class ResolvedLayout:
    """The layout applied to one model: parameter names in model order."""

    params: dict[str, nn.Parameter]
    shared: list[str]
    heads: dict[str, list[str]]

    @property
    def tasks(self) -> list[str]:
        return list(self.heads)

    def task_params(self, task: str) -> list[str]:
        """The tensors task ``task`` scores: the shared ones, then its own head's."""
        return self.shared + self.heads[task]

    def owner(self, name: str) -> str:
        """``"shared"`` or the task whose head holds parameter ``name``."""
        if name in self.shared:
            return "shared"
        for task, names in self.heads.items():
            if name in names:
                return task
        raise KeyError(name)

    def numel(self, names: Sequence[str]) -> int:
        return sum(self.params[name].numel() for name in names)


@dataclass(frozen=True)
class MultiTaskLayout:
    """Shared and per-task module prefixes, plus which parameters count as prunable.

    ``include`` selects prunable parameters: a module class selects the ``weight`` of every module
    of that class, a string is a glob on parameter names. ``exclude`` globs remove parameters again
    (for example ``"backbone.conv1.weight"`` to keep the stem dense).
    """

    shared: Sequence[str]
    heads: Mapping[str, Sequence[str]]
    include: Sequence[Selector] = DEFAULT_INCLUDE
    exclude: Sequence[str] = field(default_factory=tuple)

    def for_tasks(self, tasks: Sequence[str]) -> "MultiTaskLayout":
        missing = [t for t in tasks if t not in self.heads]
        if missing:
            raise PrunekitError(f"the layout has no head for task(s) {', '.join(missing)}; "
                                f"heads: {', '.join(self.heads)}")
        return MultiTaskLayout(self.shared, {t: self.heads[t] for t in tasks},
                               self.include, self.exclude)

    def prunable(self, model: nn.Module) -> dict[str, nn.Parameter]:
        types = tuple(s for s in self.include if isinstance(s, type))
        globs = [s for s in self.include if isinstance(s, str)]
        selected: dict[str, nn.Parameter] = {}
        for module_name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if types and isinstance(module, types) and isinstance(weight, nn.Parameter):
                selected[f"{module_name}.weight" if module_name else "weight"] = weight
        for name, param in model.named_parameters():
            if any(fnmatch.fnmatchcase(name, g) for g in globs):
                selected[name] = param
        order = {name: i for i, (name, _) in enumerate(model.named_parameters())}
        return {name: selected[name] for name in sorted(selected, key=order.__getitem__)
                if not any(fnmatch.fnmatchcase(name, g) for g in self.exclude)}

    def resolve(self, model: nn.Module) -> ResolvedLayout:
        params = self.prunable(model)
        shared = [n for n in params if any(under_prefix(n, p) for p in self.shared)]
        heads = {task: [n for n in params if any(under_prefix(n, p) for p in prefixes)]
                 for task, prefixes in self.heads.items()}
        self.check_disjoint(shared, heads)
        if not shared:
            raise PrunekitError(f"the layout's shared prefixes {list(self.shared)} match no "
                                "prunable parameter")
        for task, names in heads.items():
            if not names:
                raise PrunekitError(f"the layout leaves task {task!r} with no prunable "
                                    f"parameters (head prefixes {list(self.heads[task])} match none)")
        owned = set(shared).union(*heads.values())
        return ResolvedLayout({n: p for n, p in params.items() if n in owned}, shared, heads)

    @staticmethod
    def check_disjoint(shared: list[str], heads: Mapping[str, list[str]]) -> None:
        seen = {name: "shared" for name in shared}
        for task, names in heads.items():
            for name in names:
                if name in seen:
                    raise PrunekitError(f"parameter {name!r} is claimed by both {seen[name]!r} "
                                        f"and {task!r}; layout prefixes must not overlap")
                seen[name] = task
