"""The HTML report: one offline file holding the stage table, escaped probes, the highlighted training
example and a real PNG of the loss curves."""

from __future__ import annotations

import base64
import re

from posttrain.data.render import Renderer
from posttrain.data.types import Conversation, Message
from posttrain.report import example_tokens, plot_curves, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _stage(name: str, gold: float, length: float) -> dict:
    return {"name": name, "gold": gold, "eos_rate": 0.875, "harmful_refusal_rate": 0.25, "over_refusal_rate": None,
            "mean_length": length, "families": {"arithmetic": 0.125, "harmful": 0.75}}


def _write(tmp_path, **kw) -> str:
    args = {
        "title": "Run <one>",
        "stages": [_stage("base", 0.0123, 7.5), _stage("sft", 0.4321, 42.5)],
        "probes": [{"prompt": "Say <script>alert('x')</script> & stop",
                    "outputs": {"base": "I am base", "sft": "<b>bold</b> reply"}}],
        "example": {"tokens": ["<|user|>", "Hi", "<|assistant|>", "Hello", " <there>"],
                    "trained": [False, False, False, True, True], "where": "chat.jsonl:1"},
        "curves": {"sft loss": [(1, 2.5), (2, 2.0), (3, 1.5)], "dpo loss": [(1, 0.69), (2, 0.6)]},
    } | kw
    path = tmp_path / "out" / "report.html"
    write_report(path, **args)
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temporary file left behind
    return path.read_text(encoding="utf-8")


def test_report_holds_the_stage_table(tmp_path):
    page = _write(tmp_path)
    assert page.startswith("<!DOCTYPE html>")
    for text in ("<td>base</td>", "<td>sft</td>", ">0.012<", ">0.432<", ">0.875<", ">0.250<", ">7.5<", ">42.5<",
                 ">0.125<", ">0.750<", "<th>arithmetic</th>", "<th>harmful_refusal_rate</th>", "&ndash;"):
        assert text in page, text
    assert "Run &lt;one&gt;" in page


def test_probe_and_example_text_is_escaped(tmp_path):
    page = _write(tmp_path)
    assert "<script>" not in page and "<b>bold" not in page
    assert "Say &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; stop" in page
    assert "&lt;b&gt;bold&lt;/b&gt; reply" in page and "I am base" in page
    assert '<span class="tok prompt">&lt;|user|&gt;</span>' in page
    assert '<span class="tok trained"> &lt;there&gt;</span>' in page
    assert "2 of 5 tokens trained" in page


def test_curves_are_an_embedded_png_and_nothing_is_fetched(tmp_path):
    page = _write(tmp_path)
    found = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(found) == 1
    assert base64.b64decode(found[0], validate=True).startswith(PNG_SIGNATURE)
    assert "http://" not in page and "https://" not in page
    assert not re.search(r'(src|href)="(?!data:)', page)


def test_empty_sections_are_skipped(tmp_path):
    page = _write(tmp_path, stages=[], probes=[], example=None, curves={})
    assert "<table" not in page and "<img" not in page and "training example" not in page


def test_plot_curves_handles_an_empty_curve():
    assert plot_curves({"loss": [], "other": [(0, 1.0)]}).startswith(PNG_SIGNATURE)


def test_example_tokens_follow_the_loss_mask(tok):
    conv = Conversation([Message("user", "What is 2 + 2?"), Message("assistant", "4.")])
    r = Renderer(tok, max_seq_len=64).render(conv)
    ex = example_tokens(tok, r.input_ids, r.labels)
    assert len(ex["tokens"]) == len(r.input_ids)
    assert ex["trained"] == [lab != -100 for lab in r.labels]
    assert any(ex["trained"]) and not all(ex["trained"])
    assert "4" in "".join(t for t, tr in zip(ex["tokens"], ex["trained"]) if tr)
