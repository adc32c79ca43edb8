"""Reading a configuration: YAML files and ``KEY=VALUE`` overrides into a typed ``Config``.

``load_config(path, overrides)`` reads a YAML file, applies dotted overrides such as
``model.lrn.k=1`` (the CLIs' repeated ``--set KEY=VALUE``), and builds a ``Config``. Every
problem (unknown key, wrong type, value out of range, inconsistent sections) is collected and
reported at once in one ``ConfigError``, with "did you mean ..." suggestions for misspelt keys.

Type rules, applied the same way to the file and to the command line:
- ``float`` fields accept ints and numeric strings: PyYAML follows YAML 1.1, so ``lr: 1e-3``
  loads as the *string* "1e-3" (only ``1.0e-3`` is a float); we accept it as 0.001.
- ``bool`` fields accept only real booleans (``true``/``false``), never 0/1 or "yes" strings.
- lists become tuples; strings become ``Path`` where a field is a path.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from alexnet.config.checks import ConfigError, suggest
from alexnet.config.sections import Config


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (or start from the defaults) and apply ``KEY=VALUE`` overrides.

    Raises:
        ConfigError: listing every problem found, file and overrides together.
    """
    source = str(path) if path is not None else "defaults"
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise ConfigError([f"cannot read config file: {err.strerror}"], source) from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError([f"not valid YAML: {err}"], source) from None
        if not isinstance(raw, dict):
            raise ConfigError([f"top level must be a mapping, got {type(raw).__name__}"], source)
    problems: list[str] = []
    for item in overrides:
        _apply_override(raw, item, problems)
    return config_from_dict(raw, source, problems)


def config_from_dict(
    raw: dict[str, Any], source: str = "", problems: list[str] | None = None
) -> Config:
    """Build a ``Config`` from plain data (a parsed YAML file, a checkpoint's stored config)."""
    problems = [] if problems is None else problems
    cfg = _build(Config, raw, "", problems)
    if not problems:
        problems += cfg.problems()
    if problems:
        raise ConfigError(problems, source)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML/JSON-safe data (paths as strings, tuples as lists)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return str(value) if isinstance(value, Path) else value

    return plain(cfg)


def dump_yaml(cfg: Config) -> str:
    """The resolved config as YAML; ``load_config`` on it gives back an equal ``Config``."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _apply_override(raw: dict[str, Any], item: str, problems: list[str]) -> None:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        problems.append(f"override {item!r}: expected KEY=VALUE, e.g. optim.lr=0.005")
        return
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            problems.append(f"override {item!r}: '{part}' is a value, not a section")
            return
        node = child
    node[parts[-1]] = value


def _build(cls: type, data: Any, prefix: str, problems: list[str]) -> Any:
    if not isinstance(data, dict):
        problems.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {_show(data)}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            problems.append(f"{prefix}{key}: unknown key{suggest(str(key), names, prefix)}")
    kwargs = {}
    for name in names:
        if name in data:
            ok, value = _convert(hints[name], data[name], f"{prefix}{name}", problems)
            if ok:
                kwargs[name] = value
    obj = cls(**kwargs)
    if hasattr(obj, "problems") and cls is not Config:
        problems += [f"{prefix}{p}" for p in obj.problems()]
    return obj


def _convert(tp: Any, value: Any, where: str, problems: list[str]) -> tuple[bool, Any]:
    """Convert ``value`` to type ``tp``; on failure record a problem and return (False, None)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return True, _build(tp, value, where + ".", problems)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return True, None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where, problems)
    if origin is Literal:
        if value in args and type(value) is type(args[args.index(value)]):
            return True, value
        choices = ", ".join(repr(a) for a in args)
        hint = suggest(str(value), [str(a) for a in args])
        problems.append(f"{where}: expected one of {choices}, got {_show(value)}{hint}")
        return False, None
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            problems.append(f"{where}: expected a list, got {_show(value)}")
            return False, None
        items = [_convert(args[0], v, f"{where}[{i}]", problems) for i, v in enumerate(value)]
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {_show(value)}")
            return False, None
        items = {str(k): _convert(args[1], v, f"{where}.{k}", problems) for k, v in value.items()}
        return all(ok for ok, _ in items.values()), {k: v for k, (_, v) in items.items()}
    return _convert_scalar(tp, value, where, problems)


def _convert_scalar(tp: Any, value: Any, where: str, problems: list[str]) -> tuple[bool, Any]:
    if tp is bool and isinstance(value, bool):
        return True, value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return True, value
    if tp is float and not isinstance(value, bool):
        if isinstance(value, (int, float)):
            return True, float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string; accept numeric strings
            try:
                return True, float(value)
            except ValueError:
                pass
    if tp is str and isinstance(value, str):
        return True, value
    if tp is Path and isinstance(value, (str, Path)):
        return True, Path(value)
    name = getattr(tp, "__name__", str(tp))
    problems.append(f"{where}: expected {name}, got {_show(value)}")
    return False, None


def _show(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"
