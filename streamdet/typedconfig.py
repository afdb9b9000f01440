"""YAML into typed dataclasses, with one-line errors that name the key and what was expected.

A field may carry metadata: `choices` (allowed values), `min` / `max` (inclusive bounds),
`above` (exclusive lower bound), or `path` (a file or folder: relative to the config file, see
`rebase_paths`).  Cross-field rules live in a dataclass's `problems()` method.
"""
from __future__ import annotations

import dataclasses
import re
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar

from streamdet.errors import one_line

T = TypeVar("T")


class ConfigError(Exception):
    pass


MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 20
NOT_A_NUMBER = "a number too long to be a setting"


def _plain_loader():
    """Safe YAML without aliases (a configuration never needs them, and an alias bomb expands
    to gigabytes) and without deep nesting (which exhausts the stack). Built on first use, so that
    the config's dataclasses import without yaml."""
    import yaml

    class PlainLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            # A key named twice (two `detector:` blocks) would silently keep the last: say so instead.
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, typing.Hashable) and key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"the key {_short(key)} appears twice in one mapping", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a configuration", event.start_mark)
            self._depth = getattr(self, "_depth", 0) + 1
            try:
                if self._depth > MAX_DEPTH:
                    raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    # Numbers as people write them: YAML 1.1 reads 5e-1 and 1e6 (no dot) as text; YAML 1.2 and
    # every other reader of numbers take them as floats.
    PlainLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d[\d_]*)(?:\.\d*)?[eE][-+]?\d+$"), list("-+0123456789"))
    return PlainLoader


def load_yaml(path: Path | str) -> dict:
    import yaml

    path = Path(path)
    try:
        raw = path.read_bytes()
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"config {path}: {len(raw)} bytes; a configuration is at most {MAX_CONFIG_BYTES}")
        text = raw.decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"config {path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"config {path}: not UTF-8 text (byte {raw[exc.start:exc.start + 1]!r} on line {line}); save it as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_plain_loader())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config {path}: not valid YAML{where}: {one_line(getattr(exc, 'problem', None) or exc, 120)}") from None
    except RecursionError:
        raise ConfigError(f"config {path}: nested too deeply to be a configuration") from None
    except ValueError as exc:  # an integer of more than 4,300 digits, refused by Python itself
        raise ConfigError(f"config {path}: {NOT_A_NUMBER} ({one_line(exc, 60)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: expected a mapping of sections at the top level, found {type(data).__name__}")
    return data


def build(cls: type[T], data: Any, where: str = "") -> T:
    """Make a `cls` from plain YAML data, checking keys, types and bounds.

    Cross-field rules are left to `check`, run once command-line overrides are applied."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, found {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{_join(where, unknown[0])}: unknown key (expected one of: {', '.join(fields)})")
    values = {}
    for name, value in data.items():
        values[name] = _coerce(hints[name], value, _join(where, name), fields[name].metadata)
    return cls(**values)


def check(obj: Any, where: str = "") -> None:
    """Check types, bounds and every `problems()` rule, recursively."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check(value, _join(where, f.name))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    check(item, f"{_join(where, f.name)}[{i}]")
        else:
            _coerce(hints[f.name], value, _join(where, f.name), f.metadata)
    problems = getattr(obj, "problems", None)
    if problems:
        for key, message in problems():
            raise ConfigError(f"{_join(where, key)}: {message}")


def set_path(obj: Any, dotted: str, raw: str) -> None:
    """Apply `section.key=value` from the command line; the value is parsed as YAML."""
    parts = dotted.split(".")
    parent, target = None, obj
    for part in parts[:-1]:
        if not dataclasses.is_dataclass(target) or not hasattr(target, part):
            raise ConfigError(f"--set {dotted}: unknown key {part!r}")
        parent, target = target, getattr(target, part)
    name = parts[-1]
    names = {f.name: f for f in dataclasses.fields(target)} if dataclasses.is_dataclass(target) else {}
    if name not in names:
        raise ConfigError(f"--set {dotted}: unknown key {name!r} (expected one of: {', '.join(names)})")
    import yaml

    try:
        value = yaml.load(raw, Loader=_plain_loader())
    except yaml.YAMLError:
        value = raw
    except ValueError:  # an integer of more than 4,300 digits
        raise ConfigError(f"--set {dotted}: {NOT_A_NUMBER}") from None
    hint = typing.get_type_hints(type(target))[name]
    value = _coerce(hint, value, dotted, names[name].metadata)
    if type(target).__dataclass_params__.frozen:  # e.g. FeatureParams: a new one takes its place
        setattr(parent, parts[-2], dataclasses.replace(target, **{name: value}))
    else:
        setattr(target, name, value)


def _coerce(hint: Any, value: Any, key: str, meta: typing.Mapping) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            if type(None) in typing.get_args(hint):
                return None
        for option in options:
            try:
                return _coerce(option, value, key, meta)
            except ConfigError:
                if option is options[-1]:
                    raise
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, found {_describe(value)}")
        return [_coerce(item, v, f"{key}[{i}]", {}) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else build(hint, value, key)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, found {_describe(value)}")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, found {_describe(value)}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, found {_describe(value)}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{key}: expected a finite number, found {value}")
    elif hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, found {_describe(value)}")
    elif hint is typing.Any or hint is dict:
        return value
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{key}: expected one of {', '.join(map(repr, meta['choices']))}, found {_short(value)}")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{key}: expected at least {meta['min']}, found {_short(value)}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{key}: expected at most {meta['max']}, found {_short(value)}")
    if "above" in meta and value <= meta["above"]:
        raise ConfigError(f"{key}: expected more than {meta['above']}, found {_short(value)}")
    return value


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 2, 3, 3, 30, 30, 30


def _short(value: Any) -> str:
    """A bad value quoted in an error: a short prefix, never the whole (possibly huge) thing."""
    try:
        text = _REPR.repr(value)
    except ValueError:  # an integer too long for Python to write in decimal (from hexadecimal YAML)
        return f"a number of {value.bit_length()} bits" if isinstance(value, int) else "a value too long to show"
    return text if len(text) < 40 else text[:37] + "..."


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return f"{type(value).__name__} {_short(value)}"


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def apply_overrides(obj: Any, items: list[str]) -> None:
    """`--set KEY=VALUE` items, in order (both command lines)."""
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item}: expected KEY=VALUE")
        set_path(obj, key, value)


PATH = {"path": True}  # the metadata of a field that names a file or folder


def rebase_paths(obj: Any, config_path: Path | str) -> None:
    """Every `path` field of `obj` and of the dataclasses inside it (lists too), taken relative to
    the config file's folder: one rule for every path a config names, none listed by hand."""
    if isinstance(obj, list):
        for item in obj:
            rebase_paths(item, config_path)
        return
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get("path"):
            setattr(obj, f.name, relative_to_file(config_path, value))
        else:
            rebase_paths(value, config_path)


def relative_to_file(config_path: Path | str, value: str | None) -> str | None:
    """A path written in a config file is relative to the file's folder."""
    if not value or Path(value).is_absolute():
        return value
    return str((Path(config_path).resolve().parent / value).resolve())


def in_file(path: Path | str | None, action: Callable[[], Any]) -> Any:
    """Run `action`; a ConfigError it raises names the config file (once)."""
    try:
        return action()
    except ConfigError as exc:
        message = str(exc)
        if path is None or message.startswith("config "):
            raise
        raise ConfigError(f"config {path}: {message}") from None
