"""`posttrain eval two-turn`: an MT-Bench-style two-turn evaluation on the world's `multi_turn` family.
Pure functions (no torch) except `evaluate_two_turn`, which generates.

A `multi_turn` task is "List N CATEGORY", a list, then a follow-up that transforms the list (upper case,
reverse, numbered, the first item, only K of them). Here the model answers the first turn; then the follow-up
is asked with the model's own first answer in the history (not the task's reference list), as MT-Bench asks
its second turn. Both turns are verifiable, and both are scored with the world's verifiers (gold in [0, 1],
with the shared stop/rambling penalty):

- turn 1: the `list_n` verifier (`world.fam_lists.first_turn`: `in_category`, `count`, `no_duplicates`);
- turn 2: the `multi_turn` verifier against the model's own first list (`world.fam_lists.follow_up`: the
  previous items are the items of the model's first answer), so turn 2 measures the transformation of what
  the model said, whether or not that list was right; a first answer with no list items leaves nothing to
  transform, and turn 2 scores 0 (`uses_previous` false).

Both generations are greedy, through `rollout.generate`. The summary: `turn1`, `turn2` (mean gold) with 95%
percentile bootstrap intervals over prompts (`stats.bootstrap_ci`, 2,000 replicates, seed 0; prompts are
distinct), `turn1_eos_rate`, `turn2_eos_rate`, `ops` (per follow-up kind: n, turn1, turn2) and `samples`.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from posttrain.config import check_flags
from posttrain.eval.stats import bootstrap_ci
from posttrain.world import Task, sample_tasks, score
from posttrain.world.fam_lists import first_turn, follow_up

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

FAMILY = "multi_turn"
N_BOOT, BOOT_SEED = 2000, 0


def score_turns(task: Task, first: str, second: str, first_stopped: bool = True, second_stopped: bool = True) -> dict:
    """One task's two turns: `first` scored as the `list_n` task of its first turn, `second` as the follow-up
    to `first` (module docstring). Returns the sample record (op, prompts, responses, golds, checks)."""
    one, two = first_turn(task), follow_up(task, first)
    s1, s2 = score(one, first, first_stopped), score(two, second, second_stopped)
    return {"op": task.meta["op"], "prompt": one.prompt_text(), "turn1_response": first,
            "turn1_stopped": bool(first_stopped), "turn1_gold": s1.gold, "turn1_checks": dict(s1.checks),
            "follow_up": task.messages[-1].content, "previous": two.meta["previous"], "turn2_response": second,
            "turn2_stopped": bool(second_stopped), "turn2_gold": s2.gold, "turn2_checks": dict(s2.checks)}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _ci(values: list[float]) -> list[float] | None:
    return list(bootstrap_ci(values, n_boot=N_BOOT, seed=BOOT_SEED)) if values else None


def summarize(samples: list[dict]) -> dict:
    """Aggregate `score_turns` records (module docstring)."""
    g1, g2 = [s["turn1_gold"] for s in samples], [s["turn2_gold"] for s in samples]
    ops = {}
    for op in dict.fromkeys(s["op"] for s in samples):
        mine = [s for s in samples if s["op"] == op]
        ops[op] = {"n": len(mine), "turn1": _mean([s["turn1_gold"] for s in mine]),
                   "turn2": _mean([s["turn2_gold"] for s in mine])}
    return {"n": len(samples), "turn1": _mean(g1), "turn1_ci": _ci(g1), "turn2": _mean(g2), "turn2_ci": _ci(g2),
            "turn1_eos_rate": _mean([float(s["turn1_stopped"]) for s in samples]),
            "turn2_eos_rate": _mean([float(s["turn2_stopped"]) for s in samples]),
            "ops": dict(sorted(ops.items())), "samples": samples}


def evaluate_two_turn(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    n: int = 300,
    seed: int = 0,
    split: str = "test",
    max_new_tokens: int = 128,
    batch_size: int = 16,
    progress: str = "",
) -> dict:
    """`n` distinct `multi_turn` tasks of `split`: the first turns answered greedily, then the follow-ups with
    each model's own first answer in the history, both scored (`summarize`'s dict plus `split`, `seed`,
    `max_new_tokens`). `seed` picks the prompts only."""
    from posttrain.rollout.generate import generate

    tasks = sample_tasks(n, split=split, seed=seed, families=[FAMILY], distinct=True)
    kw = {"max_new_tokens": max_new_tokens, "temperature": 0.0, "batch_size": batch_size, "seed": seed,
          "progress": progress}
    firsts = generate(model, tokenizer, [first_turn(t).messages for t in tasks], **kw)
    seconds = generate(model, tokenizer, [follow_up(t, o["text"]).messages for t, o in zip(tasks, firsts)], **kw)
    samples = [score_turns(t, a["text"], b["text"], a["stopped"], b["stopped"])
               for t, a, b in zip(tasks, firsts, seconds)]
    summary = summarize(samples)
    return {"n": summary.pop("n"), "split": split, "seed": seed, "max_new_tokens": max_new_tokens, **summary}


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def format_table(result: dict) -> str:
    """Turn 1 and turn 2 mean gold with their 95% intervals and EOS rates, then both per follow-up kind."""
    def ci(c: list[float] | None) -> str:
        return "" if c is None else f"[{c[0]:.3f}, {c[1]:.3f}]"

    lines = [f"two-turn eval (multi_turn)  split {result['split']}  n {result['n']}  seed {result['seed']}",
             f"  {'':<10}  {'gold':>6}  {'95% interval':<16}  {'EOS rate':>8}"]
    for turn in ("turn1", "turn2"):
        lines.append(f"  {turn:<10}  {_fmt(result[turn]):>6}  {ci(result[turn + '_ci']):<16}  "
                     f"{_fmt(result[turn + '_eos_rate']):>8}")
    lines.append(f"  {'follow-up':<10}  {'n':>4}  {'turn1':>6}  {'turn2':>6}")
    lines += [f"  {op:<10}  {r['n']:>4}  {_fmt(r['turn1']):>6}  {_fmt(r['turn2']):>6}" for op, r in result["ops"].items()]
    return "\n".join(lines)


def eval_two_turn_cli(argv: list[str]) -> int:
    """`posttrain eval two-turn --model PATH [--n N] [--seed S] [--split test] [--json] [--out FILE]`. Bad
    options fail with a one-line `UserError` before the model is loaded."""

    p = argparse.ArgumentParser(prog="posttrain eval two-turn", description=(
        "Two-turn (MT-Bench-style) evaluation on the world's multi_turn family: the follow-up is asked with the "
        "model's own first answer in the history; both turns are scored by the world's verifiers."))
    p.add_argument("--model", required=True, help="model folder (or hub id) with its tokenizer")
    p.add_argument("--n", type=int, default=300, help="distinct multi_turn prompts")
    p.add_argument("--seed", type=int, default=0, help="which prompts are drawn")
    p.add_argument("--split", default="test", help="test (held out, default) or train")
    p.add_argument("--json", action="store_true", help="print the result (without samples) as JSON")
    p.add_argument("--out", help="write the full result (with every sample) as JSON here")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args(argv)
    check_flags(args, n={"ge": 1}, max_new_tokens={"ge": 1}, batch_size={"ge": 1})
    sample_tasks(0, split=args.split, families=[FAMILY])  # a bad split fails before loading

    from posttrain.eval.ifeval import load_for_eval, print_result
    from posttrain.io import check_writable

    if args.out:
        check_writable(args.out, "--out")
    model, tok = load_for_eval(args.model)
    result = {"model": args.model, **evaluate_two_turn(model, tok, n=args.n, seed=args.seed, split=args.split,
                                                       max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)}
    return print_result(args, result, format_table)
