"""Read raw records (plain dicts) from a local file, a directory, or a Hugging Face dataset.

Every record comes with its provenance `where`, used by every later error message:

- `.jsonl`: `"FILE:LINE"` (1-based line; blank lines are skipped),
- `.json` and `.parquet`: `"FILE:[INDEX]"` (0-based index; JSON-lines content in a `.json` file is
  read as `.jsonl` and gets `"FILE:LINE"`),
- a hub dataset: `"NAME[INDEX]"`.

Errors are `UserError`s of one line that name the file and, where there is one, the line. `pyarrow`
and `datasets` are imported only when a parquet file or a hub dataset is read.
"""

from __future__ import annotations

import json
import os
from typing import Any

from posttrain.errors import UserError

SUPPORTED_SUFFIXES = (".json", ".jsonl", ".parquet")
# A missing path with one of these endings is a missing local file, never a hub dataset name.
_FILE_LIKE_SUFFIXES = SUPPORTED_SUFFIXES + (".csv", ".tsv", ".txt", ".gz", ".zst", ".arrow", ".ndjson")
_JSON_TYPE_NAMES = {dict: "object", list: "list", str: "string", int: "int", float: "float", bool: "bool"}

Record = tuple[dict, str]


def json_type_name(value: Any) -> str:
    """The JSON name of a value's type, for error messages: object, list, string, int, float, bool, null."""
    if value is None:
        return "null"
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def read_records(path: str, split: str = "train", *, limit: int | None = None) -> list[Record]:
    """Read `(record, where)` pairs from `path`.

    `path` is a `.json`, `.jsonl` or `.parquet` file, a directory holding exactly one such file, or,
    when it is not a local path, a Hugging Face dataset name loaded with `datasets.load_dataset(path,
    split=split)`. `split` is used only for hub datasets. `limit` keeps the first `limit` records.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = _single_data_file(path)
    elif not os.path.exists(path):
        if _looks_local(path):
            raise UserError(f"data: no such file '{path}'")
        return _read_hub(path, split, limit)
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".jsonl":
        records = _read_jsonl(path, _read_text(path), limit)
    elif suffix == ".json":
        records = _read_json(path, limit)
    elif suffix == ".parquet":
        records = _read_parquet(path, limit)
    else:
        raise UserError(
            f"data: unsupported file type '{suffix or os.path.basename(path)}' for '{path}'; "
            f"supported: {', '.join(SUPPORTED_SUFFIXES)}, a directory holding one such file, "
            "or a Hugging Face dataset name"
        )
    return records


def read_json_file(path: str) -> Any:
    """One JSON document (a result file, not a dataset): a one-line `UserError` when it is missing, not
    UTF-8 or not valid JSON (naming the line)."""
    if not os.path.isfile(path):
        raise UserError(f"no such file '{path}'")
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise _invalid_json(path, e.lineno, e) from None


def _looks_local(path: str) -> bool:
    """True when a missing `path` is meant as a local file rather than a hub name like `org/name`."""
    return (
        path.lower().endswith(_FILE_LIKE_SUFFIXES)
        or path.startswith(("/", ".", "~"))
        or path.count("/") > 1
        or "\\" in path
    )


def _single_data_file(directory: str) -> str:
    """The one data file in `directory`, or a `UserError` when there is none or several."""
    names = sorted(
        name
        for name in os.listdir(directory)
        if name.lower().endswith(SUPPORTED_SUFFIXES) and not name.startswith(".")
    )
    if len(names) != 1:
        found = f" ({', '.join(names)}); pass one of them" if names else ""
        raise UserError(
            f"data: directory '{directory}' holds {len(names)} data files{found}; "
            f"expected exactly one {'/'.join(SUPPORTED_SUFFIXES)} file"
        )
    return os.path.join(directory, names[0])


def _read_text(path: str) -> str:
    """The file's text (UTF-8, an optional byte-order mark is dropped)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None


def _check_object(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected a JSON object, got {json_type_name(value)}")
    return value


def _invalid_json(path: str, line: int, error: json.JSONDecodeError) -> UserError:
    return UserError(f"{path}:{line}: invalid JSON ({error.msg} at column {error.colno})")


def _read_jsonl(path: str, text: str, limit: int | None) -> list[Record]:
    """One JSON object per non-blank line; `where` is `FILE:LINE`."""
    records: list[Record] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if limit is not None and len(records) >= limit:
            break
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise _invalid_json(path, number, e) from None
        where = f"{path}:{number}"
        records.append((_check_object(value, where), where))
    return records


def _read_json(path: str, limit: int | None) -> list[Record]:
    """A list of objects, an object with one list-of-objects key, a single object, or JSON lines."""
    text = _read_text(path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several top-level values: JSON-lines content
            return _read_jsonl(path, text, limit)
        raise _invalid_json(path, e.lineno, e) from None
    if isinstance(value, dict):
        value = _unwrap(value)
    if not isinstance(value, list):
        raise UserError(f"{path}: expected a list of JSON objects, got {json_type_name(value)}")
    if limit is not None:
        value = value[:limit]
    return [(_check_object(item, f"{path}:[{i}]"), f"{path}:[{i}]") for i, item in enumerate(value)]


# Keys whose list value is part of a single record, never a wrapper around the records.
_RECORD_FIELDS = frozenset({"messages", "conversations", "prompt", "completion", "chosen", "rejected"})


def _unwrap(obj: dict) -> dict | list:
    """`obj["data"]` for `{"data": [{...}, ...]}` (one list-of-objects key), else `[obj]` (one record)."""
    lists = [
        key
        for key, value in obj.items()
        if isinstance(value, list) and value and all(isinstance(item, dict) for item in value)
    ]
    if len(lists) == 1 and lists[0] not in _RECORD_FIELDS:
        return obj[lists[0]]
    return [obj]


def _read_parquet(path: str, limit: int | None) -> list[Record]:
    """Rows of a parquet file as dicts; `where` is `FILE:[INDEX]`."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for broken files
        raise UserError(f"{path}: cannot read parquet ({short_reason(e)})") from None
    if limit is not None:
        table = table.slice(0, limit)
    return [(row, f"{path}:[{i}]") for i, row in enumerate(table.to_pylist())]


def _read_hub(name: str, split: str, limit: int | None) -> list[Record]:
    """A split of a Hugging Face dataset; `where` is `NAME[INDEX]`."""
    try:
        import datasets

        dataset = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, not found, bad split, missing `datasets`, ...
        raise UserError(
            f"data: '{name}' is not a local file and could not be loaded from the Hugging Face hub: "
            f"{short_reason(e)}"
        ) from None
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return [(dict(row), f"{name}[{i}]") for i, row in enumerate(dataset)]


def short_reason(error: Exception, width: int = 200) -> str:
    """The first line of an exception's message, cut to `width` characters."""
    lines = str(error).strip().splitlines()
    reason = lines[0] if lines else type(error).__name__
    return reason if len(reason) <= width else reason[: width - 3] + "..."
