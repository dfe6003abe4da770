"""Readers and format converters: exact canonical objects, provenance, and one-line errors.

Everything is written to `tmp_path`; the hub is replaced by a fake `datasets` module (no downloads).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from posttrain.data.formats import FORMATS, detect_format, load_examples, to_example
from posttrain.data.loading import read_records
from posttrain.data.types import Conversation, Message, Preference, Unpaired
from posttrain.errors import UserError

S, U, A = "system", "user", "assistant"


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def convert(record: dict, fmt: str | None = None):
    """Detect (or take) the format, then convert, with provenance "d.jsonl:1"."""
    return to_example(record, fmt or detect_format(record, "d.jsonl:1"), "d.jsonl:1")


# --- each format to its exact canonical object -------------------------------------------------


def test_messages_with_aliases_and_text_parts():
    record = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "human",
                "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
            },
            {"role": "gpt", "content": "Hello."},
            {"role": "User", "content": "More?"},
            {"role": "model", "content": "No."},
        ]
    }
    assert convert(record) == Conversation(
        [Message(S, "Be brief."), Message(U, "Hi there"), Message(A, "Hello."), Message(U, "More?"),
         Message(A, "No.")],
        "d.jsonl:1",
    )  # fmt: skip


def test_sharegpt():
    record = {
        "conversations": [
            {"from": "system", "value": "sys"},
            {"from": "human", "value": "q"},
            {"from": "gpt", "value": "a"},
            {"from": "user", "value": "q2"},
            {"from": "assistant", "value": "a2"},
        ]
    }
    assert convert(record) == Conversation(
        [Message(S, "sys"), Message(U, "q"), Message(A, "a"), Message(U, "q2"), Message(A, "a2")], "d.jsonl:1"
    )


def test_alpaca_with_input_and_system():
    record = {"instruction": "Translate.", "input": "chat", "output": "cat", "system": "You translate."}
    assert convert(record) == Conversation(
        [Message(S, "You translate."), Message(U, "Translate.\n\nchat"), Message(A, "cat")], "d.jsonl:1"
    )


@pytest.mark.parametrize("extra", [{}, {"input": ""}, {"input": None}])
def test_alpaca_without_input(extra):
    record = {"instruction": "Say hi.", "output": "hi", **extra}
    assert convert(record) == Conversation([Message(U, "Say hi."), Message(A, "hi")], "d.jsonl:1")


def test_prompt_completion_strings_and_messages():
    assert convert({"prompt": "2+2=", "completion": "4"}) == Conversation(
        [Message(U, "2+2="), Message(A, "4")], "d.jsonl:1"
    )
    record = {
        "prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
        "completion": [{"role": "assistant", "content": "a"}],
    }
    assert convert(record) == Conversation([Message(S, "s"), Message(U, "q"), Message(A, "a")], "d.jsonl:1")


def test_preference_explicit_prompt():
    record = {"prompt": "q", "chosen": "good", "rejected": "bad"}
    assert convert(record) == Preference(
        [Message(U, "q")], [Message(A, "good")], [Message(A, "bad")], "d.jsonl:1"
    )


def test_preference_completions_repeating_the_prompt_are_trimmed():
    """UltraFeedback-binarized style: a string prompt, chosen/rejected full conversations, extra `messages`."""
    chosen = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}]
    rejected = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}]
    record = {"prompt": "q", "chosen": chosen, "rejected": rejected, "messages": chosen, "score_chosen": 9.0}
    assert detect_format(record, "x") == "preference"
    assert convert(record) == Preference(
        [Message(U, "q")], [Message(A, "good")], [Message(A, "bad")], "d.jsonl:1"
    )


def test_preference_hh_rlhf_two_turn_transcript():
    """The prompt is the shared prefix up to and including the last shared "\\n\\nAssistant:"."""
    head = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: more\n\nAssistant:"
    record = {"chosen": head + " a good answer", "rejected": head + " a bad one\n"}
    assert convert(record) == Preference(
        [Message(U, "hi"), Message(A, "hello"), Message(U, "more")],
        [Message(A, "a good answer")],
        [Message(A, "a bad one")],
        "d.jsonl:1",
    )


def test_preference_hh_rlhf_answers_sharing_a_first_word():
    """The shared prefix runs into the answers ("Sure"); the split is still at the last marker."""
    head = "\n\nHuman: help?\n\nAssistant:"
    example = convert({"chosen": head + " Sure, yes.", "rejected": head + " Sure not."})
    assert example == Preference(
        [Message(U, "help?")], [Message(A, "Sure, yes.")], [Message(A, "Sure not.")], "d.jsonl:1"
    )


def test_preference_implicit_prompt_message_lists():
    turns = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
    ]
    record = {
        "chosen": turns + [{"role": "assistant", "content": "good"}],
        "rejected": turns + [{"role": "assistant", "content": "bad"}],
    }
    assert convert(record) == Preference(
        [Message(U, "q1"), Message(A, "a1"), Message(U, "q2")],
        [Message(A, "good")],
        [Message(A, "bad")],
        "d.jsonl:1",
    )


@pytest.mark.parametrize(
    "label, expected", [(True, True), (False, False), (1, True), (0, False), ("true", True), ("False", False)]
)
def test_unpaired_labels(label, expected):
    record = {"prompt": "q", "completion": "a", "label": label}
    assert convert(record) == Unpaired([Message(U, "q")], [Message(A, "a")], expected, "d.jsonl:1")


def test_text_is_a_document_not_a_chat():
    """`text` rows are plain language-model data: marked `document`, so the renderer skips the chat template."""
    example = convert({"text": "Once upon a time."})
    assert example == Conversation([Message(A, "Once upon a time.")], "d.jsonl:1", document=True)
    assert example.document and not convert({"prompt": "q", "completion": "a"}).document


def test_conversation_without_assistant_turn_is_not_an_error():
    assert convert({"messages": [{"role": "user", "content": "q"}]}) == Conversation(
        [Message(U, "q")], "d.jsonl:1"
    )


@pytest.mark.parametrize(
    "keys, fmt",
    [
        (["messages"], "messages"),
        (["conversations", "id"], "sharegpt"),
        (["instruction", "input", "output"], "alpaca"),
        (["prompt", "chosen", "rejected"], "preference"),
        (["chosen", "rejected"], "preference"),
        (["prompt", "completion", "label"], "unpaired"),
        (["prompt", "completion"], "prompt_completion"),
        (["text", "meta"], "text"),
    ],
)
def test_detect_format(keys, fmt):
    assert detect_format(dict.fromkeys(keys, "x"), "x") == fmt


# --- readers: same examples from every container, provenance --------------------------------

ROWS = [
    {"instruction": "a", "input": "", "output": "b"},
    {"instruction": "c", "input": "d", "output": "e"},
]


def containers(tmp_path) -> dict[str, str]:
    """The same two records as .jsonl, .json list, .json wrapper, JSON lines in .json, .parquet, a directory."""
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "README.md").write_text("not data")
    (tmp_path / "list.json").write_text(json.dumps(ROWS))
    (tmp_path / "wrapped.json").write_text(json.dumps({"version": 1, "data": ROWS}))
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
    write_jsonl(tmp_path / "dir" / "only.jsonl", ROWS)
    return {
        "jsonl": write_jsonl(tmp_path / "d.jsonl", ROWS),
        "json": str(tmp_path / "list.json"),
        "wrapped": str(tmp_path / "wrapped.json"),
        "json_lines": write_jsonl(tmp_path / "lines.json", ROWS),
        "parquet": str(tmp_path / "d.parquet"),
        "dir": str(tmp_path / "dir"),
    }


def test_every_container_gives_the_same_examples(tmp_path):
    expected = [
        Conversation([Message(U, "a"), Message(A, "b")]),
        Conversation([Message(U, "c\n\nd"), Message(A, "e")]),
    ]
    for name, path in containers(tmp_path).items():
        fmt, examples = load_examples(path)
        assert fmt == "alpaca", name
        assert [dataclasses.replace(e, where="") for e in examples] == expected, name


def test_provenance(tmp_path):
    paths = containers(tmp_path)
    where = {name: [w for _, w in read_records(path)] for name, path in paths.items()}
    assert where["jsonl"] == [f"{paths['jsonl']}:1", f"{paths['jsonl']}:2"]
    assert where["json"] == [f"{paths['json']}:[0]", f"{paths['json']}:[1]"]
    assert where["wrapped"] == [f"{paths['wrapped']}:[0]", f"{paths['wrapped']}:[1]"]
    assert where["json_lines"] == [f"{paths['json_lines']}:1", f"{paths['json_lines']}:2"]
    assert where["parquet"] == [f"{paths['parquet']}:[0]", f"{paths['parquet']}:[1]"]
    only = tmp_path / "dir" / "only.jsonl"
    assert where["dir"] == [f"{only}:1", f"{only}:2"]


def test_jsonl_skips_blank_lines_and_keeps_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n\n   \n{"text": "b"}\n')
    assert read_records(str(path)) == [({"text": "a"}, f"{path}:1"), ({"text": "b"}, f"{path}:4")]


def test_limit_keeps_the_first_records(tmp_path):
    fmt, examples = load_examples(containers(tmp_path)["parquet"], limit=1)
    assert (fmt, [e.where for e in examples]) == ("alpaca", [f"{tmp_path / 'd.parquet'}:[0]"])


def fake_datasets(monkeypatch, load_dataset) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))


def test_hub_dataset_records_and_provenance(monkeypatch):
    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        return [{"text": "a"}, {"text": "b"}]

    fake_datasets(monkeypatch, load_dataset)
    fmt, examples = load_examples("org/name", split="test")
    assert calls == [("org/name", "test")]
    assert (fmt, examples) == (
        "text",
        [Conversation([Message(A, "a")], "org/name[0]", document=True),
         Conversation([Message(A, "b")], "org/name[1]", document=True)],
    )


def test_hub_dataset_that_cannot_be_loaded(monkeypatch):
    def load_dataset(name, split):
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (OfflineModeIsEnabled)\nmore detail")

    fake_datasets(monkeypatch, load_dataset)
    with pytest.raises(UserError) as e:
        read_records("org/name")
    assert str(e.value) == (
        "data: 'org/name' is not a local file and could not be loaded from the Hugging Face hub: "
        "Couldn't reach 'org/name' on the Hub (OfflineModeIsEnabled)"
    )


# --- one-line errors -------------------------------------------------------------------------


def error(fn, *args, **kwargs) -> str:
    with pytest.raises(UserError) as e:
        fn(*args, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_malformed_line_in_the_middle(tmp_path):
    """Line 3 is `{"text": "c" "x": 1}`: the `,` is expected where `"x"` starts, column 14 (1-based)."""
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c" "x": 1}\n{"text": "d"}\n')
    assert error(load_examples, str(path)) == f"{path}:3: invalid JSON (Expecting ',' delimiter at column 14)"


def test_malformed_json_document_names_the_line(tmp_path):
    """Line 3 is `  {"text": "b",}`: a key is expected at the `}`, column 16 (1-based)."""
    path = tmp_path / "data.json"
    path.write_text('[\n  {"text": "a"},\n  {"text": "b",}\n]\n')
    assert error(read_records, str(path)) == (
        f"{path}:3: invalid JSON (Expecting property name enclosed in double quotes at column 16)"
    )


def test_record_that_is_not_an_object(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a"}\n\n[1, 2]\n')
    assert error(read_records, str(path)) == f"{path}:3: expected a JSON object, got list"
    listed = tmp_path / "data.json"
    listed.write_text('[{"text": "a"}, "b"]')
    assert error(read_records, str(listed)) == f"{listed}:[1]: expected a JSON object, got string"
    scalar = tmp_path / "scalar.json"
    scalar.write_text("3")
    assert error(read_records, str(scalar)) == f"{scalar}: expected a list of JSON objects, got int"


@pytest.mark.parametrize("name", ["x.jsonl", "data/x.json", "./x", "a/b/c"])
def test_missing_file(name):
    assert error(read_records, name) == f"data: no such file '{name}'"


def test_unsupported_extension(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n")
    assert error(read_records, str(path)) == (
        f"data: unsupported file type '.csv' for '{path}'; supported: .json, .jsonl, .parquet, "
        "a directory holding one such file, or a Hugging Face dataset name"
    )


def test_directory_with_two_data_files(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ROWS)
    write_jsonl(tmp_path / "b.json", ROWS)
    assert error(read_records, str(tmp_path)) == (
        f"data: directory '{tmp_path}' holds 2 data files (a.jsonl, b.json); pass one of them; "
        "expected exactly one .json/.jsonl/.parquet file"
    )


@pytest.mark.parametrize("text", ["", "\n\n", "[]"])
def test_empty_file(tmp_path, text):
    path = tmp_path / ("data.json" if text == "[]" else "data.jsonl")
    path.write_text(text)
    assert error(load_examples, str(path)) == f"{path}: no examples"


def test_detection_failure_lists_the_formats_tried():
    assert error(detect_format, {"question": "q", "answer": "a"}, "data.jsonl:1") == (
        "data.jsonl:1: cannot detect the format from keys [answer, question]; tried "
        "messages (needs 'messages'), sharegpt (needs 'conversations'), alpaca (needs 'instruction', 'output'), "
        "prompt_completion (needs 'prompt', 'completion'), preference (needs 'chosen', 'rejected'), unpaired (needs 'prompt', 'completion', 'label'), "
        "text (needs 'text')"
    )
    assert FORMATS == (
        "messages",
        "sharegpt",
        "alpaca",
        "prompt_completion",
        "preference",
        "unpaired",
        "text",
    )


def test_unknown_format_name_suggests_the_closest(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    assert error(load_examples, path, fmt="sharegtp") == (
        "data: unknown format 'sharegtp'; choose one of auto, messages, sharegpt, alpaca, prompt_completion, "
        "preference, unpaired, text (did you mean 'sharegpt'?)"
    )


@pytest.mark.parametrize(
    "record, fmt, message",
    [
        ({"instruction": "a"}, "alpaca", "data.jsonl:4: field 'output' is missing (format alpaca)"),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 3}]},
            "messages",
            "data.jsonl:4: field 'messages[1].content' must be a string, got int",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}, {"content": "a"}]},
            "messages",
            "data.jsonl:4: field 'messages[1].role' is missing",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                          {"role": "tool", "content": "{}"}]},
            "messages",
            "data.jsonl:4: field 'messages[2].role' is 'tool'; allowed roles: system, user, assistant "
            "(or human, gpt, bot, model)",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
            "messages",
            "data.jsonl:4: field 'messages[0].content[0]' is a 'image_url' part; only text parts are supported",
        ),
        (
            {"conversations": [{"from": "human"}]},
            "sharegpt",
            "data.jsonl:4: field 'conversations[0].value' is missing",
        ),
        ({"messages": "hi"}, "messages", "data.jsonl:4: field 'messages' must be a list of messages, got string"),
        ({"text": 5}, "text", "data.jsonl:4: field 'text' must be a string, got int"),
        (
            {"prompt": 1, "completion": "a"},
            "prompt_completion",
            "data.jsonl:4: field 'prompt' must be a string or a list of messages, got int",
        ),
        (
            {"prompt": "q", "completion": "a", "label": "maybe"},
            "unpaired",
            "data.jsonl:4: field 'label' must be true/false (or 1/0), got string 'maybe'",
        ),
        (
            {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"},
            "preference",
            "data.jsonl:4: fields 'chosen' and 'rejected' share no '\\n\\nAssistant:' turn "
            "(format preference without 'prompt': HH-RLHF transcripts)",
        ),
        ({"prompt": "q", "chosen": "a"}, "preference", "data.jsonl:4: field 'rejected' is missing (format preference)"),
    ],
)  # fmt: skip
def test_field_errors(record, fmt, message):
    assert error(to_example, record, fmt, "data.jsonl:4") == message


@pytest.mark.parametrize(
    "record, fmt, message",
    [
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]}, "messages",
         "field 'messages[1].content' is null (expected a string)"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]}, "messages",
         "field 'messages[1].content' is missing"),
        ({"messages": [{"role": None, "content": "q"}]}, "messages", "field 'messages[0].role' is null (expected a string)"),
        ({"conversations": [{"from": "human", "value": None}]}, "sharegpt",
         "field 'conversations[0].value' is null (expected a string)"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]}, "messages",
         "field 'messages[0].content[0].text' is null (expected a string)"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages",
         "field 'messages[0].content[0].text' is missing"),
        ({"instruction": "a", "output": None}, "alpaca", "field 'output' is null (expected a string, format alpaca)"),
        ({"instruction": "a"}, "alpaca", "field 'output' is missing (format alpaca)"),
        ({"messages": None}, "messages", "field 'messages' is null (expected a list of messages, format messages)"),
        ({"text": None}, "text", "field 'text' is null (expected a string, format text)"),
        ({"prompt": None, "completion": "a"}, "prompt_completion",
         "field 'prompt' is null (expected a string or a list of messages, format prompt_completion)"),
        ({"prompt": "q", "completion": "a", "label": None}, "unpaired",
         "field 'label' is null (expected true/false, format unpaired)"),
    ],
)  # fmt: skip
def test_null_is_reported_as_null_and_absent_as_missing(record, fmt, message):
    assert error(to_example, record, fmt, "data.jsonl:2") == "data.jsonl:2: " + message


def test_null_field_in_a_file(tmp_path):
    """Line 2's content is null. A first record whose only key is null is still detected (as text), so its
    error is the null field, not "cannot detect the format from keys [text]"."""
    ok = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    null = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]}
    path = write_jsonl(tmp_path / "chat.jsonl", [ok, null])
    assert error(load_examples, path) == f"{path}:2: field 'messages[1].content' is null (expected a string)"
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": None}])
    assert error(load_examples, text) == f"{text}:1: field 'text' is null (expected a string, format text)"
    assert detect_format({"instruction": "x", "output": None}, "x") == "alpaca"
    assert detect_format({"text": "x", "messages": None}, "x") == "text"  # non-null keys still decide first


def test_field_error_in_a_file_names_its_line(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [ROWS[0], ROWS[1], {"instruction": "x"}])
    assert re.fullmatch(
        rf"{re.escape(path)}:3: field 'output' is missing \(format alpaca\)", error(load_examples, path)
    )
