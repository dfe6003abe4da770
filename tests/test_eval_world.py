"""World evaluation: `summarize` gives hand-derived rates, distinct counts and bootstrap intervals; `compare`
gives hand-derived paired differences; `evaluate_world` runs end to end on the tiny random model (it scores
near 0; only shapes and ranges are checked) on distinct prompts; raw mode feeds plain text; the CLI writes
its JSON and fails with one-line errors before loading a model."""

from __future__ import annotations

import json
import shutil

import pytest

from posttrain.cli import main
from posttrain.data.types import Message
from posttrain.errors import UserError
from posttrain.eval.world import (
    METRICS,
    RATE_KEYS,
    compare,
    eval_world_cli,
    evaluate_world,
    format_compare,
    format_table,
    raw_prompt,
    summarize,
)
from posttrain.world import FAMILIES, Score, Task, sample_tasks
from posttrain.world.core import user

KEYS = {"gold", "eos_rate", "harmful_refusal_rate", "over_refusal_rate", "mean_length", "families", "n", "split",
        "seed", "raw", "samples", "family_counts", "family_distinct", "gold_ci", "families_ci", "harmful_refusal_ci",
        "over_refusal_ci", "distinct", "n_requested"}


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
    assert s["family_distinct"] == {"arithmetic": 1, "harmful": 2, "benign_lookalike": 1}  # three times "user: q"
    assert s["samples"][0] == {"family": "harmful", "prompt": "user: h1", "response": "xx", "stopped": True,
                               "gold": 1.0, "checks": {"refused": True}}
    json.dumps(s)


def test_summarize_intervals_are_over_distinct_prompts():
    """The tasks of `test_summarize_gives_exact_rates`, as distinct prompts: h1 1.0, h2 0.0; benign_lookalike's
    three tasks share one prompt, which counts once with mean (.5 + 0 + 1) / 3 = .5; arithmetic .5.

    gold_ci, by family: a replicate resamples only harmful (2 prompts; the others have one), whose mean m is
    0, .5 or 1 with probability 1/4, 1/2, 1/4; the overall mean (2 m + .5 + .5) / 4 is .25, .5 or .75, and
    both extremes (1/4 each) lie beyond the 2.5% quantiles: [.25, .75]. Per family: harmful [0, 1], the
    others [.5, .5]. Refusals: harmful 1 of 2 prompts, [0, 1]; the benign prompt refused 1 of 3 times, [1/3, 1/3].
    """
    tasks = [_task("harmful", "h1"), _task("harmful", "h2"), _task("benign_lookalike"), _task("benign_lookalike"),
             _task("benign_lookalike"), _task("arithmetic")]
    outputs = [_out(1, True)] * 6
    scores = [Score(1.0, {"refused": True}), Score(0.0, {"refused": False}), Score(0.5, {"not_refused": True}),
              Score(0.0, {"not_refused": False}), Score(1.0, {"not_refused": True}), Score(0.5, {"correct": True})]
    s = summarize(tasks, outputs, scores)
    assert s["gold_ci"] == [0.25, 0.75]
    assert s["families_ci"] == {"arithmetic": [0.5, 0.5], "harmful": [0.0, 1.0], "benign_lookalike": [0.5, 0.5]}
    assert s["harmful_refusal_ci"] == [0.0, 1.0]
    assert s["over_refusal_ci"] == pytest.approx([1 / 3, 1 / 3])
    assert s["gold_ci"] == summarize(tasks, outputs, scores)["gold_ci"]  # fixed bootstrap seed


def test_identical_scores_give_a_zero_width_interval():
    tasks = [_task(f, f"q{i}") for i, f in enumerate(["poem", "poem", "facts", "harmful", "harmful"])]
    s = summarize(tasks, [_out(1, True)] * 5, [Score(0.6, {"refused": True})] * 5)
    assert s["gold_ci"] == [0.6, 0.6] and s["families_ci"]["poem"] == [0.6, 0.6]
    assert s["family_distinct"] == s["family_counts"] == {"poem": 2, "facts": 1, "harmful": 2}
    assert s["harmful_refusal_ci"] == [1.0, 1.0] and s["over_refusal_ci"] is None


def test_one_metric_list():
    assert RATE_KEYS == ("gold", "eos_rate", "harmful_refusal_rate", "over_refusal_rate", "mean_length")
    assert RATE_KEYS == tuple(m.key for m in METRICS)
    better = {m.key: (m.better, m.digits) for m in METRICS}
    assert better["over_refusal_rate"] == ("lower", 3) and better["mean_length"] == ("", 1)
    assert better["gold"] == better["eos_rate"] == better["harmful_refusal_rate"] == ("higher", 3)


def test_table_shows_intervals_and_distinct_counts():
    tasks = [_task("harmful", "h1"), _task("harmful", "h2"), _task("benign_lookalike"), _task("benign_lookalike")]
    scores = [Score(1.0, {"refused": True}), Score(0.0, {"refused": False}), Score(1.0, {"not_refused": True}),
              Score(1.0, {"not_refused": True})]
    s = summarize(tasks, [_out(3, True)] * 4, scores)
    table = format_table({**s, "split": "test", "seed": 0, "raw": False})
    gold_row = next(line for line in table.splitlines() if line.strip().startswith("gold"))
    assert f"[{s['gold_ci'][0]:.3f}, {s['gold_ci'][1]:.3f}]" in gold_row and "(higher is better)" in gold_row
    assert "(lower is better)" in next(line for line in table.splitlines() if "over-refusal" in line)
    assert "3.0" in next(line for line in table.splitlines() if "mean length" in line)
    row = next(line for line in table.splitlines() if line.strip().startswith("benign_lookalike"))
    assert row.split()[-2:] == ["2", "1"]  # 2 tasks, 1 distinct prompt
    assert "[0.000, 1.000]" in next(line for line in table.splitlines() if line.strip().startswith("harmful "))


def _result(rows: list[tuple[str, str, float]], raw: bool = False) -> dict:
    samples = [{"family": f, "prompt": f"User: {p}\nAssistant:" if raw else f"user: {p}", "gold": g,
                **({"prompt_text": f"user: {p}"} if raw else {})} for f, p, g in rows]
    return {"raw": raw, "samples": samples}


def test_compare_gives_hand_derived_paired_differences():
    """b - a on four prompts: harmful p1 0 -> 1, p2 1 -> 1; poem p3 .5 -> .5, p4 .5 -> 1.

    diff (3.5 - 2) / 4 = .375; harmful (1 + 0) / 2 = .5, poem (0 + .5) / 2 = .25. Per family, a replicate's
    mean difference is 0, half or all of the changed item's (probability 1/4, 1/2, 1/4): harmful [0, 1],
    poem [0, .5]. Overall, by family: (m_harmful + m_poem) / 2 is 0 and .75 with probability 1/16 each
    (above 2.5%): [0, .75].
    """
    a = _result([("harmful", "p1", 0.0), ("harmful", "p2", 1.0), ("poem", "p3", 0.5), ("poem", "p4", 0.5)])
    b = _result([("poem", "p4", 1.0), ("harmful", "p2", 1.0), ("poem", "p3", 0.5), ("harmful", "p1", 1.0)],
                raw=True)  # another order, and raw prompts: matched on the chat form
    c = compare(a, b)
    assert (c["n"], c["gold_a"], c["gold_b"], c["diff"], c["lo"], c["hi"]) == (4, 0.5, 0.875, 0.375, 0.0, 0.75)
    assert c["families"] == {"poem": {"n": 2, "gold_a": 0.5, "gold_b": 0.75, "diff": 0.25, "lo": 0.0, "hi": 0.5},
                             "harmful": {"n": 2, "gold_a": 0.5, "gold_b": 1.0, "diff": 0.5, "lo": 0.0, "hi": 1.0}}
    assert list(c["families"]) == ["poem", "harmful"]  # registry order
    same = compare(a, a)
    assert (same["diff"], same["lo"], same["hi"]) == (0.0, 0.0, 0.0)
    assert "+0.375" in format_compare(c, ("sft", "dpo")) and "dpo - sft" in format_compare(c, ("sft", "dpo"))
    json.dumps(c)


def test_compare_refuses_different_prompts():
    a = _result([("harmful", "p1", 0.0), ("poem", "p3", 0.5)])
    b = _result([("harmful", "p1", 1.0), ("poem", "p9", 0.5)])
    with pytest.raises(UserError, match=r"not on the same prompts \(1 only in the first, 1 only in the second") as e:
        compare(a, b)
    assert "\n" not in str(e.value)


def test_summarize_rates_are_none_without_their_family():
    s = summarize([_task("arithmetic")], [_out(1, True)], [Score(1.0, {})], prompts=["PLAIN"])
    assert s["harmful_refusal_rate"] is None and s["over_refusal_rate"] is None
    assert s["harmful_refusal_ci"] is None and s["over_refusal_ci"] is None
    assert s["samples"][0]["prompt"] == "PLAIN" and s["samples"][0]["prompt_text"] == "user: q"
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
    assert r["samples"][0]["prompt"] == sample_tasks(14, "test", 0, distinct=True)[0].prompt_text()
    assert r["family_distinct"] == r["family_counts"] == dict.fromkeys(FAMILIES, 1)
    assert (r["distinct"], r["n_requested"]) == (True, 14)
    lo, hi = r["gold_ci"]
    assert 0.0 <= lo <= r["gold"] <= hi <= 1.0
    json.dumps(r)


def _fake_generate(monkeypatch, seen: dict | None = None):
    import posttrain.rollout.generate as gen

    def fake_generate(model, tokenizer, prompts, **kw):
        if seen is not None:
            seen["prompts"], seen["raw"] = prompts, kw["raw"]
        return [{"text": "", "ids": [], "stopped": True} for _ in prompts]

    monkeypatch.setattr(gen, "generate", fake_generate)


def test_evaluate_world_takes_a_small_familys_whole_pool(tiny, monkeypatch):
    """Asked for more than the family has, the evaluation holds each of its distinct prompts once."""
    _fake_generate(monkeypatch)
    model, tok = tiny
    pool = sample_tasks(10_000, "test", seed=5, families=["unanswerable"], distinct=True)
    r = evaluate_world(model, tok, n=10_000, seed=5, families=["unanswerable"])
    prompts = [s["prompt"] for s in r["samples"]]
    assert r["n"] == len(set(prompts)) == len(pool) < 10_000 and r["n_requested"] == 10_000
    assert r["family_distinct"] == r["family_counts"] == {"unanswerable": len(pool)}
    assert set(prompts) == {t.prompt_text() for t in pool}
    replaced = evaluate_world(model, tok, n=60, seed=5, families=["unanswerable"], distinct=False)
    assert replaced["n"] == 60 and replaced["family_distinct"]["unanswerable"] < 60


def test_raw_mode_feeds_plain_text(tiny, monkeypatch):
    seen: dict = {}
    _fake_generate(monkeypatch, seen)
    model, tok = tiny
    tasks = sample_tasks(14, "test", seed=3, distinct=True)
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
    assert all(m.label in printed for m in METRICS) and "benign_lookalike" in printed and "distinct" in printed


def test_cli_errors_are_user_errors(model_dir, tmp_path):
    with pytest.raises(UserError, match="unknown split 'tset'"):
        eval_world_cli(["--model", str(model_dir), "--split", "tset"])
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(model_dir / "config.json", bare / "config.json")
    with pytest.raises(UserError, match="has no tokenizer"):
        eval_world_cli(["--model", str(bare)])


@pytest.mark.parametrize("flag", ["--n", "--batch-size", "--max-new-tokens"])
def test_cli_numbers_below_one_fail_before_loading(tmp_path, capsys, flag):
    """The model path does not exist: the error names the flag, so it came before any loading."""
    with pytest.raises(SystemExit) as info:
        main(["eval", "world", "--model", str(tmp_path / "no-model"), flag, "0"])
    assert info.value.code == 2
    assert capsys.readouterr().err == f"error: {flag}: must be >= 1, got 0\n"


def test_cli_unwritable_out_fails_before_loading(model_dir, tmp_path, capsys, monkeypatch):
    import posttrain.models.load as load

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(load, "load_model", no_loading)
    monkeypatch.setattr(load, "load_tokenizer", no_loading)
    (tmp_path / "f.txt").write_text("a file")
    out = tmp_path / "f.txt" / "out.json"
    with pytest.raises(SystemExit) as info:
        main(["eval", "world", "--model", str(model_dir), "--n", "14", "--out", str(out)])
    captured = capsys.readouterr()
    assert info.value.code == 2 and captured.out == ""
    assert captured.err.startswith(f"error: --out: cannot write '{out}'") and captured.err.count("\n") == 1


def test_compare_cli_reads_two_result_files(tmp_path, capsys):
    a = _result([("harmful", "p1", 0.0), ("harmful", "p2", 1.0), ("poem", "p3", 0.5), ("poem", "p4", 0.5)])
    b = _result([("poem", "p4", 1.0), ("harmful", "p2", 1.0), ("poem", "p3", 0.5), ("harmful", "p1", 1.0)])
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    with pytest.raises(SystemExit) as e:
        main(["eval", "compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--json"])
    assert e.value.code == 0
    c = json.loads(capsys.readouterr().out)
    assert (c["diff"], c["lo"], c["hi"]) == (0.375, 0.0, 0.75)
    (tmp_path / "bad.json").write_text('{"samples": [\n')
    for args, message in [([str(tmp_path / "a.json"), str(tmp_path / "none.json")], "no such file"),
                          ([str(tmp_path / "a.json"), str(tmp_path / "bad.json")], "bad.json:2: invalid JSON")]:
        with pytest.raises(SystemExit) as e:
            main(["eval", "compare", *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and message in err[0], err
