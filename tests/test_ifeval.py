"""IFEval-style accuracy and the two-turn evaluation.

`eval/ifeval.py`: IFEval's 8 loose variants; strict fails and loose passes for a preamble line and for `**`
around a JSON object; prompt- and instruction-level accuracy derived by hand on four tasks (with bootstrap
intervals equal to `stats.bootstrap_ci` on the same units); every reference follows every instruction strict.
`eval/multiturn.py`: the world's first-turn and follow-up tasks give the task back from its own reference;
turn 2 is asked with the model's own turn-1 answer (a fake generate, hand-derived scores; and the tiny model
through the real generate); the CLIs exit 0 with their JSON keys and fail with one-line errors."""

from __future__ import annotations

import json
import random

import pytest
from conftest import cli_fails

from posttrain.cli import main
from posttrain.data.types import Message
from posttrain.errors import UserError
from posttrain.eval.ifeval import (
    FAMILIES,
    HEADLINE,
    eval_ifeval_cli,
    follow,
    format_table,
    summarize,
    variants,
)
from posttrain.eval.multiturn import evaluate_two_turn, score_turns
from posttrain.eval.stats import bootstrap_ci
from posttrain.world import Task, sample_tasks, score
from posttrain.world.core import make_task, user
from posttrain.world.fam_lists import MultiTurn, first_turn, follow_up

SUMMARY_KEYS = {"n", "n_instructions", *HEADLINE, *(k + "_ci" for k in HEADLINE), "families", "kinds", "eos_rate",
                "split", "seed", "max_new_tokens", "n_requested", "model"}
TWO_TURN_KEYS = {"n", "turn1", "turn1_ci", "turn2", "turn2_ci", "turn1_eos_rate", "turn2_eos_rate", "ops", "split",
                 "seed", "max_new_tokens", "model"}


def ifeval_task(constraints: list[str], params: dict, family: str = "ifeval") -> Task:
    meta = {"constraints": constraints, "params": params, "answers": ["paris"]}
    return make_task(family, [user("What is the capital of France?")], meta, "Paris.")


def json_task(keys: list[str]) -> Task:
    return make_task("format", [user("JSON please.")], {"kind": "json", "keys": keys}, json.dumps(dict.fromkeys(keys, 1)))


def test_variants_are_ifevals_eight():
    assert variants("Sure:\n**x**\nbye") == ["Sure:\n**x**\nbye", "Sure:\nx\nbye", "**x**\nbye", "Sure:\n**x**",
                                             "**x**", "x\nbye", "Sure:\nx", "x"]
    assert variants("one line") == ["one line", "one line", "", "", "", "", "", ""]


def test_a_first_line_preamble_fails_strict_and_passes_loose():
    task = ifeval_task(["start_with", "lower"], {"start_with": "done"})
    r = follow(task, "Sure, here it is:\ndone: paris is the capital.")
    assert r == {"instructions": ["start_with", "lower"], "strict": [False, False], "loose": [True, True]}
    assert follow(task, "done: paris is the capital.") == {"instructions": ["start_with", "lower"],
                                                            "strict": [True, True], "loose": [True, True]}


def test_bold_markers_break_json_strict_not_loose():
    task = json_task(["author", "genre"])
    assert follow(task, '**{"author": "Ann", "genre": "poetry"}**') == {
        "instructions": ["json"], "strict": [False], "loose": [True]}
    # loose is an upper bound, not a pass: a wrong key stays wrong in every variant
    assert follow(task, '**{"author": "Ann", "owner": "me"}**')["loose"] == [False]


def test_an_empty_response_follows_nothing():
    """As in IFEval: no_letter and max_words hold on '' by their checks, but an empty text counts for none."""
    task = ifeval_task(["no_letter", "max_words"], {"no_letter": "z", "max_words": 5})
    assert follow(task, "  \n") == {"instructions": ["no_letter", "max_words"], "strict": [False, False],
                                    "loose": [False, False]}


def test_max_words_partial_credit_is_not_followed():
    task = ifeval_task(["max_words"], {"max_words": 3})
    assert 0 < score(task, "paris is the capital").checks["max_words"] < 1
    assert follow(task, "paris is the capital")["strict"] == [False]
    assert follow(task, "paris, the capital")["strict"] == [True]


def four_tasks() -> tuple[list[Task], list[str]]:
    """A: start_with + lower after a preamble (strict 0/2, loose 2/2); B: max_words 3 + upper, one line of four
    lower-case words (0/2 and 0/2: its line-dropped variants are empty); C: JSON in bold (0/1, 1/1); D: no_letter
    'z' on 'Paris.' (1/1, 1/1)."""
    tasks = [ifeval_task(["start_with", "lower"], {"start_with": "done"}),
             ifeval_task(["max_words", "upper"], {"max_words": 3}),
             json_task(["author", "genre"]),
             ifeval_task(["no_letter"], {"no_letter": "z"}, family="system_rule")]
    responses = ["Sure, here it is:\ndone: paris is the capital.", "paris is the capital.",
                 '**{"author": "Ann", "genre": "poetry"}**', "Paris."]
    return tasks, responses


def test_prompt_and_instruction_level_accuracy_by_hand():
    """Prompts fully followed: strict D only (1/4), loose A, C, D (3/4). Instructions: strict 1 of 6, loose
    A's 2 + C's 1 + D's 1 = 4 of 6."""
    tasks, responses = four_tasks()
    s = summarize(tasks, responses, [True, True, False, True])
    assert (s["n"], s["n_instructions"], s["eos_rate"]) == (4, 6, 0.75)
    assert (s["prompt_strict"], s["prompt_loose"]) == (0.25, 0.75)
    assert (s["instruction_strict"], s["instruction_loose"]) == (1 / 6, 4 / 6)
    fams = ["ifeval", "ifeval", "format", "system_rule"]
    assert s["prompt_loose_ci"] == list(bootstrap_ci([1.0, 0.0, 1.0, 1.0], fams, n_boot=2000, seed=0))
    inst_fams = ["ifeval"] * 4 + ["format", "system_rule"]
    assert s["instruction_strict_ci"] == list(bootstrap_ci([0, 0, 0, 0, 0, 1], inst_fams, n_boot=2000, seed=0))
    # per family: ifeval is A and B (prompt loose 1/2, instructions loose 2/4); system_rule is D
    assert list(s["families"]) == ["ifeval", "system_rule", "format"]
    ife = s["families"]["ifeval"]
    assert (ife["n"], ife["prompt_strict"], ife["prompt_loose"], ife["instruction_loose"]) == (2, 0.0, 0.5, 0.5)
    assert s["families"]["system_rule"]["prompt_strict"] == 1.0
    # per kind, pooled across families
    assert {k: (r["n"], r["strict"], r["loose"]) for k, r in s["kinds"].items()} == {
        "json": (1, 0.0, 1.0), "lower": (1, 0.0, 1.0), "max_words": (1, 0.0, 0.0), "no_letter": (1, 1.0, 1.0),
        "start_with": (1, 0.0, 1.0), "upper": (1, 0.0, 0.0)}
    assert [x["loose"] for x in s["samples"]] == [[True, True], [False, False], [True], [True]]
    table = format_table({**s, "split": "test", "seed": 0})
    assert "prompt-level" in table and "instruction-level" in table and "75.0" in table and "start_with" in table


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_reference_follows_every_instruction_strict(split):
    tasks = sample_tasks(600, split, seed=1, families=list(FAMILIES))
    assert {t.family for t in tasks} == set(FAMILIES)
    s = summarize(tasks, [t.reference for t in tasks])
    assert s["prompt_strict"] == s["instruction_strict"] == s["prompt_loose"] == 1.0
    assert s["n_instructions"] > s["n"] and set(s["kinds"]) >= {"max_words", "lower", "json", "bullets", "one_word"}
    assert s["eos_rate"] is None


def test_families_not_counted_are_user_errors():
    with pytest.raises(UserError, match="not 'poem'"):
        summarize(sample_tasks(2, "test", families=["poem"]), ["a", "b"])
    with pytest.raises(UserError, match="did you mean 'ifeval'"):
        eval_ifeval_cli(["--model", "no-such-model", "--family", "ifevl"])


# --- two turns ------------------------------------------------------------------------------------------------


def test_first_turn_and_follow_up_give_the_task_back():
    """The world's split of a multi_turn task: its first turn is the list_n task whose reference (the assistant
    turn it holds) scores 1.0, and the follow-up to that same answer is the task itself."""
    rng = random.Random(0)
    for _ in range(300):
        task = MultiTurn().generate(rng, "test")
        one = first_turn(task)
        assert one.messages == task.messages[:1] and score(one, one.reference).gold == 1.0
        assert follow_up(task, task.messages[1].content) == task
        assert score_turns(task, one.reference, task.reference)["turn2_gold"] == 1.0


def fake_two_turn(monkeypatch, seen: list) -> None:
    """Turn 1 always answers 'Oak, elm.', turn 2 'OAK, ELM.'; every call's prompts go to `seen`."""
    import posttrain.rollout.generate as gen

    def fake_generate(model, tokenizer, prompts, **kw):
        seen.append((prompts, kw))
        return [{"text": "Oak, elm." if len(p) == 1 else "OAK, ELM.", "ids": [0], "stopped": len(p) == 1}
                for p in prompts]

    monkeypatch.setattr(gen, "generate", fake_generate)


def test_two_turn_asks_the_follow_up_after_the_models_own_answer(monkeypatch):
    seen: list = []
    fake_two_turn(monkeypatch, seen)
    r = evaluate_two_turn(None, None, n=40, seed=2)
    tasks = sample_tasks(40, "test", seed=2, families=["multi_turn"], distinct=True)
    (first, kw1), (second, kw2) = seen
    assert kw1["temperature"] == kw2["temperature"] == 0.0
    assert first == [t.messages[:1] for t in tasks]
    assert second == [[t.messages[0], Message("assistant", "Oak, elm."), t.messages[2]] for t in tasks]
    assert all(t.messages[1].content != "Oak, elm." for t in tasks)  # not the reference answer
    assert r["n"] == 40 and (r["turn1_eos_rate"], r["turn2_eos_rate"]) == (1.0, 0.0)
    # turn 2 is scored against the model's own list [oak, elm], stopped=False multiplies by 0.0
    assert r["turn2"] == 0.0 and all(s["previous"] == ["oak", "elm"] for s in r["samples"])


def test_two_turn_scores_by_hand(monkeypatch):
    """'Oak, elm.' then 'OAK, ELM.' (both stopped). Turn 1 (list_n): 0 off the trees category, else
    0.4 + 0.4 * (1 - |2 - n| / n) + 0.2. Turn 2 against [oak, elm]: upper 1.0 (same items, all caps); reverse
    0.4 (same set, not reversed); numbered 0.6 (same items, not numbered); first 0.6 (right item, not only one);
    only_k 0.6 + 0.4 when k == 2."""
    import posttrain.rollout.generate as gen

    monkeypatch.setattr(gen, "generate", lambda model, tok, prompts, **kw: [
        {"text": "Oak, elm." if len(p) == 1 else "OAK, ELM.", "ids": [0], "stopped": True} for p in prompts])
    r = evaluate_two_turn(None, None, n=60, seed=0)
    tasks = sample_tasks(60, "test", seed=0, families=["multi_turn"], distinct=True)
    assert {t.meta["op"] for t in tasks} == {"upper", "reverse", "numbered", "first", "only_k"}
    assert any(t.meta["category"] == "trees" for t in tasks)
    for t, s in zip(tasks, r["samples"]):
        n, op = len(t.meta["previous"]), t.meta["op"]
        turn1 = 0.6 + 0.4 * (1 - abs(2 - n) / n) if t.meta["category"] == "trees" else 0.0
        turn2 = {"upper": 1.0, "reverse": 0.4, "numbered": 0.6, "first": 0.6, "only_k": 1.0 if t.meta["k"] == 2 else 0.6}[op]
        assert s["turn1_gold"] == pytest.approx(turn1) and s["turn2_gold"] == pytest.approx(turn2), (t, s)
    assert r["turn2"] == pytest.approx(sum(s["turn2_gold"] for s in r["samples"]) / 60)
    assert r["ops"]["upper"]["turn2"] == 1.0 and r["ops"]["reverse"]["turn2"] == pytest.approx(0.4)
    lo, hi = r["turn2_ci"]
    assert 0.4 <= lo <= r["turn2"] <= hi <= 1.0


@pytest.fixture(scope="module")
def tiny(model_dir):
    from posttrain.models.load import load_model, load_tokenizer

    return load_model(str(model_dir)), load_tokenizer(str(model_dir))


def test_two_turn_on_the_tiny_model(tiny, monkeypatch):
    """The real generate: turn 2's prompt holds the tiny model's own turn-1 text."""
    import posttrain.rollout.generate as gen

    real, calls = gen.generate, []

    def spy(model, tokenizer, prompts, **kw):
        out = real(model, tokenizer, prompts, **kw)
        calls.append((prompts, out))
        return out

    monkeypatch.setattr(gen, "generate", spy)
    model, tok = tiny
    r = evaluate_two_turn(model, tok, n=3, seed=0, max_new_tokens=6)
    (_, firsts), (second, _) = calls
    assert [p[1] for p in second] == [Message("assistant", o["text"]) for o in firsts]
    assert [s["turn1_response"] for s in r["samples"]] == [o["text"] for o in firsts]
    assert r["n"] == 3 and all(0.0 <= r[k] <= 1.0 for k in ("turn1", "turn2"))
    json.dumps(r)


def run_cli(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    return capsys.readouterr().out


def test_ifeval_cli_prints_json_and_writes_samples(model_dir, tmp_path, capsys):
    out = tmp_path / "ifeval.json"
    r = json.loads(run_cli(capsys, ["eval", "ifeval", "--model", str(model_dir), "--n", "6", "--max-new-tokens", "4",
                                    "--json", "--out", str(out)]))
    assert set(r) == SUMMARY_KEYS and r["n"] == 6 and set(r["families"]) == set(FAMILIES)
    assert all(0.0 <= r[k] <= r[k.replace("strict", "loose")] <= 1.0 for k in HEADLINE if "strict" in k)
    assert len(json.loads(out.read_text())["samples"]) == 6
    table = run_cli(capsys, ["eval", "ifeval", "--model", str(model_dir), "--n", "3", "--max-new-tokens", "2"])
    assert "prompt-level" in table and "instruction-level" in table and "loose" in table


def test_two_turn_cli_prints_json(model_dir, capsys):
    r = json.loads(run_cli(capsys, ["eval", "two-turn", "--model", str(model_dir), "--n", "2", "--max-new-tokens",
                                    "4", "--json"]))
    assert set(r) == TWO_TURN_KEYS and r["n"] == 2
    assert "turn2" in run_cli(capsys, ["eval", "two-turn", "--model", str(model_dir), "--n", "2",
                                       "--max-new-tokens", "2"])


@pytest.mark.parametrize("command", ["ifeval", "two-turn"])
def test_cli_n_below_one_fails_before_loading(tmp_path, capsys, command):
    """The model path does not exist: the one-line error names the flag, so it came before any loading."""
    assert cli_fails(capsys, ["eval", command, "--model", str(tmp_path / "no-model"), "--n", "0"]) == \
        "error: --n: must be >= 1, got 0"
    assert "unknown split" in cli_fails(capsys, ["eval", command, "--model", "x", "--split", "tset"])
    with pytest.raises(UserError, match="--n: must be >= 1"):
        eval_ifeval_cli(["--model", "x", "--n", "-3"])
