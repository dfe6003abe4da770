"""Convert raw records of every supported dataset format into the canonical types of `types.py`.

Formats (`FORMATS`) and what they become:

- `messages` (`{"messages": [{"role", "content"}]}`), `sharegpt` (`{"conversations": [{"from",
  "value"}]}`), `alpaca` (`instruction`, optional `input` and `system`, `output`),
  `prompt_completion` become a `Conversation`; `text` becomes a `Conversation` marked `document`
  (plain language-model data, rendered without the chat template);
- `preference` (`prompt`/`chosen`/`rejected`, or HH-RLHF transcripts with no `prompt`) becomes a
  `Preference`;
- `unpaired` (`prompt`/`completion`/`label`, as KTO uses) becomes an `Unpaired`.

Detection looks at the keys of the first record; records with `chosen`/`rejected` are preference
data even when they also carry a `messages` list (as UltraFeedback-binarized does).
A conversation without an assistant turn, or with an empty one, is not an error here: the renderer drops
and counts it. A field that is absent "is missing"; one that holds null "is null".
"""

from __future__ import annotations

import re
from typing import Any

from posttrain.data.loading import json_type_name, read_records
from posttrain.data.types import ROLES, Conversation, Message, Preference, Unpaired
from posttrain.errors import UserError, did_you_mean

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "preference", "unpaired", "text")
Example = Conversation | Preference | Unpaired

# What each format needs, in the order detection tries them (most specific first).
_DETECTION = (
    ("preference", ("prompt", "chosen", "rejected")),
    ("preference", ("chosen", "rejected")),
    ("unpaired", ("prompt", "completion", "label")),
    ("messages", ("messages",)),
    ("sharegpt", ("conversations",)),
    ("alpaca", ("instruction", "output")),
    ("prompt_completion", ("prompt", "completion")),
    ("text", ("text",)),
)
_ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}
_HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")


def detect_format(record: dict, where: str) -> str:
    """The format of `record` from its keys. Keys holding null count only when nothing matches without
    them, so that `{"text": null}` is text whose field is null (the conversion says so), not undetectable."""
    present = {key for key, value in record.items() if value is not None}
    for keys in (present, set(record)):
        for fmt, needs in _DETECTION:
            if keys.issuperset(needs):
                return fmt
    needs_by_format = dict(_DETECTION)  # the last (fewest keys) entry per format
    tried = ", ".join(f"{fmt} (needs {', '.join(repr(n) for n in needs_by_format[fmt])})" for fmt in FORMATS)
    raise UserError(
        f"{where}: cannot detect the format from keys [{', '.join(sorted(record))}]; tried {tried}"
    )


def to_example(record: dict, fmt: str, where: str) -> Example:
    """Convert one record of format `fmt` (one of `FORMATS`); `where` is its provenance.

    `text` records become a `Conversation` with `document=True` holding the raw text as its one message
    (role assistant: every token is trained); the renderer writes it without the chat template.
    """
    if fmt == "messages":
        return Conversation(_messages(_field(record, "messages", fmt, where), "messages", where), where)
    if fmt == "sharegpt":
        turns = _field(record, "conversations", fmt, where)
        return Conversation(_messages(turns, "conversations", where, ("from", "value")), where)
    if fmt == "alpaca":
        return Conversation(_alpaca(record, where), where)
    if fmt == "prompt_completion":
        prompt = _turns(record, "prompt", "user", fmt, where)
        return Conversation(prompt + _turns(record, "completion", "assistant", fmt, where), where)
    if fmt == "preference":
        return _preference(record, where)
    if fmt == "unpaired":
        prompt = _turns(record, "prompt", "user", fmt, where)
        completion = _turns(record, "completion", "assistant", fmt, where)
        return Unpaired(prompt, completion, _label(_field(record, "label", fmt, where), where), where)
    if fmt == "text":
        text = _string(_field(record, "text", fmt, where), "text", where)
        return Conversation([Message("assistant", text)], where, document=True)
    raise UserError(
        f"data: unknown format '{fmt}'; choose one of {', '.join(FORMATS)}{did_you_mean(fmt, FORMATS)}"
    )


def load_examples(
    path: str, fmt: str = "auto", split: str = "train", limit: int | None = None
) -> tuple[str, list[Example]]:
    """Read `path` (see `read_records`), detect the format from the first record when `fmt` is
    `"auto"`, and convert every record. Returns `(format, examples)`; `limit` keeps the first records.
    """
    if fmt != "auto" and fmt not in FORMATS:
        choices = ("auto",) + FORMATS
        raise UserError(
            f"data: unknown format '{fmt}'; choose one of {', '.join(choices)}{did_you_mean(fmt, choices)}"
        )
    if limit is not None and limit < 1:
        raise UserError(f"data: limit must be a positive number of examples, got {limit}")
    records = read_records(path, split, limit=limit)
    if not records:
        raise UserError(f"{path}: no examples")
    if fmt == "auto":
        fmt = detect_format(*records[0])
    return fmt, [to_example(record, fmt, where) for record, where in records]


# What a top-level field holds, for the error on a null one.
_EXPECTED = {
    "messages": "a list of messages",
    "conversations": "a list of messages",
    "prompt": "a string or a list of messages",
    "completion": "a string or a list of messages",
    "chosen": "a string or a list of messages",
    "rejected": "a string or a list of messages",
    "label": "true/false",
}


def _field(record: dict, name: str, fmt: str, where: str) -> Any:
    """`record[name]`, or a `UserError` saying it is missing (absent) or null."""
    if name not in record:
        raise UserError(f"{where}: field '{name}' is missing (format {fmt})")
    value = record[name]
    if value is None:
        expected = _EXPECTED.get(name, "a string")
        raise UserError(f"{where}: field '{name}' is null (expected {expected}, format {fmt})")
    return value


def _string(value: Any, name: str, where: str) -> str:
    if value is None:
        raise UserError(f"{where}: field '{name}' is null (expected a string)")
    if not isinstance(value, str):
        raise UserError(f"{where}: field '{name}' must be a string, got {json_type_name(value)}")
    return value


def _content(value: Any, name: str, where: str) -> str:
    """A message's content: a string, or a list of `{"type": "text", "text": ...}` parts joined."""
    if not isinstance(value, list):
        return _string(value, name, where)
    texts = []
    for i, part in enumerate(value):
        if isinstance(part, dict) and part.get("type", "text") == "text":
            if "text" not in part:
                raise UserError(f"{where}: field '{name}[{i}].text' is missing")
            texts.append(_string(part["text"], f"{name}[{i}].text", where))
        else:
            kind = part.get("type") if isinstance(part, dict) else json_type_name(part)
            raise UserError(f"{where}: field '{name}[{i}]' is a {kind!r} part; only text parts are supported")
    return "".join(texts)


def _role(value: Any, name: str, where: str) -> str:
    """A canonical role from a role name or an alias (human, gpt, bot, model), case-insensitive."""
    role = _string(value, name, where).lower()
    role = _ROLE_ALIASES.get(role, role)
    if role not in ROLES:
        raise UserError(
            f"{where}: field '{name}' is {value!r}; allowed roles: {', '.join(ROLES)} "
            f"(or {', '.join(_ROLE_ALIASES)})"
        )
    return role


def _messages(
    value: Any, name: str, where: str, keys: tuple[str, str] = ("role", "content")
) -> list[Message]:
    """A list of message objects. Items use `keys` (role, content key), or the other of the pairs
    `("role", "content")` / `("from", "value")` when `keys[0]` is absent (ShareGPT vs OpenAI style)."""
    if not isinstance(value, list):
        raise UserError(f"{where}: field '{name}' must be a list of messages, got {json_type_name(value)}")
    messages = []
    for i, item in enumerate(value):
        item_name = f"{name}[{i}]"
        if not isinstance(item, dict):
            raise UserError(f"{where}: field '{item_name}' must be an object, got {json_type_name(item)}")
        role_key, content_key = keys
        if role_key not in item:
            role_key, content_key = ("from", "value") if "from" in item else ("role", "content")
        for key in (role_key, content_key):
            if key not in item:
                raise UserError(f"{where}: field '{item_name}.{key}' is missing")
            if item[key] is None:
                raise UserError(f"{where}: field '{item_name}.{key}' is null (expected a string)")
        role = _role(item[role_key], f"{item_name}.{role_key}", where)
        messages.append(Message(role, _content(item[content_key], f"{item_name}.{content_key}", where)))
    return messages


def _turns(record: dict, name: str, role: str, fmt: str, where: str) -> list[Message]:
    """Field `name` as messages: a string becomes one `role` message, a list is parsed as messages."""
    value = _field(record, name, fmt, where)
    if isinstance(value, str):
        return [Message(role, value)]
    if isinstance(value, list):
        return _messages(value, name, where)
    raise UserError(
        f"{where}: field '{name}' must be a string or a list of messages, got {json_type_name(value)}"
    )


def _alpaca(record: dict, where: str) -> list[Message]:
    """System (optional), user (instruction, then a blank line and the input when non-empty), assistant."""
    instruction = _string(_field(record, "instruction", "alpaca", where), "instruction", where)
    output = _string(_field(record, "output", "alpaca", where), "output", where)
    extra = _string(record.get("input") or "", "input", where)
    system = _string(record.get("system") or "", "system", where)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    head = [Message("system", system)] if system else []
    return head + [Message("user", user), Message("assistant", output)]


def _preference(record: dict, where: str) -> Preference:
    """Explicit prompt; or none: HH-RLHF transcripts (strings) or implicit-prompt message lists."""
    if record.get("prompt") is not None:
        prompt = _turns(record, "prompt", "user", "preference", where)
        chosen = _turns(record, "chosen", "assistant", "preference", where)
        rejected = _turns(record, "rejected", "assistant", "preference", where)
        n = len(prompt)
        if chosen[:n] == prompt and rejected[:n] == prompt:  # completions that repeat the prompt turns
            chosen, rejected = chosen[n:], rejected[n:]
        return Preference(prompt, chosen, rejected, where)
    chosen_raw = _field(record, "chosen", "preference", where)
    rejected_raw = _field(record, "rejected", "preference", where)
    if isinstance(chosen_raw, str) and isinstance(rejected_raw, str):
        return _hh_transcripts(chosen_raw, rejected_raw, where)
    chosen = _turns(record, "chosen", "assistant", "preference", where)
    rejected = _turns(record, "rejected", "assistant", "preference", where)
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    while n > 0 and chosen[n - 1].role != "user":  # the prompt ends with a user turn
        n -= 1
    return Preference(chosen[:n], chosen[n:], rejected[n:], where)


def _hh_transcripts(chosen: str, rejected: str, where: str) -> Preference:
    """Split HH-RLHF transcripts at the last `"\\n\\nAssistant:"` shared by `chosen` and `rejected`."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    cut = chosen.rfind(_HH_ASSISTANT, 0, shared)
    if cut < 0:
        raise UserError(
            f"{where}: fields 'chosen' and 'rejected' share no '\\n\\nAssistant:' turn "
            "(format preference without 'prompt': HH-RLHF transcripts)"
        )
    cut += len(_HH_ASSISTANT)
    return Preference(
        _hh_prompt(chosen[:cut], where),
        [Message("assistant", chosen[cut:].strip())],
        [Message("assistant", rejected[cut:].strip())],
        where,
    )


def _hh_prompt(text: str, where: str) -> list[Message]:
    """`"\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:"` -> user a, assistant b, user c."""
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise UserError(f"{where}: field 'chosen' must start with 'Human:' (HH-RLHF transcript)")
    turns = [
        Message("user" if marker == "Human" else "assistant", body.strip())
        for marker, body in zip(parts[1::2], parts[2::2])
    ]
    return turns[:-1]  # the final, empty "Assistant:" turn is the completion's


def _label(value: Any, where: str) -> bool:
    """A KTO label: a bool, 0/1, or the strings "true"/"false" (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise UserError(
        f"{where}: field 'label' must be true/false (or 1/0), got {json_type_name(value)} {value!r}"
    )
