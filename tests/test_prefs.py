"""`posttrain prefs generate` (`posttrain.rollout.prefs`): preference and KTO data from a policy's samples.

Most tests replace `generate` with a fake whose sample 0 of every prompt is the task's reference (gold 1.0:
every reference scores 1.0) and whose other samples are "" (gold 0.0 in every family, checked below). So
with K = 3 responses per prompt and N prompts, by hand:

- mode all, ties drop: each prompt has 3 candidate pairs; (0, 1) and (0, 2) differ in gold and are written,
  (1, 2) is an equal-gold pair and dropped: 2N pairs, N dropped ties, no flat prompt;
- mode best_vs_worst: the first highest (0) against the first lowest (1): N pairs;
- unpaired: N good rows (1.0 >= 0.7) and 2N bad ones (0.0);
- the mean gold of all responses is 1/3, the EOS rate 1.

The tiny random Llama of conftest answers junk that never stops within 4 tokens (EOS rate 0, so every gold
is 0): every prompt is flat, so pairs with ties dropped are none, and the command fails (exit 2) after its
report, writing nothing; `--ties keep` and `--unpaired` write files that load.
"""

from __future__ import annotations

import json

import pytest

from posttrain.cli import main
from posttrain.data.formats import load_examples
from posttrain.data.render import Renderer
from posttrain.data.types import Message, Preference, Unpaired
from posttrain.errors import UserError
from posttrain.world import sample_tasks, score
from posttrain.world.annotators import REPORTED, Comparison, panel_report

N, K = 5, 3


def fake_generate(monkeypatch, calls: list | None = None, split: str = "train") -> None:
    """`generate` answers the reference for sample 0 of each prompt and "" for the others; the prompts must
    be the `split`'s (TRAIN by default) distinct tasks for the seed passed (a KeyError otherwise)."""
    import posttrain.rollout.generate as gen

    def fake(model, tokenizer, prompts, max_new_tokens=128, temperature=0.0, top_p=1.0, batch_size=8, seed=0,
             raw=False, progress="", n=1, return_logprobs=False):
        if calls is not None:
            calls.append({"n": n, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens,
                          "batch_size": batch_size, "seed": seed})
        refs = {tuple((m.role, m.content) for m in t.messages): t.reference
                for t in sample_tasks(len(prompts), split, seed, distinct=True)}
        out = []
        for i, p in enumerate(prompts):
            ref = refs[tuple((m.role, m.content) for m in p)]
            out += [{"text": ref if s == 0 else "", "stopped": True, "ids": [], "token_ids": [], "prompt_ids": [],
                     "prompt_index": i, "sample_index": s} for s in range(n)]
        return out

    monkeypatch.setattr(gen, "generate", fake)


def prefs(model_dir, out, *extra: str, n: int = N, k: int = K, annotator: str = "gold") -> int:
    """Run `posttrain prefs generate` in-process; its exit code."""
    with pytest.raises(SystemExit) as info:
        main(["prefs", "generate", "--policy", str(model_dir), "--n-prompts", str(n), "--k", str(k),
              "--annotator", annotator, "--out", str(out), *extra])
    return info.value.code


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_empty_answers_score_zero_and_references_one():
    """The premise of the hand-derived counts, on the tasks the tests use."""
    for seed in (0, 1):
        tasks = sample_tasks(N, "train", seed, distinct=True)
        assert len(tasks) == N
        assert [score(t, t.reference).gold for t in tasks] == [1.0] * N
        assert [score(t, "").gold for t in tasks] == [0.0] * N


def test_all_pairs_with_the_gold_annotator(model_dir, tmp_path, capsys, monkeypatch):
    calls: list = []
    fake_generate(monkeypatch, calls)
    out = tmp_path / "sub" / "prefs.jsonl"
    assert prefs(model_dir, out, "--temperature", "0.7", "--top-p", "0.9", "--max-new-tokens", "9",
                 "--batch-size", "4", "--seed", "0") == 0
    assert calls == [{"n": K, "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 9, "batch_size": 4, "seed": 0}]
    tasks = sample_tasks(N, "train", 0, distinct=True)
    records = rows(out)
    assert len(records) == 2 * N
    # prompt-major: prompt i gives records 2i and 2i + 1, the reference against sample 1, then sample 2
    for j, r in enumerate(records):
        task = tasks[j // 2]
        assert r["prompt"] == [{"role": m.role, "content": m.content} for m in task.messages]
        assert (r["chosen"], r["rejected"]) == (task.reference, "")
        w = r["world"]
        assert (w["family"], w["annotator"], w["tie"]) == (task.family, "gold", False)
        assert (w["gold_chosen"], w["gold_rejected"], w["index_chosen"], w["index_rejected"]) == (1.0, 0.0, 0, 1 + j % 2)
        assert w["label"] == ("a" if w["shown_first"] == "chosen" else "b")
    fmt, examples = load_examples(str(out))
    assert fmt == "preference" and len(examples) == 2 * N
    for ex, task in zip(examples[::2], tasks):
        assert isinstance(ex, Preference)
        assert ex.prompt == task.messages
        assert ex.chosen == [Message("assistant", task.reference)] and ex.rejected == [Message("assistant", "")]
    printed = capsys.readouterr().out
    assert f"prompts {N} (train split, {N} asked)  k {K}  responses {N * K}  mean gold 0.333  EOS rate 1.000" in printed
    assert f"pairs {2 * N} written of {3 * N} (mode all, ties drop); dropped {N} equal-gold, 0 of flat prompts" in printed
    assert ("annotator gold: agreement with gold 1.000 on the written pairs (0 tie labels); "
            "mean gold chosen 1.000, rejected 0.000") in printed
    assert f"panel report on the same {2 * N} pairs (0 gold ties)" in printed
    assert f"note: {2 * N} pairs have an empty response; training drops them" in printed  # every rejected is ""
    assert f"wrote {2 * N} preference pairs to {out}" in printed


def test_split_test_draws_the_held_out_prompts(model_dir, tmp_path, capsys, monkeypatch):
    """--split test: the prompts are the world's TEST split's distinct tasks (the fake raises a KeyError on any
    other prompt), none of them a train prompt; the rows have the same format and load as preference data; the
    report says "test split" and a note first says these are the held-out test prompts. (A bad --split: one
    line, exit 2, in BAD_FLAGS.)"""
    from posttrain.rollout.prefs import TEST_SPLIT_NOTE

    fake_generate(monkeypatch, split="test")
    out = tmp_path / "test.jsonl"
    assert prefs(model_dir, out, "--split", "test") == 0
    tasks = sample_tasks(N, "test", 0, distinct=True)
    assert [score(t, t.reference).gold for t in tasks] == [1.0] * N and [score(t, "").gold for t in tasks] == [0.0] * N
    records = rows(out)
    assert len(records) == 2 * N

    def as_rows(ts):
        return [[{"role": m.role, "content": m.content} for m in t.messages] for t in ts]

    assert [r["prompt"] for r in records[::2]] == as_rows(tasks)
    train = {json.dumps(p) for p in as_rows(sample_tasks(50, "train", 0, distinct=True))}
    assert not {json.dumps(r["prompt"]) for r in records} & train
    assert [(r["chosen"], r["rejected"]) for r in records[::2]] == [(t.reference, "") for t in tasks]
    fmt, examples = load_examples(str(out))
    assert fmt == "preference" and len(examples) == 2 * N and examples[0].prompt == tasks[0].messages
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == TEST_SPLIT_NOTE and "held-out test prompts" in TEST_SPLIT_NOTE
    assert printed[1].startswith(f"prompts {N} (test split, {N} asked)  k {K}")

    fake_generate(monkeypatch)  # the default split is train, without the note
    assert prefs(model_dir, out) == 0
    printed = capsys.readouterr().out
    assert TEST_SPLIT_NOTE not in printed and f"prompts {N} (train split, {N} asked)" in printed


def test_best_vs_worst_gives_one_pair_per_prompt(model_dir, tmp_path, capsys, monkeypatch):
    fake_generate(monkeypatch)
    out = tmp_path / "bvw.jsonl"
    assert prefs(model_dir, out, "--mode", "best_vs_worst") == 0
    records = rows(out)
    tasks = sample_tasks(N, "train", 0, distinct=True)
    assert [(r["chosen"], r["rejected"]) for r in records] == [(t.reference, "") for t in tasks]
    assert {(r["world"]["index_chosen"], r["world"]["index_rejected"]) for r in records} == {(0, 1)}
    assert f"pairs {N} written of {N} (mode best_vs_worst, ties drop); dropped 0 equal-gold" in capsys.readouterr().out


def test_unpaired_gives_n_good_and_2n_bad_rows(model_dir, tmp_path, capsys, monkeypatch):
    fake_generate(monkeypatch)
    out = tmp_path / "kto.jsonl"
    assert prefs(model_dir, out, "--unpaired") == 0
    records = rows(out)
    tasks = sample_tasks(N, "train", 0, distinct=True)
    assert [(r["completion"], r["label"]) for r in records] == [
        x for t in tasks for x in ((t.reference, True), ("", False), ("", False))]
    assert {r["world"]["threshold"] for r in records} == {0.7}
    fmt, examples = load_examples(str(out))
    assert fmt == "unpaired" and all(isinstance(e, Unpaired) for e in examples)
    assert [e.label for e in examples].count(True) == N and [e.label for e in examples].count(False) == 2 * N
    assert examples[0].prompt == tasks[0].messages and examples[0].completion == [Message("assistant", tasks[0].reference)]
    printed = capsys.readouterr().out
    assert f"unpaired rows {N * K}: good {N} (gold >= 0.7, mean gold 1.000)  bad {2 * N} (mean gold 0.000)" in printed
    assert f"note: {2 * N} rows have an empty response" in printed
    # the threshold is inclusive: at 1.0 the references (gold 1.0) are still good
    assert prefs(model_dir, out, "--unpaired", "--threshold", "1.0") == 0
    assert [r["label"] for r in rows(out)].count(True) == N


def test_noisy_annotator_agreement_and_panel_report_are_on_the_written_pairs(tok, monkeypatch):
    """With `fair`, a pair is labelled the gold way exactly when its chosen side is the reference (gold 1 vs 0),
    so the reported agreement is the fraction of such records; the panel report is `panel_report` over the
    written pairs in the order shown."""
    from posttrain.rollout.prefs import make_preferences

    fake_generate(monkeypatch)
    n = 20
    records, report = make_preferences(None, tok, n, K, "fair", seed=3)
    assert report["pairs"] == len(records) == 2 * n and report["dropped_ties"] == n
    assert report["empty_side"] == 2 * n  # one side of every pair is ""
    right = sum(r["world"]["gold_chosen"] == 1.0 for r in records)
    assert 0 < right < len(records)  # 25% flips: some reversed (chosen is "") among 40 pairs
    assert report["agreement"] == right / len(records)
    reversed_ = [r for r in records if r["world"]["gold_chosen"] == 0.0]
    assert all(r["chosen"] == "" and r["world"]["gold_rejected"] == 1.0 for r in reversed_)
    assert report["gold_chosen"] == right / len(records)
    items = []
    for r in records:
        ref, empty = (r["chosen"], r["rejected"]) if r["world"]["gold_chosen"] == 1.0 else (r["rejected"], r["chosen"])
        ref_first = (r["world"]["shown_first"] == "chosen") == (r["world"]["gold_chosen"] == 1.0)
        items.append(Comparison(1.0, 0.0, len(ref.strip()), 0) if ref_first else Comparison(0.0, 1.0, 0, len(ref.strip())))
    assert report["panel"] == panel_report(items, REPORTED, seed=3)
    assert set(report["panel"]["with_gold"]) == {"fair", "length", "position", "panel"} | {
        f"panel/{i}" for i in range(1, 6)}
    # the same seed gives the same labels
    again, _ = make_preferences(None, tok, n, K, "fair", seed=3)
    assert again == records


def test_same_seed_same_bytes_other_seed_other_file(model_dir, tmp_path, monkeypatch):
    fake_generate(monkeypatch)
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    for path, seed in ((a, "0"), (b, "0"), (c, "1")):
        assert prefs(model_dir, path, "--seed", seed, annotator="fair") == 0
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    prompts_a = {json.dumps(r["prompt"]) for r in rows(a)}
    prompts_c = {json.dumps(r["prompt"]) for r in rows(c)}
    assert prompts_a != prompts_c  # another seed draws other prompts


def test_tiny_model_end_to_end(model_dir, tmp_path, capsys):
    """The real sampler on the junk tiny model: every answer is cut at 4 tokens (gold 0), so no pair has a
    gold gap: exit 2 after the report, one error line, nothing written. `--ties keep` judges the equal-gold
    pairs (all tie labels under `gold`) and `--unpaired` writes one bad row per response; both load, and the
    same seed writes the same bytes (sampling is seeded)."""
    n, k = 3, 2
    out = tmp_path / "none.jsonl"
    assert prefs(model_dir, out, "--max-new-tokens", "4", n=n, k=k) == 2
    captured = capsys.readouterr()
    assert f"responses {n * k}  mean gold 0.000  EOS rate 0.000" in captured.out
    assert f"flat prompts {n}" in captured.out and f"pairs 0 written of {n}" in captured.out
    assert captured.err.strip().splitlines()[-1].startswith(
        f"error: no preference pair: the {k} responses of each of the {n} prompts all have the same gold; "
        f"nothing written to {out}")
    assert not out.exists()

    keep = tmp_path / "keep.jsonl"
    assert prefs(model_dir, keep, "--max-new-tokens", "4", "--ties", "keep", n=n, k=k) == 0
    fmt, examples = load_examples(str(keep))
    assert fmt == "preference" and len(examples) == n * k * (k - 1) // 2
    assert all(r["world"]["tie"] and r["world"]["label"] == "tie" for r in rows(keep))
    assert "agreement with gold 1.000 on the written pairs (3 tie labels)" in capsys.readouterr().out

    kto, kto2 = tmp_path / "kto.jsonl", tmp_path / "kto2.jsonl"
    for path in (kto, kto2):
        assert prefs(model_dir, path, "--max-new-tokens", "4", "--unpaired", n=n, k=k) == 0
    fmt, examples = load_examples(str(kto))
    assert fmt == "unpaired" and len(examples) == n * k and not any(e.label for e in examples)
    assert kto.read_bytes() == kto2.read_bytes()


def test_data_check_shows_chosen_and_rejected(model_dir, tok, tmp_path, capsys):
    """`data check` on a preference file renders both sides of a pair, prompt + chosen and prompt + rejected,
    each response trained; an identical pair and an empty side are counted as dropped sequences, and as the
    pairs the preference recipes leave out."""
    rows = [{"prompt": "What is 2 + 3?", "chosen": "2 + 3 = 5.", "rejected": "It is 6.", "world": {"gold_chosen": 1}},
            {"prompt": "hi", "chosen": "same", "rejected": "same"},
            {"prompt": "hi", "chosen": "hello", "rejected": ""}]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SystemExit) as info:
        main(["data", "check", str(path), "--model", str(model_dir), "--show", "2"])
    assert info.value.code == 0
    printed = capsys.readouterr().out
    assert "(format: preference)" in printed
    assert "examples    3 (6 sequences: each pair's chosen and rejected)  kept 3  dropped 3" in printed
    assert "2 identical chosen and rejected" in printed and "1 empty assistant turn" in printed
    # ...and as pairs, the way dpo and rm count them: the pair with an empty side goes whole
    assert ("pairs       1 trained on (dpo, rm), 2 left out (a pair goes when either side does)\n"
            "              1 identical chosen and rejected\n              1 rejected: empty assistant turn") in printed
    prefix = Renderer(tok).response_prefix()
    assert f"{path}:1 (chosen)" in printed and f"{path}:1 (rejected)" in printed
    assert f"[[{prefix}2 + 3 = 5." in printed and f"[[{prefix}It is 6." in printed


BAD_FLAGS = [
    (["--annotator", "fiar"], "error: --annotator: unknown annotator 'fiar' (did you mean 'fair'?); "
                              "choose from gold, fair, length, position, panel, length:W or position:P"),
    (["--k", "1"], "error: --k: must be >= 2, got 1"),
    (["--temperature", "0"], "error: --temperature: must be > 0, got 0.0 "
                             "(preference data needs sampling: K greedy samples are identical)"),
    (["--n-prompts", "0"], "error: --n-prompts: must be >= 1, got 0"),
    (["--top-p", "0"], "error: --top-p: must be in (0, 1], got 0.0"),
    (["--max-new-tokens", "0"], "error: --max-new-tokens: must be >= 1, got 0"),
    (["--batch-size", "0"], "error: --batch-size: must be >= 1, got 0"),
    (["--threshold", "1.5"], "error: --threshold: must be in [0, 1], got 1.5"),
    (["--mode", "best-vs-worst"], "error: --mode: unknown value 'best-vs-worst' (did you mean 'best_vs_worst'?); "
                                  "choose one of all, best_vs_worst"),
    (["--ties", "kep"], "error: --ties: unknown value 'kep' (did you mean 'keep'?); choose one of drop, keep"),
    (["--split", "tset"], "error: --split: unknown value 'tset' (did you mean 'test'?); choose one of train, test"),
]


@pytest.mark.parametrize(("flags", "error"), BAD_FLAGS, ids=[f[0][1] if f[0][0] == "--annotator" else f[0][0]
                                                             for f in BAD_FLAGS])
def test_bad_flags_fail_before_the_model_is_loaded(tmp_path, capsys, flags, error):
    """The policy path does not exist: an error about the flag means nothing was loaded before the check."""
    base = {"--policy": str(tmp_path / "no-model"), "--n-prompts": "2", "--k": "2", "--annotator": "gold",
            "--out": str(tmp_path / "out.jsonl")}
    base.update(dict(zip(flags[::2], flags[1::2])))
    with pytest.raises(SystemExit) as info:
        main(["prefs", "generate", *[x for kv in base.items() for x in kv]])
    assert info.value.code == 2
    assert capsys.readouterr().err == error + "\n"
    assert not (tmp_path / "out.jsonl").exists()


def test_unwritable_out_fails_before_the_model_is_loaded(tmp_path, capsys):
    (tmp_path / "f.txt").write_text("a file")
    with pytest.raises(SystemExit) as info:
        main(["prefs", "generate", "--policy", str(tmp_path / "no-model"), "--n-prompts", "2", "--k", "2",
              "--annotator", "gold", "--out", str(tmp_path / "f.txt" / "out.jsonl")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out:") and "f.txt" in err and err.count("\n") == 1 and "model" not in err


def test_a_missing_policy_is_an_error_about_the_model(tmp_path, capsys):
    """The counterpart of the tests above: with good flags, the same path fails at loading, naming the model."""
    with pytest.raises(SystemExit) as info:
        main(["prefs", "generate", "--policy", str(tmp_path / "no-model"), "--n-prompts", "2", "--k", "2",
              "--annotator", "gold", "--out", str(tmp_path / "out.jsonl")])
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("error: model:")


def test_help_lists_the_annotators(capsys):
    with pytest.raises(SystemExit) as info:
        main(["prefs", "generate", "--help"])
    assert info.value.code == 0
    printed = capsys.readouterr().out
    for line in ("gold: the gold ordering (temperature 0), no flips; equal gold is a tie",
                 "fair: Bradley-Terry on gold with temperature 0.1, then 25% of labels flipped"):
        assert line in printed
    assert all(f"{name}:" in printed for name in ("length", "position", "panel"))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"k": 1}, "k must be >= 2"), ({"temperature": 0.0}, "temperature must be > 0"),
    ({"n_prompts": 0}, "n_prompts must be >= 1"), ({"annotator": "nobody"}, "unknown annotator 'nobody'"),
    ({"mode": "pairs"}, "mode: unknown value 'pairs'"), ({"threshold": -0.1}, "threshold must be in [0, 1]"),
    ({"split": "eval"}, "split: unknown value 'eval'"),
])
def test_make_preferences_checks_before_sampling(kwargs, message):
    """The function API refuses bad arguments before touching the model (None here)."""
    from posttrain.rollout.prefs import make_preferences

    args = {"n_prompts": 2, "k": 2, "annotator": "gold"} | kwargs
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")):
        make_preferences(None, None, **args)


def test_flat_prompts_are_counted_apart_from_ties():
    """label_pairs on hand-made golds: prompt 0 (1, 0, 0) gives 2 pairs and 1 dropped tie; prompt 1 (0.5, 0.5,
    0.5) is flat: its 3 pairs are dropped as a flat prompt's; with ties keep all 6 candidates are written."""
    from posttrain.rollout.prefs import label_pairs

    tasks = sample_tasks(2, "train", 0, distinct=True)
    texts = [["x", "y", "z"], ["p", "q", "r"]]
    golds = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5]]
    records, report = label_pairs(tasks, texts, golds, "gold", seed=0)
    assert (report["candidates"], report["pairs"], report["dropped_ties"], report["dropped_flat"]) == (6, 2, 1, 3)
    assert report["empty_side"] == 0
    assert [(r["chosen"], r["rejected"]) for r in records] == [("x", "y"), ("x", "z")]
    records, report = label_pairs(tasks, texts, golds, "gold", seed=0, ties="keep")
    assert (report["pairs"], report["dropped_ties"], report["dropped_flat"], report["tie_labels"]) == (6, 0, 0, 4)
    # gold labels on (x, y), (x, z) agree; y vs z and the flat prompt's pairs are gold ties, labelled tie: 1
    assert report["agreement"] == 1.0 and report["panel"]["gold_ties"] == 4


def test_relabel_the_same_pairs_by_another_annotator(tmp_path, capsys):
    """`prefs relabel`: noisy pairs relabelled by `gold` keep every pair gold orders (the others swapped: their
    count is the old labels' disagreements), shown as before; ties are dropped; a strong length bias picks the
    longer side more often; the same seed gives the same file; a row without gold scores is one line, exit 2."""
    from posttrain.rollout.prefs import label_pairs, relabel

    tasks = sample_tasks(6, "train", 0, distinct=True)
    texts = [["a", "bb bb", "ccc ccc ccc", "dddd dddd dddd dddd"] for _ in tasks]
    golds = [[1.0, 0.5, 0.0, 0.5] for _ in tasks]
    noisy, _ = label_pairs(tasks, texts, golds, "fair", seed=3, ties="keep")
    wrong = sum(r["world"]["gold_chosen"] < r["world"]["gold_rejected"] for r in noisy)
    ties = sum(r["world"]["gold_chosen"] == r["world"]["gold_rejected"] for r in noisy)
    assert wrong > 0 and ties > 0
    out, report = relabel(noisy, "gold")
    assert (report["pairs"], report["dropped_ties"], report["flipped"], report["agreement"]) == (
        len(noisy) - ties, ties, wrong, 1.0)
    assert all(r["world"]["gold_chosen"] > r["world"]["gold_rejected"] for r in out)
    kept = [r for r in noisy if r["world"]["gold_chosen"] != r["world"]["gold_rejected"]]
    for old, new in zip(kept, out):
        assert {old["chosen"], old["rejected"]} == {new["chosen"], new["rejected"]}
        first = lambda r: r["chosen"] if r["world"]["shown_first"] == "chosen" else r["rejected"]  # noqa: E731
        assert first(old) == first(new) and new["world"]["annotator"] == "gold"
    _, long_report = relabel(noisy, "length:1000")
    assert long_report["chosen_longer_after"] > report["chosen_longer_after"]
    src = tmp_path / "noisy.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in noisy))
    for name in ("a.jsonl", "b.jsonl"):
        with pytest.raises(SystemExit) as info:
            main(["prefs", "relabel", "--data", str(src), "--annotator", "length:30", "--out", str(tmp_path / name)])
        assert info.value.code == 0
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert "relabel: " in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(noisy[0]) + "\n" + json.dumps({"prompt": "p", "chosen": "x", "rejected": "y"}) + "\n")
    with pytest.raises(SystemExit) as info:
        main(["prefs", "relabel", "--data", str(bad), "--annotator", "fair", "--out", str(tmp_path / "c.jsonl")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"{bad}:2: no 'world.gold_chosen'" in err and "Traceback" not in err, err
    assert not (tmp_path / "c.jsonl").exists()
    bad.write_text(json.dumps(noisy[0]) + "\n{not json\n")
    with pytest.raises(SystemExit) as info:
        main(["prefs", "relabel", "--data", str(bad), "--annotator", "fair", "--out", str(tmp_path / "c.jsonl")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"{bad}:2: invalid JSON" in err and not (tmp_path / "c.jsonl").exists(), err
