"""Finds plugins through the entry-point group ``prunekit`` and resolves names to objects.

Built-in methods register through the same entry points a third-party package uses, and load
first. Setting ``PRUNEKIT_DISABLE_PLUGIN_AUTOLOAD=1`` loads only prunekit's own entry points,
which is how a user recovers from a broken third-party plugin and how tests isolate themselves.
``PRUNEKIT_PLUGINS`` (or ``prunekit -p MODULE``) names plugin modules to load without
installing them, comma-separated: module names or ``.py`` files, as pytest's ``-p``; they load
with autoloading off too.
"""
from __future__ import annotations

import functools
import importlib.metadata
import os
import re
from dataclasses import dataclass
from typing import Iterator

import pluggy

from . import hookspecs
from .core.contract import declaration_problem, installed_distribution
from .errors import PrunekitError, UnknownNameError, one_line
from .imports import import_module_or_file
from .interfaces import INTERFACES, Plugin

ENTRY_POINT_GROUP = "prunekit"
OWN_DISTRIBUTION = "prunekit"
AUTOLOAD_SWITCH = "PRUNEKIT_DISABLE_PLUGIN_AUTOLOAD"
EXTRA_PLUGINS = "PRUNEKIT_PLUGINS"
NAME_PATTERN = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
HOOKS = {kind: f"prunekit_register_{kind}s" for kind in INTERFACES}


@dataclass(frozen=True)
class PluginInfo:
    kind: str
    name: str
    description: str
    obj: Plugin
    module: str            # the registering plugin (entry-point name)
    distribution: str
    version: str

    def as_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "description": self.description,
                "plugin": self.module, "distribution": self.distribution, "version": self.version}


@dataclass(frozen=True)
class Source:
    distribution: str
    version: str

    def describe(self) -> str:
        return f"{self.distribution} {self.version}"


def autoload_disabled() -> bool:
    return os.environ.get(AUTOLOAD_SWITCH, "").strip().lower() not in ("", "0", "false", "no")


def extra_plugin_modules() -> list[str]:
    """The modules ``PRUNEKIT_PLUGINS`` names, in order."""
    return [m.strip() for m in os.environ.get(EXTRA_PLUGINS, "").split(",") if m.strip()]


def iter_entry_points(only_own: bool) -> Iterator[tuple[importlib.metadata.EntryPoint, Source]]:
    """The group's entry points, prunekit's own first (so a clash is never blamed on them)."""
    seen = set()
    distributions = sorted(importlib.metadata.distributions(),
                           key=lambda d: d.metadata["Name"] != OWN_DISTRIBUTION)
    for dist in distributions:
        dist_name = dist.metadata["Name"] or "?"
        if only_own and dist_name != OWN_DISTRIBUTION:
            continue
        for ep in dist.entry_points:
            key = (dist_name, ep.name)
            if ep.group == ENTRY_POINT_GROUP and key not in seen:
                seen.add(key)
                yield ep, Source(dist_name, dist.version)


class Registry:
    """Every registered plugin object, by kind and name."""

    def __init__(self) -> None:
        self.manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.manager.add_hookspecs(hookspecs)
        self.sources: dict[str, Source] = {}
        self.entries: dict[str, dict[str, PluginInfo]] = {kind: {} for kind in INTERFACES}

    @classmethod
    def from_entry_points(cls, only_own: bool | None = None) -> "Registry":
        registry = cls()
        only_own = autoload_disabled() if only_own is None else only_own
        for ep, source in iter_entry_points(only_own):
            try:
                module = ep.load()
            except Exception as exc:
                raise PrunekitError(
                    f"plugin {ep.name!r} from {source.distribution} failed to load ({exc}); "
                    f"set {AUTOLOAD_SWITCH}=1 to load only prunekit's own plugins") from exc
            registry.add_plugin(module, ep.name, source)
        for where in extra_plugin_modules():
            registry.add_plugin(*load_extra_plugin(where))
        return registry

    def add_plugin(self, module: object, name: str, source: Source) -> None:
        """Register a plugin module (or object) and collect what its hooks register."""
        if self.manager.has_plugin(name):
            raise PrunekitError(f"two plugins are named {name!r}: one from "
                                f"{self.sources[name].describe()}, one from "
                                f"{source.describe()}; uninstall or rename one")
        try:
            self.manager.register(module, name=name)
            self.manager.check_pending()  # a hook name that matches no spec is a typo
        except pluggy.PluginValidationError as exc:
            self.manager.unregister(name=name)
            raise PrunekitError(f"plugin {name!r} from {source.distribution} is invalid: "
                                f"{exc}") from exc
        self.sources[name] = source
        for kind, hook_name in HOOKS.items():
            for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
                if impl.plugin_name == name:
                    self.call_register_hook(impl, kind, name, hook_name)

    def call_register_hook(self, impl, kind: str, plugin_name: str, hook_name: str) -> None:
        register = functools.partial(self.add, kind, plugin_name, hook_name)
        try:
            impl.function(**{arg: register for arg in impl.argnames})
        except PrunekitError:
            raise
        except Exception as exc:
            raise PrunekitError(f"plugin {plugin_name!r} failed in {hook_name}: {exc!r}") from exc

    def add(self, kind: str, plugin_name: str, hook_name: str, obj: object) -> None:
        interface = INTERFACES[kind]
        source = self.sources[plugin_name]
        where = f"plugin {plugin_name!r} from {source.describe()} (hook {hook_name})"
        if isinstance(obj, type) and issubclass(obj, interface):
            raise PrunekitError(f"{where} registered the class {obj.__name__}; register an "
                                f"instance: register({obj.__name__}())")
        if not isinstance(obj, interface):
            raise PrunekitError(f"{where} registered {obj!r}, which is not an instance of "
                                f"prunekit.{interface.__name__}")
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise PrunekitError(f"{where} registered a {kind} named {name!r}; names are "
                                "lower-case words joined by hyphens")
        if name in self.entries[kind]:
            other = self.entries[kind][name]
            raise PrunekitError(f"{kind} {name!r} is registered twice: by {where}, and before "
                                f"it by plugin {other.module!r} from {other.distribution} "
                                f"{other.version}; rename one of them")
        problem = declaration_problem(obj)
        if problem:
            raise PrunekitError(f"{where} registered {kind} {name!r}: {problem}")
        description = (getattr(obj, "description", "") or "").strip().splitlines()
        self.entries[kind][name] = PluginInfo(kind, name, description[0] if description else "",
                                              obj, plugin_name, source.distribution,
                                              source.version)

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[self.check_kind(kind)])

    def info(self, kind: str, name: str) -> PluginInfo:
        entries = self.entries[self.check_kind(kind)]
        if name not in entries:
            raise UnknownNameError(kind, name, entries)
        return entries[name]

    def get(self, kind: str, name: str) -> Plugin:
        return self.info(kind, name).obj

    def all(self, kind: str | None = None) -> list[PluginInfo]:
        kinds = [self.check_kind(kind)] if kind else list(self.entries)
        return [self.entries[k][n] for k in kinds for n in sorted(self.entries[k])]

    @staticmethod
    def check_kind(kind: str) -> str:
        if kind not in INTERFACES:
            raise UnknownNameError("plugin kind", kind, INTERFACES)
        return kind


def load_extra_plugin(where: str) -> tuple[object, str, Source]:
    """A plugin module named in ``PRUNEKIT_PLUGINS``: (module, its plugin name, its source).

    Its distribution is the one that installed it, if any; a module under development is
    ``not installed``.
    """
    try:
        module = import_module_or_file(where, "prunekit_plugin")
    except Exception as exc:
        raise PrunekitError(f"plugin module {where!r} (from -p / {EXTRA_PLUGINS}) failed to "
                            f"load ({type(exc).__name__}: {one_line(exc, 300)})") from exc
    found = installed_distribution(module.__name__)
    return module, where, Source(*found) if found else Source(f"{where} (-p)", "not installed")


@functools.lru_cache(maxsize=None)
def default_registry() -> Registry:
    """The registry of installed plugins, loaded once per process."""
    registry = Registry.from_entry_points()
    if not registry.names("scorer"):
        raise PrunekitError("no prunekit plugins are installed; install prunekit with "
                            "`make install` (pip install --no-build-isolation -e .)")
    return registry


def plugin_info(kind: str, name: str) -> dict:
    """Name, distribution and version of an installed plugin, as reports record them."""
    info = default_registry().info(kind, name)
    return {"name": info.name, "distribution": info.distribution, "version": info.version}
