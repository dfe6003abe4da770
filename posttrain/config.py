"""Typed recipe configs: one dataclass per recipe, YAML in, dotted overrides on the command line.

    posttrain sft --config configs/sft.yaml optim.lr=1e-4 data=my.jsonl

- Every field is declared with `doc(default, "one line")`; `--help` prints those lines.
- A section (a nested dataclass) given a plain value sets its primary field:
  `model=PATH` is `model.path=PATH`, `data=FILE` is `data.path=FILE`.
- Unknown keys fail with a "did you mean"; values are checked against the field's type.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from posttrain.errors import UserError, did_you_mean
from posttrain.io import atomic_write_text


def doc(default: Any, text: str, *, factory: Any = None) -> Any:
    """A dataclass field with a one-line description (shown by `--help`)."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"doc": text})
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"doc": text})
    return dataclasses.field(default=default, metadata={"doc": text})


def section(cls: type, text: str) -> Any:
    """A nested config section."""
    return dataclasses.field(default_factory=cls, metadata={"doc": text})


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _flat_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_section(tp):
            keys.extend(_flat_keys(tp, f"{prefix}{f.name}."))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"list[{_type_name(get_args(tp)[0])}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert `value` to the annotated type `tp`, or raise a one-line UserError."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except UserError:
                continue
        raise UserError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        hint = did_you_mean(str(value), [str(c) for c in choices])
        raise UserError(f"config key '{key}': {value!r} is not one of {', '.join(map(repr, choices))}{hint}")
    if origin is list:
        (inner,) = get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{key}': expected a list, got {value!r}")
        return [_coerce(v, inner, key) for v in value]
    return _coerce_scalar(value, tp, key)


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise UserError(f"config key '{key}': expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(float(value)) if float(value).is_integer() else int(value)
            except ValueError:
                pass
        raise UserError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"config key '{key}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"config key '{key}': expected a string, got {value!r}")
    return value


def _parse_scalar(text: str) -> Any:
    """Parse a command-line value the way YAML would (`1e-4`, `true`, `null`, `[a, b]`)."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def _set(tree: dict, cls: type, key: str, value: Any, origin: str) -> None:
    """Set dotted `key` in the nested dict `tree` (shaped like `cls`), validating the key path."""
    parts = key.split(".")
    hints = _hints(cls)
    node = tree
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            full = ".".join(parts[: i + 1])
            valid = _flat_keys(cls, ".".join(parts[:i]) + "." if i else "")
            raise UserError(f"{origin}unknown config key '{full}'{did_you_mean(full, valid)}")
        tp = hints[part]
        last = i == len(parts) - 1
        if _is_section(tp):
            sub = node.setdefault(part, {})
            if last:
                if isinstance(value, dict):  # only an empty mapping gets here (see _flatten)
                    return
                primary = getattr(tp, "PRIMARY", None)
                if primary is None:
                    raise UserError(f"{origin}config key '{key}' is a section; set one of its fields, e.g. '{key}.{dataclasses.fields(tp)[0].name}=...'")
                sub[primary] = value
                return
            node, cls, hints = sub, tp, _hints(tp)
        else:
            if not last:
                raise UserError(f"{origin}config key '{'.'.join(parts[: i + 1])}' has no field '{parts[i + 1]}'")
            node[part] = value


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """{"optim": {"lr": 1}} -> [("optim.lr", 1)]."""
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _build(cls: type, tree: dict, prefix: str = "") -> Any:
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in tree:
            continue
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        kwargs[f.name] = _build(tp, tree[f.name], key + ".") if _is_section(tp) else _coerce(tree[f.name], tp, key)
    return cls(**kwargs)


def load_config(cls: type, config_file: str | None = None, overrides: list[str] | None = None) -> Any:
    """Build `cls` from an optional YAML file and `key=value` overrides (later ones win)."""
    tree: dict = {}
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise UserError(f"--config: no such file '{config_file}'")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f":{mark.line + 1}" if mark else ""
            raise UserError(f"{config_file}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(data, dict):
            raise UserError(f"{config_file}: expected a mapping of config keys, got {type(data).__name__}")
        for k, v in _flatten(data):
            _set(tree, cls, k, v, f"{config_file}: ")
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"override '{item}' is not of the form key=value (e.g. optim.lr=1e-4)")
        k, v = item.split("=", 1)
        for key, value in _flatten({k.strip(): _parse_scalar(v)}):
            _set(tree, cls, key, value, "")
    return _build(cls, tree)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically); it loads back with `load_config`."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def config_help(cls: type, prefix: str = "") -> str:
    """One line per field: `key (type, default): doc`."""
    lines = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        text = f.metadata.get("doc", "")
        if _is_section(tp):
            primary = getattr(tp, "PRIMARY", None)
            short = f" (`{prefix}{f.name}=X` sets {prefix}{f.name}.{primary})" if primary else ""
            lines.append(f"\n  [{prefix}{f.name}] {text}{short}")
            lines.append(config_help(tp, f"{prefix}{f.name}."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        lines.append(f"  {prefix}{f.name} ({_type_name(tp)}, default {default!r}): {text}")
    return "\n".join(lines)
