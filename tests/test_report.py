"""The HTML report: one offline file of sections in order: the evaluation (families as rows, models as
columns), paired differences, escaped probes, the highlighted training example, and the curves (a real PNG;
a one-point curve as a number)."""

from __future__ import annotations

import base64
import re

from posttrain.data.render import Renderer
from posttrain.data.types import Conversation, Message
from posttrain.report import (
    Section,
    curves_html,
    differences_table,
    eval_table,
    example_html,
    example_tokens,
    family_changes_html,
    plot_curves,
    plot_family_changes,
    probes_table,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _stage(gold: float, length: float) -> dict:
    return {"gold": gold, "gold_ci": [gold - 0.01, gold + 0.02], "eos_rate": 0.875, "harmful_refusal_rate": 0.25,
            "over_refusal_rate": None, "mean_length": length, "families": {"arithmetic": 0.125, "harmful": 0.75},
            "families_ci": {"arithmetic": [0.0, 0.25]}, "family_distinct": {"arithmetic": 8, "harmful": 4}}


def _sections() -> list[Section]:
    evals = {"base": _stage(0.0123, 7.5), "sft": _stage(0.4321, 42.5)}
    diffs = {"sft - base": {"diff": 0.4198, "lo": 0.3, "hi": 0.5,
                            "families": {"arithmetic": {"diff": -0.125, "lo": -0.25, "hi": 0.0}}}}
    probes = [{"prompt": "Say <script>alert('x')</script> & stop",
               "outputs": {"base": "I am base", "sft": "<b>bold</b> reply"}}]
    example = {"tokens": ["<|user|>", "Hi", "<|assistant|>", "Hello", " <there>"],
               "trained": [False, False, False, True, True], "where": "chat.jsonl:1"}
    curves = {"sft train/loss": [(1, 2.5), (2, 2.0), (3, 1.5)], "sft eval/loss": [(3, 1.75)]}
    return [Section("Evaluation", eval_table(evals), "a <note>"), Section("Differences", differences_table(diffs)),
            Section("Probes", probes_table(probes)), Section("A training example", example_html(example)),
            Section("Training curves", curves_html(curves))]


def _write(tmp_path, sections=None) -> str:
    path = tmp_path / "out" / "report.html"
    write_report(path, "Run <one>", _sections() if sections is None else sections)
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temporary file left behind
    return path.read_text(encoding="utf-8")


def test_report_is_the_sections_in_order(tmp_path):
    page = _write(tmp_path)
    assert page.startswith("<!DOCTYPE html>") and "Run &lt;one&gt;" in page
    heads = re.findall(r"<h2>(.*?)</h2>", page)
    assert heads == ["Evaluation", "Differences", "Probes", "A training example", "Training curves"]
    assert '<p class="meta">a &lt;note&gt;</p>' in page


def test_eval_table_has_families_as_rows_and_models_as_columns():
    page = eval_table({"base": _stage(0.0123, 7.5), "sft": _stage(0.4321, 42.5)})
    assert page.count("<tr>") + page.count('<tr class="group">') == 1 + 5 + 1 + 2  # head, metrics, group, families
    assert "<th>base</th><th>sft</th>" in page
    for text in (">0.012<", ">0.432<", "[0.002, 0.032]", ">0.875<", ">0.250<", ">7.5<", ">42.5<", "&ndash;",
                 "<th>arithmetic (8)</th>", "<th>harmful (4)</th>", ">0.12<", ">0.75<", "[0.00, 0.25]"):
        assert text in page, text
    row = re.search(r"<tr><th>arithmetic \(8\)</th>(.*?)</tr>", page).group(1)
    assert row.count("<td") == 2  # one cell per model


def test_differences_table_shows_each_difference_with_its_interval():
    page = differences_table({"sft - base": {"diff": 0.4198, "lo": 0.3, "hi": 0.5, "families": {}},
                              "dpo - sft": {"diff": -0.01, "lo": -0.05, "hi": 0.03, "families": {}}})
    assert "<th>sft - base</th><th>dpo - sft</th>" in page
    assert ">+0.420<" in page and "[+0.300, +0.500]" in page and ">-0.010<" in page and "[-0.050, +0.030]" in page


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


def test_a_curve_with_one_point_is_a_number_not_a_chart():
    html = curves_html({"sft eval/loss": [(40, 1.23456)]})
    assert "<img" not in html and "sft eval/loss: <b>1.2346</b> at step 40" in html
    assert curves_html({}) == ""


def test_no_sections_is_an_empty_report(tmp_path):
    page = _write(tmp_path, sections=[])
    assert "<table" not in page and "<img" not in page and "<h2>" not in page


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


def test_family_changes_are_one_png_with_a_bar_per_family_and_comparison():
    diffs = {"sft - base": {"diff": 0.4, "lo": 0.3, "hi": 0.5,
                            "families": {"poem": {"diff": 0.5, "lo": 0.25, "hi": 0.75},
                                         "facts": {"diff": -0.125, "lo": -0.25, "hi": 0.0}}},
             "dpo - sft": {"diff": 0.0, "lo": -0.1, "hi": 0.1,
                           "families": {"facts": {"diff": 0.0, "lo": 0.0, "hi": 0.0}}}}  # poem missing: no bar
    png = plot_family_changes(diffs)
    assert png.startswith(PNG_SIGNATURE)
    assert png == plot_family_changes(diffs)  # no timestamp in the file: the same input gives the same bytes
    html = family_changes_html(diffs)
    assert html.count("<img") == 1 and base64.b64decode(html.split("base64,")[1].split('"')[0]).startswith(PNG_SIGNATURE)
