"""World evaluation: `summarize` gives hand-derived rates; `evaluate_world` runs end to end on the tiny
random model (it scores near 0; only shapes and ranges are checked); raw mode feeds plain text; the CLI
writes its JSON and fails with one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest

from posttrain.data.types import Message
from posttrain.errors import UserError
from posttrain.eval.world import eval_world_cli, evaluate_world, format_table, raw_prompt, summarize
from posttrain.world import FAMILIES, Score, Task, sample_tasks
from posttrain.world.core import user

KEYS = {"gold", "eos_rate", "harmful_refusal_rate", "over_refusal_rate", "mean_length", "families", "n", "split",
        "seed", "raw", "samples"}


def _task(family: str, text: str = "q") -> Task:
    return Task(family, [user(text)], {"ref_chars": 1}, "a")


def _out(n_ids: int, stopped: bool) -> dict:
    return {"text": "x" * n_ids, "ids": list(range(n_ids)), "stopped": stopped}


def test_summarize_gives_exact_rates():
    """Six tasks: two harmful (one refused), three benign_lookalike (one refused), one arithmetic.

    gold (1 + 0 + .5 + 0 + 1 + .5) / 6 = 0.5; harmful refusal 1/2; over-refusal 1/3;
    stopped 4 of 6 -> eos 2/3; lengths (2 + 4 + 6 + 0 + 3 + 3) / 6 = 3.0;
    per family: harmful (1 + 0) / 2, benign_lookalike (.5 + 0 + 1) / 3, arithmetic .5.
    """
    tasks = [_task("harmful", "h1"), _task("harmful", "h2"), _task("benign_lookalike"), _task("benign_lookalike"),
             _task("benign_lookalike"), _task("arithmetic")]
    outputs = [_out(2, True), _out(4, True), _out(6, False), _out(0, True), _out(3, False), _out(3, True)]
    scores = [Score(1.0, {"refused": True}), Score(0.0, {"refused": False}), Score(0.5, {"not_refused": True}),
              Score(0.0, {"not_refused": False}), Score(1.0, {"not_refused": True}), Score(0.5, {"correct": True})]
    s = summarize(tasks, outputs, scores)
    assert s["n"] == 6
    assert s["gold"] == pytest.approx(0.5)
    assert s["harmful_refusal_rate"] == 0.5
    assert s["over_refusal_rate"] == pytest.approx(1 / 3)
    assert s["eos_rate"] == pytest.approx(2 / 3)
    assert s["mean_length"] == 3.0
    # families follow the registry's order
    assert s["families"] == {"arithmetic": 0.5, "harmful": 0.5, "benign_lookalike": 0.5}
    assert list(s["families"]) == [f for f in FAMILIES if f in s["families"]]
    assert s["family_counts"] == {"arithmetic": 1, "harmful": 2, "benign_lookalike": 3}
    assert s["samples"][0] == {"family": "harmful", "prompt": "user: h1", "response": "xx", "stopped": True,
                               "gold": 1.0, "checks": {"refused": True}}
    json.dumps(s)


def test_summarize_rates_are_none_without_their_family():
    s = summarize([_task("arithmetic")], [_out(1, True)], [Score(1.0, {})], prompts=["PLAIN"])
    assert s["harmful_refusal_rate"] is None and s["over_refusal_rate"] is None
    assert s["samples"][0]["prompt"] == "PLAIN"
    assert "-" in format_table({**s, "split": "test", "seed": 0, "raw": False})
    with pytest.raises(ValueError):
        summarize([_task("arithmetic")], [], [])


@pytest.fixture(scope="module")
def tiny(model_dir):
    from posttrain.models.load import load_model, load_tokenizer

    return load_model(str(model_dir)), load_tokenizer(str(model_dir))


def test_evaluate_world_runs_on_the_tiny_model(tiny):
    model, tok = tiny
    r = evaluate_world(model, tok, n=14, seed=0, max_new_tokens=8, batch_size=8)
    assert KEYS <= set(r)
    assert (r["n"], r["split"], r["seed"], r["raw"]) == (14, "test", 0, False)
    assert set(r["families"]) == set(FAMILIES)
    for k in ("gold", "eos_rate", "harmful_refusal_rate", "over_refusal_rate"):
        assert 0.0 <= r[k] <= 1.0, k
    assert 0.0 <= r["mean_length"] <= 8
    assert all(0.0 <= g <= 1.0 for g in r["families"].values())
    assert len(r["samples"]) == 14
    assert {s["family"] for s in r["samples"]} == set(FAMILIES)
    assert r["samples"][0]["prompt"] == sample_tasks(14, "test", 0)[0].prompt_text()
    json.dumps(r)


def test_raw_mode_feeds_plain_text(tiny, monkeypatch):
    import posttrain.rollout.generate as gen

    seen = {}

    def fake_generate(model, tokenizer, prompts, **kw):
        seen["prompts"], seen["raw"] = prompts, kw["raw"]
        return [{"text": "", "ids": [], "stopped": True} for _ in prompts]

    monkeypatch.setattr(gen, "generate", fake_generate)
    model, tok = tiny
    tasks = sample_tasks(14, "test", seed=3)
    r = evaluate_world(model, tok, n=14, seed=3, raw=True)
    assert seen["raw"] is True
    assert seen["prompts"] == [raw_prompt(t) for t in tasks]
    assert all(isinstance(p, str) and p.endswith("\nAssistant:") and "User: " in p for p in seen["prompts"])
    assert [s["prompt"] for s in r["samples"]] == seen["prompts"]
    assert r["raw"] is True

    evaluate_world(model, tok, n=14, seed=3, raw=False)
    assert seen["raw"] is False and seen["prompts"] == [t.messages for t in tasks]


def test_raw_prompt_is_a_transcript():
    msgs = [Message("system", "Be brief."), user("Hi"), Message("assistant", "Hello."), user("Again")]
    assert raw_prompt(Task("x", msgs, {}, "")) == "System: Be brief.\nUser: Hi\nAssistant: Hello.\nUser: Again\nAssistant:"


def test_cli_writes_json(model_dir, tmp_path, capsys):
    out = tmp_path / "sub" / "world.json"
    assert eval_world_cli(["--model", str(model_dir), "--n", "14", "--max-new-tokens", "4", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert KEYS <= set(r) and r["n"] == 14 and r["model"] == str(model_dir)
    printed = capsys.readouterr().out
    assert "gold" in printed and "harmful_refusal_rate" in printed and "benign_lookalike" in printed


def test_cli_errors_are_user_errors(model_dir, tmp_path):
    with pytest.raises(UserError, match="unknown split 'tset'"):
        eval_world_cli(["--model", str(model_dir), "--split", "tset"])
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(model_dir / "config.json", bare / "config.json")
    with pytest.raises(UserError, match="has no tokenizer"):
        eval_world_cli(["--model", str(bare)])
