"""`posttrain data check`: the numbers it reports, checked against the renderer's, and its bad-input errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from posttrain.data.check import check, highlight
from posttrain.data.formats import to_example
from posttrain.data.render import Renderer


def test_report_counts(tok, model_dir, tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4."}]},
        {"messages": [{"role": "user", "content": "Hi"}]},  # no assistant turn: dropped
        {"messages": [{"role": "user", "content": "word " * 50}, {"role": "assistant", "content": "ok"}]},  # too long
        {"messages": [{"role": "user", "content": "Say apple"}, {"role": "assistant", "content": "apple " * 30}]},
    ]
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rep = check(str(f), model=str(model_dir), max_seq_len=32)
    assert rep["format"] == "messages" and rep["examples"] == 4
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
