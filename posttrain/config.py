"""Typed recipe configs: one dataclass per recipe, YAML in, dotted overrides on the command line.

    posttrain sft --config configs/sft.yaml optim.lr=1e-4 data=my.jsonl

- Every field is declared with `doc(default, "one line")`; `--help` prints those lines.
- A section (a nested dataclass) given a plain value sets its primary field:
  `model=PATH` is `model.path=PATH`, `data=FILE` is `data.path=FILE`.
- Unknown keys fail with a "did you mean"; values are checked against the field's type and against the
  valid range the field declares (`doc(..., ge=1)`), before any work starts; `--help` shows the range.
- A section's defaults are those of its default instance (`section(factory, ...)`), so a config that nests
  another recipe's config (the pipeline's `sft`) sets its own defaults without mirroring fields; the keys a
  section's owner sets itself (`owned`) cannot be set from outside.
- Fields declared `changes_result=False` (logging, threads, checkpoint cadence) may differ when a run resumes;
  `result_diff` names the others that differ from a saved config.
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


def doc(default: Any, text: str, *, factory: Any = None, ge: float | None = None, gt: float | None = None,
        le: float | None = None, lt: float | None = None, changes_result: bool = True) -> Any:
    """A dataclass field with a one-line description (shown by `--help`).

    `ge`/`gt`/`le`/`lt` declare the valid range of a number (checked when a config is loaded, shown by
    `--help`). `changes_result=False` marks a field that does not change what a run computes (logging,
    threads, checkpoint cadence), so a resumed run may set it differently.
    """
    meta = {"doc": text, "range": {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None},
            "changes_result": changes_result}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section(factory: Any, text: str, owned: tuple[str, ...] = (), owner: str = "") -> Any:
    """A nested config section: a dataclass, or a function returning an instance with other defaults.

    `owned` lists keys of the section (dotted, relative to it) that its owner sets itself: setting them
    from a file or the command line is an error (`owner` says where they come from), and `--help` leaves
    them out.
    """
    return dataclasses.field(default_factory=factory, metadata={"doc": text, "owned": tuple(owned), "owner": owner})


_RANGE_TEXT = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def range_text(rng: dict) -> str:
    """`{"gt": 0, "le": 1}` -> `"in (0, 1]"`; `{"ge": 1}` -> `">= 1"`; `{}` -> `""`."""
    lo = [(k, v) for k, v in rng.items() if k in ("ge", "gt")]
    hi = [(k, v) for k, v in rng.items() if k in ("le", "lt")]
    if lo and hi:
        (lk, lv), (hk, hv) = lo[0], hi[0]
        return f"in {'[' if lk == 'ge' else '('}{lv:g}, {hv:g}{']' if hk == 'le' else ')'}"
    return " ".join(f"{_RANGE_TEXT[k]} {v:g}" for k, v in rng.items())


def check_range(value: Any, rng: dict, label: str) -> None:
    """A one-line `UserError` when the number `value` is outside the range `rng` (see `doc`); `label` names
    what was given (`config key 'batch_size'`, or a command-line flag such as `--top-p`)."""
    if not rng or not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    ok = all({"ge": value >= v, "gt": value > v, "le": value <= v, "lt": value < v}[k] for k, v in rng.items())
    if not ok:
        raise UserError(f"{label}: must be {range_text(rng)}, got {value!r}")


def check_flags(args: Any, **ranges: dict) -> None:
    """Check command-line numbers before any work: `check_flags(args, top_p={"gt": 0, "le": 1})` checks
    `args.top_p` and names the flag (`--top-p`) in the error."""
    for name, rng in ranges.items():
        check_range(getattr(args, name), rng, "--" + name.replace("_", "-"))


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
            owned = _field(cls, part).metadata.get("owned", ())
            if owned and _full_key(tp, parts[i + 1:]) in owned:
                owner = _field(cls, part).metadata.get("owner") or f"set by {cls.__name__} itself"
                raise UserError(f"{origin}config key '{key}' cannot be set: {owner}")
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


def _full_key(cls: type, parts: list[str]) -> str:
    """The dotted key `parts` inside section `cls`, with a section's primary field added (`model` ->
    `model.path`); unknown names are left as they are (the caller reports them)."""
    hints, out = _hints(cls), list(parts)
    for part in parts:
        tp = hints.get(part)
        if not _is_section(tp):
            return ".".join(out)
        cls, hints = tp, _hints(tp)
    primary = getattr(cls, "PRIMARY", None)
    return ".".join(out + [primary]) if primary else ".".join(out)


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """{"optim": {"lr": 1}} -> [("optim.lr", 1)]."""
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _field(cls: type, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def _build(cls: type, tree: dict, prefix: str = "", base: Any = None) -> Any:
    """`base` (default: `cls()`) with the values of `tree` set, checked against types and ranges."""
    base = cls() if base is None else base
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in tree:
            continue
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        if _is_section(tp):
            kwargs[f.name] = _build(tp, tree[f.name], key + ".", getattr(base, f.name))
        else:
            kwargs[f.name] = _coerce(tree[f.name], tp, key)
            check_range(kwargs[f.name], f.metadata.get("range", {}), f"config key '{key}'")
    return dataclasses.replace(base, **kwargs)


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


def result_diff(saved: dict, cfg: Any) -> list[str]:
    """The keys, among those that change what a run computes, whose value in `cfg` differs from the saved
    config `saved` (a dict as `save_config` writes it), each as `"key: old -> new"`. Keys of fields marked
    `changes_result=False`, and keys one side does not have (a field added or removed since), are not compared.
    """
    old = dict(_flatten(saved))
    out = []
    for key, value, f in _leaves(type(cfg), cfg):
        if f.metadata.get("changes_result", True) and key in old and old[key] != _plain(value):
            out.append(f"{key}: {old[key]!r} -> {_plain(value)!r}")
    return out


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _leaves(cls: type, obj: Any, prefix: str = "") -> list[tuple[str, Any, dataclasses.Field]]:
    """(dotted key, value, field) of every non-section field of the instance `obj`."""
    out = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        if _is_section(hints[f.name]):
            out += _leaves(hints[f.name], value, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", value, f))
    return out


def config_help(cls: type, prefix: str = "", obj: Any = None, owned: tuple[str, ...] = ()) -> str:
    """One line per field: `key (type and range, default): doc`. Defaults are those of the instance `obj`
    (default: `cls()`), so a nested section shows the defaults its owner gives it."""
    obj = cls() if obj is None else obj
    lines = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        text = f.metadata.get("doc", "")
        if f.name in owned:
            continue
        if _is_section(tp):
            inner = tuple(k.split(".", 1)[1] for k in owned if k.startswith(f"{f.name}."))
            inner += f.metadata.get("owned", ())
            primary = getattr(tp, "PRIMARY", None)
            short = f" (`{prefix}{f.name}=X` sets {prefix}{f.name}.{primary})" if primary and primary not in inner else ""
            body = config_help(tp, f"{prefix}{f.name}.", getattr(obj, f.name), inner)
            if body:
                lines.append(f"\n  [{prefix}{f.name}] {text}{short}")
                lines.append(body)
            continue
        rng = range_text(f.metadata.get("range", {}))
        kind = f"{_type_name(tp)} {rng}" if rng else _type_name(tp)
        lines.append(f"  {prefix}{f.name} ({kind}, default {getattr(obj, f.name)!r}): {text}")
    return "\n".join(lines)
