"""`posttrain data check`: the numbers it reports, checked against the renderer's, and its bad-input errors."""

from __future__ import annotations

import ast
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from posttrain.cli import main
from posttrain.data import formats
from posttrain.data.check import check, highlight
from posttrain.data.formats import load_examples, to_example
from posttrain.data.render import Renderer


def test_report_counts(tok, tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4."}]},
        {"messages": [{"role": "user", "content": "Hi"}]},  # no assistant turn: dropped
        {"messages": [{"role": "user", "content": "word " * 50}, {"role": "assistant", "content": "ok"}]},  # too long
        {"messages": [{"role": "user", "content": "Say apple"}, {"role": "assistant", "content": "apple " * 30}]},
    ]
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rep = check(str(f), *load_examples(str(f)), tok, "the test tokenizer", max_seq_len=32)
    assert rep["format"] == "messages" and rep["examples"] == 4 and rep["tokenizer"] == "the test tokenizer"
    assert rep["kept"] == 2 and rep["dropped"] == 2 and rep["truncated"] == 1
    assert rep["dropped_reasons"] == {"no assistant turn": 1, "truncated: no response token left": 1}
    renderer = Renderer(tok, 32)
    kept = [renderer.render(to_example(rows[i], "messages", "x")) for i in (0, 3)]
    assert rep["trained_tokens"] == sum(r.n_trained for r in kept) > 0
    assert rep["total_tokens"] == sum(len(r.input_ids) for r in kept)
    assert rep["length"]["max"] == 32  # the truncated one
    assert [ex["input_ids"] for ex in rep["rendered"]] == [r.input_ids for r in kept]


def test_highlight_marks_exactly_the_trained_tokens(tok):
    from posttrain.data.types import Conversation, Message

    r = Renderer(tok).render(Conversation([Message("user", "Hi"), Message("assistant", "yo")]))
    text = highlight(tok, r.input_ids, r.labels, color=False)
    assert text == "<|bos|><|user|>Q: Hi<|end|><|assistant|>A:[[ yo<|eos|>]]"


def test_cli_json_and_errors(model_dir, chat_file, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "posttrain", "data", "check", str(chat_file), "--model", str(model_dir),
                        "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert {"examples", "format", "dropped", "truncated", "trained_tokens"} <= rep.keys()
    assert rep["examples"] == 48 and rep["dropped"] == 0
    missing = tmp_path / "m.jsonl"
    missing.write_text('{"instruction": "x"}\n')
    p = subprocess.run([sys.executable, "-m", "posttrain", "data", "check", str(missing)], capture_output=True,
                       text=True, env=env, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "m.jsonl:1" in p.stderr, p.stderr


def data_check(capsys, *args) -> tuple[int, str, str]:
    """`posttrain data check ARGS` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as e:
        main(["data", "check", *map(str, args)])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_text_rows_with_and_without_model(model_dir, tmp_path, capsys, monkeypatch):
    """Rendered as `<bos> text <eos>`, all trained but the BOS; the file is read once, with or without --model.
    With the test tokenizer: 8 + 5 tokens, 7 + 4 trained (tests/test_render.py spells out the ids)."""
    loads = []

    def counting(path, *args, **kwargs):
        loads.append(path)
        return load_examples(path, *args, **kwargs)

    monkeypatch.setattr(formats, "load_examples", counting)
    f = write(tmp_path / "text.jsonl", [{"text": "The river is silver."}, {"text": "The river"}])
    code, out, err = data_check(capsys, f, "--model", model_dir)
    assert (code, err, loads) == (0, "", [str(f)])
    assert f"tokenizer   {model_dir}\n" in out and "(format: text)" in out
    assert "trained     11 of 13 tokens (84.6%)" in out
    assert f"--- {f}:1  ([[trained]] not trained)\n<|bos|>[[The river is silver.<|eos|>]]\n" in out
    loads.clear()
    code, out, err = data_check(capsys, f)
    assert (code, err, loads) == (0, "", [str(f)])
    assert "tokenizer   stand-in BPE trained on this file\n" in out
    assert f"--- {f}:2  ([[trained]] not trained)\n<|bos|>[[The river<|eos|>]]\n" in out


# Llama-2 / Mistral style: roles must alternate starting with the user.
STRICT = ("{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}{% endfor %}")


def test_leading_assistant_turn_and_a_template_that_refuses_it(tok, model_dir, tmp_path, capsys):
    from posttrain.models.tokenizer import POSTTRAIN_TEMPLATE

    f = write(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "yo"}]},
        {"messages": [{"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "yo"}]},
    ])
    code, out, err = data_check(capsys, f, "--model", model_dir)
    assert (code, err) == (0, "")
    assert "<|bos|><|assistant|>A:[[ Hello.<|eos|>]]<|user|>Q: Hi<|end|><|assistant|>A:[[ yo<|eos|>]]" in out
    strict = copy.deepcopy(tok)
    strict.chat_template = STRICT + POSTTRAIN_TEMPLATE
    strict.save_pretrained(tmp_path / "strict")
    code, out, err = data_check(capsys, f, "--model", tmp_path / "strict")
    assert (code, out) == (2, "")
    assert err == f"error: {f}:2: the chat template rejects this conversation: " \
        "Conversation roles must alternate user/assistant\n"


def test_no_usable_example_fails_after_the_report(tmp_path, capsys):
    hi = {"role": "user", "content": "Hi"}
    f = write(tmp_path / "d.jsonl", [
        {"messages": [hi]},
        {"messages": [hi, {"role": "assistant", "content": ""}]},
        {"messages": [hi, {"role": "assistant", "content": "  "}]},
    ])
    error = f"error: {f}: no example is usable (1 no assistant turn, 2 empty assistant turn)\n"
    code, out, err = data_check(capsys, f)
    assert (code, err) == (2, error)
    assert "examples    3  kept 0  dropped 3\n              1 no assistant turn\n              2 empty assistant turn\n" in out
    code, out, err = data_check(capsys, f, "--json")
    assert (code, err) == (2, error)
    rep = json.loads(out)
    assert (rep["kept"], rep["dropped_reasons"]) == (0, {"no assistant turn": 1, "empty assistant turn": 2})


def test_bad_numbers_are_refused_before_any_work(model_dir, chat_file, tmp_path, capsys):
    missing = tmp_path / "missing.jsonl"  # never read: the option is checked first
    assert data_check(capsys, missing, "--max-seq-len", "0") == (
        2, "", "error: data check: --max-seq-len must be at least 1, got 0\n")
    assert data_check(capsys, missing, "--show", "-1") == (2, "", "error: data check: --show must be 0 or more, got -1\n")
    code, out, err = data_check(capsys, chat_file, "--model", model_dir, "--show", "0")  # 0: show none
    assert (code, err) == (0, "") and "kept 48" in out and "\n--- " not in out
    code, out, err = data_check(capsys, chat_file, "--model", model_dir, "--max-seq-len", "1")
    assert (code, err) == (2, f"error: {chat_file}: no example is usable (48 truncated: no response token left)\n")


def test_data_never_imports_models():
    """Imports run one way (data -> models): the data doctor gets its tokenizer from its caller."""
    data = Path(__file__).parents[1] / "posttrain" / "data"
    imported = set()
    for py in data.glob("*.py"):
        for node in ast.walk(ast.parse(py.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add((py.name, node.module))
            elif isinstance(node, ast.Import):
                imported |= {(py.name, a.name) for a in node.names}
    assert ("check.py", "posttrain.data.render") in imported  # the walk sees the imports
    assert [(f, m) for f, m in imported if m.startswith(("posttrain.models", "posttrain.recipes"))] == []
