"""Judges (`posttrain/eval/judges.py`) and the arena run (`posttrain/eval/battles.py`): verdict parsing, both orders,
the judge's own numbers, the LLM judge's log-probabilities against a plain forward pass, the HTTP judge against
`posttrain serve`, and round-robin battles into ratings."""

from __future__ import annotations

import json
import math
import threading
import time

import pytest
import torch
import uvicorn
from transformers import AutoModelForSequenceClassification

from posttrain.cli import run
from posttrain.data.types import Message
from posttrain.errors import UserError
from posttrain.eval.arena import read_battles
from posttrain.eval.battles import battles, parse_models, run_arena
from posttrain.eval.judges import (
    AnnotatorJudge,
    GoldJudge,
    HTTPJudge,
    LLMJudge,
    Pair,
    RewardModelJudge,
    Verdict,
    both_orders,
    cohen_kappa,
    judge_report,
    make_judge,
    parse_rating,
    parse_verdict,
)
from posttrain.models.load import load_model, load_tokenizer
from posttrain.models.tiny import tiny_config
from posttrain.rollout.serve import make_app
from posttrain.world import sample_tasks, score


def test_parse_verdict_and_rating():
    assert parse_verdict("I think [[A]]") == "first"
    assert parse_verdict("[[B]]. Final: [[B]]") == "second"
    assert parse_verdict("a tie: [[C]]") == "tie"
    assert parse_verdict("[[A]] or maybe [[B]]") is None          # two verdicts: unreadable
    assert parse_verdict("answer [B] is better") == "second"       # the single-bracket fallback
    assert parse_verdict("[[A]] beats [B]") == "first"             # a double-bracket verdict wins over the fallback
    assert parse_verdict("A is better") is None and parse_verdict("") is None
    assert parse_rating("Rating: [[7]]") == 7.0 and parse_rating("[[10]]") == 10.0
    assert parse_rating("[6.5]") == 6.5 and parse_rating("[[0]]") is None and parse_rating("[[3]] [[4]]") is None
    assert parse_rating("no rating") is None


def test_cohen_kappa_and_the_report_by_hand():
    # p_o = 3/4; marginals (a .5, b .5) and (a .25, b .75): p_e = .5 * .25 + .5 * .75 = .5; kappa = .25 / .5
    assert cohen_kappa(["a", "a", "b", "b"], ["a", "b", "b", "b"]) == pytest.approx(0.5)
    assert cohen_kappa(["a", "a"], ["a", "a"]) is None
    results = [{"ab": "a", "ba": "a", "winner": "a"},      # consistent
               {"ab": "a", "ba": "b", "winner": "tie"},    # each order picks the first shown: a tie
               {"ab": "b", "ba": "b", "winner": "b"},
               {"ab": None, "ba": "a", "winner": None}]    # unreadable
    r = judge_report(results, gold=["a", "b", "tie", "a"])
    assert r["n"] == 4 and r["failures"] == 1 and r["ties"] == 1
    assert r["swap_consistency"] == pytest.approx(2 / 3)
    # sided verdicts: ab a(first) a(first) b(second); ba a(second) b(first) b(first) a(second): 4 of 7 first
    assert r["first_position"] == pytest.approx(4 / 7)
    assert r["agreement"] == pytest.approx(1 / 3)           # a == a; tie != b; b != tie
    assert r["agreement_no_ties"] == pytest.approx(1.0)     # only (a, a) has no tie
    assert r["kappa"] == pytest.approx(cohen_kappa(["a", "tie", "b"], ["a", "b", "tie"]))


def world_pairs(n: int, seed: int = 0) -> list[Pair]:
    """The reference answer against an empty-ish one on world tasks: gold differs on most."""
    tasks = sample_tasks(n, split="test", seed=seed)
    return [Pair(t.messages, t.reference, "Hmm.", t) for t in tasks]


def test_gold_judge_is_consistent_and_has_no_position_bias():
    pairs = world_pairs(28)
    res = both_orders(GoldJudge(), pairs)
    gold = ["a" if score(p.task, p.first).gold > score(p.task, p.second).gold else
            "b" if score(p.task, p.first).gold < score(p.task, p.second).gold else "tie" for p in pairs]
    r = judge_report(res, gold)
    assert r["swap_consistency"] == 1.0 and r["agreement"] == 1.0 and r["failures"] == 0
    assert r["first_position"] == pytest.approx(0.5)
    # an answer that ran out of tokens scores 0 (as the evaluation scores it), so it loses to the same text stopped
    p = Pair(pairs[0].messages, pairs[0].first, pairs[0].first, pairs[0].task, (True, False))
    assert GoldJudge().judge([p])[0].winner == "first"


def test_position_bias_shows_and_the_two_orders_remove_it():
    """Equal answers (gold ties): the position-biased annotator picks the first shown more often than the fair
    one; judged in both orders, the combined verdicts favour neither model."""
    tasks = sample_tasks(140, split="test", seed=1)
    pairs = [Pair(t.messages, t.reference, t.reference + " ", t) for t in tasks] * 3
    fair = judge_report(both_orders(AnnotatorJudge("fair", seed=0), pairs))
    biased_res = both_orders(AnnotatorJudge("position", seed=0), pairs)
    biased = judge_report(biased_res)
    assert abs(fair["first_position"] - 0.5) < 0.05
    assert biased["first_position"] > 0.55     # first_bias 0.2: 0.2 + 0.8 * 0.5 = 0.6 expected
    a = sum(r["winner"] == "a" for r in biased_res) / len(pairs)
    b = sum(r["winner"] == "b" for r in biased_res) / len(pairs)
    assert abs(a - b) < 0.06
    assert biased["swap_consistency"] < fair["swap_consistency"] + 0.05


@pytest.fixture(scope="module")
def llm(model_dir):
    return LLMJudge(str(model_dir))


def plain_logp(model, tok, codec, messages, continuation) -> float:
    """log p(continuation | prompt) by one forward pass of the whole sequence, no packing."""
    prompt = codec.prompt_ids(messages)
    cont = tok(codec.prefix + continuation, add_special_tokens=False).input_ids
    ids = torch.tensor([prompt + cont])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float().log_softmax(-1)
    return sum(float(logits[len(prompt) - 1 + k, t]) for k, t in enumerate(cont))


def short_pairs(n: int) -> list[Pair]:
    """Pairs whose judge prompt fits the tiny model's 512 positions."""
    return [Pair([Message("user", f"What is {i} plus {i}?")], f"{2 * i}.", f"{i}.") for i in range(n)]


def test_llm_judge_log_probabilities_equal_a_plain_forward(llm):
    pairs = short_pairs(6)
    verdicts = llm.judge(pairs)
    for p, v in zip(pairs, verdicts):
        la = plain_logp(llm.model, llm.tok, llm.codec, llm._messages(p), "[[A]]")
        lb = plain_logp(llm.model, llm.tok, llm.codec, llm._messages(p), "[[B]]")
        assert v.p_first == pytest.approx(1 / (1 + math.exp(lb - la)), abs=1e-5)
        assert v.winner == ("first" if la > lb else "second")
    # ratings: the expected value over 1..9 of the same continuation probabilities
    p = pairs[0]
    got = llm.ratings([p.messages], [p.first])[0]
    from posttrain.eval.judges import JUDGE_SYSTEM, RATING_PROMPT, question_text

    msgs = [Message("system", JUDGE_SYSTEM), Message("user", RATING_PROMPT.format(
        question=question_text(p.messages), answer=p.first))]
    w = [math.exp(plain_logp(llm.model, llm.tok, llm.codec, msgs, f"[[{k}]]")) for k in range(1, 10)]
    assert got == pytest.approx(sum(k * x for k, x in zip(range(1, 10), w)) / sum(w), abs=1e-4)
    assert 1 <= got <= 9


def test_unreadable_generated_verdicts_are_counted_never_ties(model_dir):
    judge = LLMJudge(str(model_dir), mode="generate", max_new_tokens=8)
    res = both_orders(judge, short_pairs(4))
    r = judge_report(res)
    assert r["failures"] == sum(x["winner"] is None for x in res)
    for x in res:  # a random tiny model writes no [[A]]: its verdicts are unreadable, kept with their text
        if x["winner"] is None:
            assert x["raw"] and all(isinstance(t, str) for t in x["raw"])


@pytest.fixture(scope="module")
def server_url(model_dir, one_thread):
    tok, model = load_tokenizer(str(model_dir)), load_model(str(model_dir))
    app = make_app(model, tok, "tiny", max_batch=32, batch_wait_ms=5, max_tokens=64, seed=0)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.01)
    yield f"http://127.0.0.1:{srv.servers[0].sockets[0].getsockname()[1]}/v1", app.state.batcher
    srv.should_exit = True
    thread.join(10)


def test_http_judge_against_posttrain_serve(server_url, model_dir):
    """The HTTP judge on `posttrain serve` reads what the local judge writes (greedy, the same prompt through the
    same chat template), its concurrent requests are batched, and a refused connection is an unreadable verdict
    with its reason, not a tie."""
    url, batcher = server_url
    # short prompts: the tiny model's context (512 positions) must hold the judge prompt
    pairs = short_pairs(5)
    http = make_judge(url)  # the model id read from /v1/models
    assert isinstance(http, HTTPJudge) and http.model == "tiny"
    local = LLMJudge(str(model_dir), mode="generate", max_new_tokens=64)
    got, want = http.judge(pairs), local.judge(pairs)
    assert [v.raw for v in got] == [v.raw for v in want]
    assert [v.winner for v in got] == [v.winner for v in want]
    assert batcher.metrics()["largest_batch"] > 1
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    dead = HTTPJudge(f"http://127.0.0.1:{closed}/v1", model="tiny", timeout=5, max_retries=0)
    v = dead.judge(pairs[:2])
    assert all(x.winner is None and "Connection" in x.raw for x in v)
    assert judge_report(both_orders(dead, pairs[:2]))["failures"] == 2
    with pytest.raises(UserError, match="cannot list its models"):
        HTTPJudge(f"http://127.0.0.1:{closed}/v1", timeout=5, max_retries=0)
    # a server that accepts the connection and never answers: a timeout, after the client's retries
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        slow = HTTPJudge(f"http://127.0.0.1:{silent.getsockname()[1]}/v1", model="tiny", timeout=0.5, max_retries=1)
        v = slow.judge(pairs[:1])
    assert v[0].winner is None and "Timeout" in v[0].raw


def test_reward_model_judge(tok, tmp_path):
    torch.manual_seed(5)
    config = tiny_config("llama", len(tok), hidden=32, layers=2, heads=4, pad_token_id=tok.pad_token_id)
    config.num_labels = 1
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    judge = RewardModelJudge(str(tmp_path))
    pairs = world_pairs(4)
    from posttrain.data.types import Conversation
    from posttrain.recipes.rm import score_examples

    for p, v in zip(pairs, judge.judge(pairs)):
        a, b = (score_examples(judge.model, judge.tok, [Conversation([*p.messages, Message("assistant", x)])],
                               judge.pad_id)[0]["score"] for x in (p.first, p.second))
        assert v.p_first == pytest.approx(1 / (1 + math.exp(b - a)), abs=1e-5)
        assert v.winner == ("first" if a > b else "second")
    # cached == live: each distinct answer is scored once, and a swapped or repeated pair reads the same scores
    assert len(judge.scores) == len({(p.messages[-1].content, x) for p in pairs for x in (p.first, p.second)})
    fresh = RewardModelJudge(str(tmp_path))
    again = fresh.judge([p.swapped() for p in pairs] + pairs)
    for v, w, s in zip(judge.judge(pairs), again[len(pairs):], again[:len(pairs)]):
        assert w.winner == v.winner and w.p_first == pytest.approx(v.p_first, abs=1e-6)
        assert s.p_first == pytest.approx(1 - v.p_first, abs=1e-6)


class Fixed:
    """A judge that answers from a table keyed by the two texts in the order shown."""

    name = "fixed"

    def __init__(self, table):
        self.table = table

    def judge(self, pairs):
        return [Verdict(self.table.get((p.first, p.second))) for p in pairs]


def test_battles_rows_and_the_two_order_rule():
    tasks = sample_tasks(2, split="test", seed=0)
    answers = {"x": [{"text": "X0", "stopped": True}, {"text": "X1", "stopped": True}],
               "y": [{"text": "Y0", "stopped": True}, {"text": "Y1", "stopped": True}]}
    # prompt 0: x wins in both orders; prompt 1: each order prefers the first shown -> a tie
    table = {("X0", "Y0"): "first", ("Y0", "X0"): "second", ("X1", "Y1"): "first", ("Y1", "X1"): "first"}
    rows, report = battles(tasks, answers, Fixed(table))
    assert [r["winner"] for r in rows] == ["model_a", "tie"]
    assert rows[0]["model_a"] == "x" and rows[0]["model_b"] == "y" and rows[1]["order_ba"] == "b"
    assert report["swap_consistency"] == 0.5
    rows, report = battles(tasks, answers, Fixed({}))  # nothing readable: no winner, counted
    assert all(r["winner"] is None for r in rows) and report["failures"] == 2


def test_arena_from_answers_ranks_by_gold(tmp_path):
    """Three answer sets on the same prompts: the references, nothing useful, and the references on half of
    the prompts. Judged by gold, the ratings order them, and battles.jsonl is Chatbot Arena's format."""
    n = 28
    tasks = sample_tasks(n, split="test", seed=0, distinct=True)
    good = [{"text": t.reference, "stopped": True} for t in tasks]
    bad = [{"text": "Hmm.", "stopped": True} for _ in tasks]
    mixed = [g if i % 2 else b for i, (g, b) in enumerate(zip(good, bad))]
    result = run_arena([], "gold", tmp_path, n=n, seed=0, n_boot=200,
                       answers={"good": good, "mixed": mixed, "bad": bad})
    order = [r["model"] for r in result["models"]]
    assert order == ["good", "mixed", "bad"]
    assert result["judge_report"]["agreement"] == 1.0 and result["judge_report"]["swap_consistency"] == 1.0
    rows, skipped = read_battles(str(tmp_path / "battles.jsonl"))
    assert len(rows) == 3 * len(tasks) and not skipped
    assert (tmp_path / "arena.png").stat().st_size > 1000
    assert json.loads((tmp_path / "leaderboard.json").read_text())["judge"] == "gold"


def test_arena_command_on_tiny_models(model_dir, tmp_path, capsys):
    out = tmp_path / "arena"
    models = f"one={model_dir},two={model_dir}"
    assert run(["arena", "--models", models, "--judge", "gold", "--n", "14", "--out", str(out),
                "--bootstrap", "50", "--max-new-tokens", "8"]) == 0
    text = capsys.readouterr().out
    assert "Bradley-Terry" in text and "swap consistency" in text
    board = json.loads((out / "leaderboard.json").read_text())
    # the same model twice: the same answers, every battle a tie, both at 1000
    assert all(r["rating"] == pytest.approx(1000, abs=1e-6) for r in board["models"])
    assert json.loads((out / "answers" / "one.json").read_text()) == json.loads((out / "answers" / "two.json").read_text())
    with pytest.raises(UserError, match="--models: give at least two"):
        run(["arena", "--models", str(model_dir)])
    with pytest.raises(UserError, match="two are named"):
        parse_models(f"{model_dir},{model_dir}")
    with pytest.raises(UserError, match="not one of gold"):
        run(["arena", "--models", models, "--judge", "oracle", "--out", str(out)])
    with pytest.raises(UserError, match="unknown annotator 'lenght'.*did you mean 'length'"):
        run(["arena", "--models", models, "--judge", "annotator:lenght", "--out", str(out)])
    with pytest.raises(UserError, match="--raw: 'base' is not one of"):
        run(["arena", "--models", models, "--raw", "base", "--out", str(out)])
    with pytest.raises(UserError, match="not a model folder"):
        run(["arena", "--models", f"a={model_dir},b={tmp_path}", "--out", str(out)])


def test_a_judge_prompt_beyond_the_context_is_unreadable(llm):
    long = Pair([Message("user", "word " * 600)], "Yes.", "No.")
    short = Pair([Message("user", "Hi?")], "Yes.", "No.")
    v = llm.judge([long, short])
    assert v[0].winner is None and "positions" in v[0].raw and v[1].winner is not None


def test_annotate_two_eval_results_then_win_rates_and_an_arena_from_results(model_dir, tmp_path, capsys):
    """`eval annotate` judges a model's `eval world` answers against a baseline's in both orders and writes
    AlpacaEval rows that `eval winrate` reads; `arena --results` rates saved answers without generating."""
    a = tmp_path / "a.json"
    assert run(["eval", "world", "--model", str(model_dir), "--n", "14", "--seed", "3", "--max-new-tokens", "6",
                "--out", str(a)]) == 0
    result = json.loads(a.read_text())
    for i, s in enumerate(result["samples"]):  # a "verbose" variant: every other answer padded
        if i % 2:
            s["response"] = "Yes. I hope this helps! Let me know if you have any other questions."
    b = tmp_path / "b.json"
    b.write_text(json.dumps(result))
    capsys.readouterr()
    ann = tmp_path / "ann.json"
    assert run(["eval", "annotate", "--baseline", str(a), "--model", str(b), "--judge", "annotator:length",
                "--names", "plain,padded", "--out", str(ann)]) == 0
    rows = json.loads(ann.read_text())
    assert len(rows) == 14 and {r["generator_2"] for r in rows} == {"padded"}
    assert all(r["preference"] in (1, 1.5, 2) for r in rows)
    gold = tmp_path / "gold.json"
    assert run(["eval", "annotate", "--baseline", str(a), "--model", str(b), "--judge", "gold", "--out", str(gold)]) == 0
    assert all(r["preference"] == 1.5 for r in json.loads(gold.read_text())[::2])  # identical answers: a tie
    assert run(["eval", "winrate", "--annotations", str(ann), "--json"]) == 0
    capsys.readouterr()
    out = tmp_path / "arena"
    assert run(["arena", "--results", f"plain={a},padded={b}", "--judge", "gold", "--out", str(out),
                "--bootstrap", "50"]) == 0
    board = json.loads((out / "leaderboard.json").read_text())
    assert {m["model"] for m in board["models"]} == {"plain", "padded"} and board["n_prompts"] == 14
    other = tmp_path / "other.json"
    assert run(["eval", "world", "--model", str(model_dir), "--n", "14", "--seed", "4", "--max-new-tokens", "2",
                "--out", str(other)]) == 0
    with pytest.raises(UserError, match="not on the same prompts"):
        run(["eval", "annotate", "--baseline", str(a), "--model", str(other), "--out", str(tmp_path / "x.json")])
    with pytest.raises(UserError, match="not on the same prompts"):
        run(["arena", "--results", f"a={a},o={other}", "--out", str(out)])
    with pytest.raises(UserError, match="not both"):
        run(["arena", "--results", f"a={a},b={b}", "--models", f"x={model_dir},y={model_dir}", "--out", str(out)])
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(UserError, match="not an `eval world --out` result"):
        run(["eval", "annotate", "--baseline", str(tmp_path / "junk.json"), "--model", str(b),
             "--out", str(tmp_path / "x.json")])


def test_generated_ratings_are_parsed_with_the_fallback(model_dir, monkeypatch):
    """`#generate-rating`: each answer rated alone in writing; [[r]] or the single-bracket [r]; an unreadable
    rating makes the verdict unreadable."""
    import posttrain.rollout.generate as gen

    written = iter(["Rating: [[7]]", "[6]", "[[3]]", "no idea"])
    seen = []

    def fake(model, tok, prompts, **kw):
        seen.extend(prompts)
        return [{"text": next(written)} for _ in prompts]

    monkeypatch.setattr(gen, "generate", fake)
    judge = make_judge(f"llm:{model_dir}#generate-rating")
    v = judge.judge(short_pairs(2))
    assert v[0].winner == "first" and "7 vs 6" in v[0].raw
    assert v[1].winner is None and "no idea" in v[1].raw
    # each answer alone, in order: pair 1's second answer is "1."
    assert len(seen) == 4 and "[Answer]\n1.\n" in seen[3][-1].content and "[Answer]\n2.\n" in seen[2][-1].content
