"""`posttrain bon` (`posttrain.eval.bon`): best-of-n by a reward model against the world's gold verifier.

By hand (`test_hand_values`), four prompts, four samples each (gold / reward; -inf: no reward):

    p0  gold 0, 1, .5, 1   reward 3, 1, 2, 0        the RM keeps sample 0 (gold 0) at every n
    p1  gold .5, 0, 0, 1   reward -inf, 5, 5, 9     n=1: sample 0 (the only one); n=2: 1 (gold 0); n=4: 3 (gold 1)
    p2  gold 1, 1, 0, 0    reward 0, 0, 7, 0        n=2: a tie, the lowest index (gold 1); n=4: 2 (gold 0)
    p3  gold 0, 0, 0, 0    reward 1, 2, 3, 4        gold 0 whatever is chosen

gives gold by RM .375, .25, .25 at n = 1, 2, 4 (n=1: the mean gold of sample 0), by the oracle .375, .625, .75,
RM reward of the choice 4/3 (p1's -inf left out, counted in no_reward_chosen), 10/4, 23/4: the reward rises
while gold falls (over-optimisation, gain -0.125). KL = log n - (n-1)/n: 0, log 2 - 1/2, log 4 - 3/4.

`fake_generate` answers the task's reference (gold 1) for sample i % 4 of prompt i and "" (gold 0, and no
reward: the renderer drops an empty assistant turn) for the others; with any reward model the RM then picks
the reference whenever it is among the first n: on 8 prompts gold .25, .5, 1, 1 at n = 1, 2, 4, 8 for both.
"""

from __future__ import annotations

import json
import math
import random
import re

import pytest
import torch

from posttrain.cli import main
from posttrain.errors import UserError
from posttrain.eval import bon
from posttrain.world import sample_tasks, score

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def rm_dir(tok, tmp_path_factory):
    """A tiny random reward model: a Llama sequence classifier (num_labels 1) built from a config."""
    from transformers import AutoModelForSequenceClassification

    from posttrain.models.tiny import tiny_config

    config = tiny_config("llama", len(tok), hidden=32, layers=2, heads=4, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    config.num_labels = 1
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    d = tmp_path_factory.mktemp("tiny_rm")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def scorer(rm_dir):
    from posttrain.recipes.rm import load_scorer

    return load_scorer(str(rm_dir))


def fake_generate(monkeypatch, tasks) -> None:
    """Sample s of prompt i is the reference of `tasks[i]` when s == i % 4, else ""; all stopped."""
    import posttrain.rollout.generate as gen

    def fake(model, tokenizer, prompts, max_new_tokens=128, temperature=0.0, top_p=1.0, batch_size=8, seed=0,
             raw=False, progress="", n=1, return_logprobs=False):
        assert [list(p) for p in prompts] == [t.messages for t in tasks]
        return [{"text": t.reference if s == i % 4 else "", "stopped": True, "ids": [], "token_ids": [],
                 "prompt_ids": [], "prompt_index": i, "sample_index": s}
                for i, t in enumerate(tasks) for s in range(n)]

    monkeypatch.setattr(gen, "generate", fake)


def column(result: dict, key: str) -> list:
    return [row[key] for row in result["rows"]]


GOLDS = [[0.0, 1.0, 0.5, 1.0], [0.5, 0.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
REWARDS = [[3.0, 1.0, 2.0, 0.0], [-math.inf, 5.0, 5.0, 9.0], [0.0, 0.0, 7.0, 0.0], [1.0, 2.0, 3.0, 4.0]]


def test_hand_values():
    tasks = sample_tasks(4, "test", 0, distinct=True)
    r = bon.summarize(tasks, GOLDS, REWARDS, [4, 1, 2, 2])  # sorted, each n once
    assert r["ns"] == [1, 2, 4] and r["prompts"] == 4 and r["samples_per_prompt"] == 4
    assert column(r, "gold_rm") == [0.375, 0.25, 0.25]
    assert column(r, "gold_oracle") == [0.375, 0.625, 0.75]
    assert column(r, "rm_reward") == pytest.approx([4 / 3, 2.5, 5.75])
    assert column(r, "no_reward_chosen") == [1, 0, 0]
    assert column(r, "gain") == pytest.approx([0.0, -0.125, -0.125])
    assert (r["rows"][0]["gain_lo"], r["rows"][0]["gain_hi"]) == (0.0, 0.0)  # n=1 is the baseline itself
    assert len({t.family for t in tasks}) == 4  # one prompt per family: p1's family at n = 4 is p1 alone
    assert r["rows"][2]["families"][tasks[1].family] == {"n": 1, "gold_rm": 1.0, "gold_oracle": 1.0}


def test_the_kl_column_is_log_n_minus_n_minus_1_over_n():
    """Exactly log n - (n-1)/n: 0 at n = 1, log 2 - 1/2 = 0.1931... at n = 2."""
    tasks = sample_tasks(4, "test", 0, distinct=True)
    r = bon.summarize(tasks, GOLDS, REWARDS, [1, 2, 4])
    assert column(r, "kl") == [0.0, math.log(2) - 0.5, math.log(4) - 0.75]
    assert bon.bon_kl(1) == 0.0 and bon.bon_kl(2) == pytest.approx(0.19314718055994530, abs=1e-15)


def test_a_reward_equal_to_gold_chooses_as_the_oracle_does():
    """reward == gold: the RM's choice is the oracle's at every n (same argmax, same tie rule), so the two gold
    columns are equal; the oracle's gold never falls with n (a max over more of the same samples)."""
    rng = random.Random(0)
    tasks = sample_tasks(28, "test", 0, distinct=True)
    golds = [[rng.choice([0.0, 0.25, 0.5, 1.0]) for _ in range(16)] for _ in tasks]
    r = bon.summarize(tasks, golds, golds, [1, 2, 3, 4, 8, 16])
    assert column(r, "gold_rm") == column(r, "gold_oracle")
    assert column(r, "rm_reward") == column(r, "gold_oracle")
    oracle = column(r, "gold_oracle")
    assert oracle == sorted(oracle) and oracle[0] == sum(g[0] for g in golds) / 28
    for row in r["rows"]:
        assert all(f["gold_rm"] == f["gold_oracle"] for f in row["families"].values())


def test_best_of_n_with_a_scorer_whose_reward_is_gold(monkeypatch, tok):
    """Through `best_of_n`, with `score_examples` replaced by a stub that returns each response's gold: RM and
    oracle agree, n=1 is the mean gold of sample 0 and the numbers are the module docstring's .25, .5, 1, 1."""
    import posttrain.recipes.rm as rm

    tasks = sample_tasks(8, "test", 0, distinct=True)
    fake_generate(monkeypatch, tasks)

    def stub(model, tok, examples, pad_id, max_seq_len=1024, batch_size=16, device="cpu"):
        out = []
        for ex in examples:
            i = int(re.match(r"prompt (\d+) sample", ex.where).group(1))
            out.append({"where": ex.where, "score": score(tasks[i], ex.messages[-1].content).gold})
        return out

    monkeypatch.setattr(rm, "score_examples", stub)
    stand_in = torch.nn.Linear(1, 1)  # the scorer: only its device is read, the stub scores
    r = bon.best_of_n(None, tok, stand_in, tok, 0, tasks, [1, 2, 4, 8])
    assert column(r, "gold_rm") == column(r, "gold_oracle") == [0.25, 0.5, 1.0, 1.0]
    assert r["rows"][0]["gold_rm"] == sum(s["golds"][0] for s in r["samples"]) / 8
    assert r["unscored"] == 0 and r["samples_per_prompt"] == 8


def test_empty_responses_get_no_reward_and_are_counted(monkeypatch, tok, scorer):
    """A real (random) reward model: the "" samples are dropped by the renderer, so they get -inf and the
    reference (the only scored sample of a prompt) is chosen whenever it is among the first n."""
    tasks = sample_tasks(8, "test", 0, distinct=True)
    assert [score(t, t.reference).gold for t in tasks] == [1.0] * 8
    assert [score(t, "").gold for t in tasks] == [0.0] * 8
    fake_generate(monkeypatch, tasks)
    model, stok, pad = scorer
    r = bon.best_of_n(None, tok, model, stok, pad, tasks, [1, 2, 4, 8])
    assert column(r, "gold_rm") == column(r, "gold_oracle") == [0.25, 0.5, 1.0, 1.0]
    assert r["unscored"] == 56 and r["unscored_reasons"] == {"empty assistant turn": 56}
    assert column(r, "no_reward_chosen") == [6, 4, 0, 0]
    assert [sum(x is not None for x in s["rewards"]) for s in r["samples"]] == [1] * 8
    assert "note: 56 of 64 samples have no reward (empty assistant turn: 56" in bon.format_table(r)
    json.dumps(r, allow_nan=False)  # no -inf in the JSON: a missing reward is null


def test_the_same_seed_gives_the_same_result(model_dir, tok, scorer):
    """Real sampling from the tiny policy: seed 0 twice is identical; seed 1 samples differently."""
    from posttrain.models.load import load_model

    policy = load_model(str(model_dir))
    tasks = sample_tasks(4, "test", 0, distinct=True)
    model, stok, pad = scorer
    kw = {"max_new_tokens": 4, "batch_size": 16}
    a, b = (bon.best_of_n(policy, tok, model, stok, pad, tasks, [1, 2, 4], seed=0, **kw) for _ in range(2))
    c = bon.best_of_n(policy, tok, model, stok, pad, tasks, [1, 2, 4], seed=1, **kw)
    assert a == b
    assert [s["responses"] for s in a["samples"]] != [s["responses"] for s in c["samples"]]
    oracle = column(a, "gold_oracle")
    assert oracle == sorted(oracle)


def test_cli_end_to_end(model_dir, rm_dir, tmp_path, capsys):
    out, png = tmp_path / "bon.json", tmp_path / "plots" / "bon.png"
    with pytest.raises(SystemExit) as info:
        main(["bon", "--policy", str(model_dir), "--reward-model", str(rm_dir), "--n", "1,2,4", "--n-prompts", "6",
              "--max-new-tokens", "4", "--out", str(out), "--plot", str(png)])
    assert info.value.code == 0
    text = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["policy"] == str(model_dir) and r["split"] == "test" and r["prompts"] == 6 and r["ns"] == [1, 2, 4]
    assert column(r, "kl") == [bon.bon_kl(n) for n in (1, 2, 4)]
    assert len(r["samples"]) == 6 and all(len(s["responses"]) == 4 for s in r["samples"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert text.startswith("best-of-n: 6 prompts (test split), 4 samples each, temperature 1, seed 0")
    assert bon.format_table(r) in text and f"wrote {out}" in text and f"wrote {png}" in text
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bon.json", "bon.png", "plots"]  # no temporary left


def _fails(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(["bon", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_input(model_dir, rm_dir, tmp_path, capsys):
    """One line, exit 2, before any model loads (a bad --n, --n-prompts, --policy, --reward-model)."""
    base = ["--policy", str(model_dir), "--reward-model", str(rm_dir)]
    for bad in ("1,x", "0,2", "", "2.5", "-1"):
        assert "--n: " in _fails(capsys, [*base, f"--n={bad}"])
    assert "--n-prompts: must be >= 1, got 0" in _fails(capsys, [*base, "--n-prompts", "0"])
    assert "--temperature: must be > 0" in _fails(capsys, [*base, "--temperature", "0"])
    assert "unknown split 'tset'" in _fails(capsys, [*base, "--split", "tset"])
    assert "--policy: " in _fails(capsys, ["--policy", str(tmp_path / "nope"), "--reward-model", str(rm_dir)])
    assert "is not a causal LM (config.json: LlamaForSequenceClassification)" in _fails(
        capsys, ["--policy", str(rm_dir), "--reward-model", str(rm_dir)])
    assert "--reward-model: " in _fails(capsys, ["--policy", str(model_dir), "--reward-model", str(tmp_path)])
    err = _fails(capsys, ["--policy", str(model_dir), "--reward-model", str(model_dir)])
    assert err.startswith("error: --reward-model: ") and "is not a reward model" in err
    with pytest.raises(UserError, match="positive integers"):
        bon.check_ns([1, 0])


def test_a_reward_model_that_gives_nan(model_dir, rm_dir, tok, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    bad = AutoModelForSequenceClassification.from_pretrained(rm_dir)
    with torch.no_grad():
        bad.model.norm.weight.fill_(float("nan"))
    bad.save_pretrained(tmp_path / "nan")
    tok.save_pretrained(tmp_path / "nan")
    capsys.readouterr()  # the progress bars of loading and saving above
    with pytest.raises(SystemExit) as info:
        main(["bon", "--policy", str(model_dir), "--reward-model", str(tmp_path / "nan"), "--n", "1,2",
              "--n-prompts", "2", "--max-new-tokens", "2", "--out", str(tmp_path / "o.json")])
    lines = capsys.readouterr().err.strip().splitlines()  # transformers' loading bars, then the one error line
    err = lines[-1]
    assert info.value.code == 2 and [x for x in lines if x.startswith("error: ")] == [err]
    assert "--reward-model: the reward model gives a non-finite score (nan) for prompt " in err
    assert not (tmp_path / "o.json").exists()


def test_bon_answers_are_the_reward_models_pick(model_dir, rm_dir):
    """The arena's best-of-n entrant: of the n samples `sample_responses` draws, the one the reward model scores
    highest (the same samples and rewards computed here by hand)."""
    from posttrain.eval.bon import bon_answers, rm_rewards
    from posttrain.models.load import load_model, load_tokenizer
    from posttrain.recipes.rm import load_scorer
    from posttrain.rollout.prefs import sample_responses
    from posttrain.world import sample_tasks

    tasks = sample_tasks(4, split="test", seed=2)
    got = bon_answers(str(model_dir), str(rm_dir), tasks, 3, temperature=1.0, max_new_tokens=6, seed=5)
    tok, model = load_tokenizer(str(model_dir)), load_model(str(model_dir))
    samples = sample_responses(model, tok, tasks, 3, temperature=1.0, max_new_tokens=6, seed=5)
    rewards, _ = rm_rewards(*load_scorer(str(rm_dir)), tasks, [[o["text"] for o in s] for s in samples])
    for answer, outs, r in zip(got, samples, rewards):
        best = max(range(3), key=lambda i: (r[i], -i))
        assert answer == {"text": outs[best]["text"], "stopped": outs[best]["stopped"]}
