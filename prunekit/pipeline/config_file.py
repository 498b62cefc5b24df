"""Run settings from a file: ``prunekit run --config FILE`` (JSON, or TOML by its suffix).

The keys are RunConfig's fields, spelt with underscores or dashes as the long options are
(``score_batches`` or ``score-batches``). Every key and value is checked against RunConfig before
anything runs: an unknown key or a value of the wrong type is one clear error.

Presets are such files shipped in ``configs/`` (``prunekit run --preset NAME``, listed by
``prunekit presets``): the first comment line is the summary, and a ``# command: NAME`` line
marks a preset for another command than ``prunekit run``, whose keys are that command's options.
"""
from __future__ import annotations

import difflib
import json
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PrunekitError, UnknownNameError, one_line
from .config import RunConfig

FIELD_TYPES = typing.get_type_hints(RunConfig)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The file's settings as RunConfig keyword arguments."""
    path = Path(path)
    if not path.exists():
        raise PrunekitError(f"config file {str(path)!r} does not exist")
    if not path.is_file():
        raise PrunekitError(f"config file {str(path)!r} is not a file")
    settings = parse(path)
    if not isinstance(settings, dict):
        raise PrunekitError(f"config file {str(path)!r} must hold one table of settings "
                            f"(an object), not a {type(settings).__name__}")
    return {name: checked(path, name, value)
            for name, value in ((key_name(path, key), value) for key, value in settings.items())}


def parse(path: Path) -> Any:
    toml = path.suffix.lower() == ".toml"
    try:
        if toml:
            with path.open("rb") as file:
                return tomllib.load(file)
        return json.loads(path.read_text())
    except OSError as exc:
        raise PrunekitError(f"config file {str(path)!r} could not be read: "
                            f"{exc.strerror or one_line(exc, 200)}") from exc
    except (ValueError, UnicodeDecodeError) as exc:  # JSON, TOML and encoding errors
        raise PrunekitError(f"config file {str(path)!r} is not valid "
                            f"{'TOML' if toml else 'JSON'}: {one_line(exc, 200)}") from exc


def key_name(path: Path, key: str) -> str:
    name = str(key).replace("-", "_")
    if name not in FIELD_TYPES:
        close = difflib.get_close_matches(name, FIELD_TYPES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise PrunekitError(f"config file {str(path)!r}: unknown setting {key!r}{hint}")
    return name


def checked(path: Path, name: str, value: Any) -> Any:
    """``value`` as field ``name`` takes it (a list for a tuple, an int for a float), or an
    error naming what the field wants."""
    hint = FIELD_TYPES[name]
    try:
        return convert(value, hint)
    except TypeError:
        raise PrunekitError(f"config file {str(path)!r}: {name} must be {describe(hint)}, "
                            f"got {value!r}") from None


def convert(value: Any, hint: Any) -> Any:
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in arguments:
            return None
        (kind,) = [a for a in arguments if a is not type(None)]
        return convert(value, kind)
    if origin is tuple:
        if isinstance(value, str) and arguments[0] is str:
            value = [part for part in value.split(",") if part]  # as the options take it
        if not isinstance(value, list):
            raise TypeError
        kinds = ([arguments[0]] * len(value) if arguments[-1] is Ellipsis else list(arguments))
        if len(kinds) != len(value):
            raise TypeError
        return tuple(convert(item, kind) for item, kind in zip(value, kinds))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError
    if hint is str:
        if isinstance(value, str):
            return value
        raise TypeError
    raise TypeError  # a field of a kind no file value maps to


def describe(hint: Any) -> str:
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        (kind,) = [a for a in arguments if a is not type(None)]
        return f"{describe(kind)} or null"
    if origin is tuple:
        plural = PLURALS.get(arguments[0], str(arguments[0]))
        if arguments[-1] is Ellipsis:
            return f"a list of {plural}"
        return f"a list of {len(arguments)} {plural}"
    return {bool: "true or false", int: "an integer", float: "a number",
            str: "a string"}.get(hint, str(hint))


PLURALS = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}



# Shipped presets: configs/NAME.toml at the top of the repository, beside the package.
PRESETS_DIR = Path(__file__).resolve().parents[2] / "configs"
COMMAND_LINE = "# command:"  # a preset for another command than `prunekit run` says which


@dataclass(frozen=True)
class Preset:
    """A shipped settings file: its name, the command it is for and its one-line summary (the
    file's first comment line)."""

    name: str
    command: str
    summary: str
    path: Path


def presets() -> list[Preset]:
    """Every shipped preset, by name."""
    return [read_preset_header(path) for path in sorted(PRESETS_DIR.glob("*.toml"))]


def read_preset_header(path: Path) -> Preset:
    comments = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        comments.append(line)
    commands = [c.removeprefix(COMMAND_LINE).strip() for c in comments
                if c.startswith(COMMAND_LINE)]
    summary = comments[0].lstrip("# ").strip() if comments else ""
    return Preset(path.stem, commands[0] if commands else "run", summary, path)


def find_preset(name: str, command: str = "run") -> Preset:
    """The shipped preset ``name``, which must be one for ``prunekit COMMAND``."""
    known = {p.name: p for p in presets()}
    if name not in known:
        raise UnknownNameError("preset", name, known)
    found = known[name]
    if found.command != command:
        raise PrunekitError(f"preset {name!r} is for prunekit {found.command}, not prunekit "
                            f"{command}; type: {command_line(found)}")
    return found


def command_line(found: Preset) -> str:
    """The command a preset stands for, with its settings as options."""
    options = []
    for key, value in parse(found.path).items():
        option = f"--{key.replace('_', '-')}"
        if value is True:
            options.append(option)
        elif value is not False:
            text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
            options.append(f"{option} {text}")
    return " ".join(["prunekit", found.command, *options])
