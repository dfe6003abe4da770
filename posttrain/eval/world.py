"""`posttrain eval world`: the gold score of a model on held-out tasks of the embedded assistant world.

Tasks come from `world.sample_tasks` (the test split by default, balanced across families), responses
are greedy, and every response is scored by its family's verifier (`world.score`), which applies the
shared stop/rambling penalty. A chat model is prompted through its chat template; with `raw` the prompt
is plain text (`raw_prompt`: `User: ...` lines, then `Assistant:`), the way a base model is prompted.

The summary (`summarize`) is a JSON-able dict:

- `gold`: mean gold score; `families`: mean gold per family present (`family_counts`: how many tasks);
- `eos_rate`: fraction of responses that ended with a stop token rather than at the token limit;
- `harmful_refusal_rate`: among `harmful` tasks, the fraction whose check `refused` is true;
- `over_refusal_rate`: among `benign_lookalike` tasks, the fraction refused (check `not_refused` false);
  either rate is `None` when no task of its family was sampled;
- `mean_length`: mean response length in tokens;
- `samples`: every task's {family, prompt, response, stopped, gold, checks}.

`summarize` and `raw_prompt` import nothing heavy; torch and transformers load only to generate.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from posttrain.world import FAMILIES, Score, Task, sample_tasks, score

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

RATE_KEYS = ("gold", "eos_rate", "harmful_refusal_rate", "over_refusal_rate", "mean_length")


def raw_prompt(task: Task) -> str:
    """The task as a plain-text transcript for a base model: one `Role: content` line per turn, then
    `Assistant:` for the model to continue."""
    lines = [f"{m.role.capitalize()}: {m.content}" for m in task.messages]
    return "\n".join([*lines, "Assistant:"])


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(tasks: list[Task], outputs: list[dict], scores: list[Score], prompts: list[str] | None = None) -> dict:
    """Aggregate one evaluation (see module docstring). `outputs` are `generate` results (`text`, `ids`,
    `stopped`), `scores` the world's scores, all aligned with `tasks`; `prompts` are the prompt texts
    to record in `samples` (default: `task.prompt_text()`)."""
    if not len(tasks) == len(outputs) == len(scores):
        raise ValueError(f"summarize: {len(tasks)} tasks, {len(outputs)} outputs, {len(scores)} scores")
    prompts = [t.prompt_text() for t in tasks] if prompts is None else prompts
    by_family: dict[str, list[float]] = {}
    for t, s in zip(tasks, scores):
        by_family.setdefault(t.family, []).append(s.gold)
    order = [f for f in FAMILIES if f in by_family] + sorted(f for f in by_family if f not in FAMILIES)
    harmful = [bool(s.checks["refused"]) for t, s in zip(tasks, scores) if t.family == "harmful"]
    lookalike = [not s.checks["not_refused"] for t, s in zip(tasks, scores) if t.family == "benign_lookalike"]
    return {
        "n": len(tasks),
        "gold": _mean([s.gold for s in scores]) or 0.0,
        "eos_rate": _mean([float(o["stopped"]) for o in outputs]) or 0.0,
        "harmful_refusal_rate": _mean([float(r) for r in harmful]),
        "over_refusal_rate": _mean([float(r) for r in lookalike]),
        "mean_length": _mean([float(len(o["ids"])) for o in outputs]) or 0.0,
        "families": {f: _mean(by_family[f]) for f in order},
        "family_counts": {f: len(by_family[f]) for f in order},
        "samples": [
            {"family": t.family, "prompt": p, "response": o["text"], "stopped": bool(o["stopped"]),
             "gold": s.gold, "checks": dict(s.checks)}
            for t, p, o, s in zip(tasks, prompts, outputs, scores)
        ],
    }


def evaluate_world(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    n: int = 300,
    seed: int = 0,
    split: str = "test",
    raw: bool = False,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    families: list[str] | None = None,
    progress: str = "",
) -> dict:
    """Sample `n` tasks of `split`, answer them greedily, score them: `summarize`'s dict plus the settings
    (`split`, `seed`, `raw`, `max_new_tokens`). Unknown split or family: the world's `UserError`."""
    from posttrain.rollout.generate import generate

    tasks = sample_tasks(n, split=split, seed=seed, families=families)
    prompts: list = [raw_prompt(t) for t in tasks] if raw else [t.messages for t in tasks]
    outputs = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.0,
                       batch_size=batch_size, seed=seed, raw=raw, progress=progress)
    scores = [score(t, o["text"], o["stopped"]) for t, o in zip(tasks, outputs)]
    shown = prompts if raw else None
    summary = summarize(tasks, outputs, scores, prompts=shown)
    settings = {"split": split, "seed": seed, "raw": raw, "max_new_tokens": max_new_tokens}
    return {"n": summary.pop("n"), **settings, **summary}


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_table(result: dict) -> str:
    """The summary as a small text table: headline rates, then gold per family."""
    lines = [
        f"world eval  split {result['split']}  n {result['n']}  seed {result['seed']}  raw {result['raw']}",
        f"  gold                  {_fmt(result['gold'])}",
        f"  eos_rate              {_fmt(result['eos_rate'])}",
        f"  harmful_refusal_rate  {_fmt(result['harmful_refusal_rate'])}   (higher is better)",
        f"  over_refusal_rate     {_fmt(result['over_refusal_rate'])}   (lower is better)",
        f"  mean_length           {_fmt(result['mean_length'], 1)} tokens",
        f"  {'family':<20}  {'gold':>6}  {'n':>4}",
    ]
    counts = result.get("family_counts", {})
    lines += [f"  {f:<20}  {_fmt(g):>6}  {counts.get(f, ''):>4}" for f, g in result["families"].items()]
    return "\n".join(lines)


def eval_world_cli(argv: list[str]) -> int:
    """`posttrain eval world --model PATH [options]` (`argv`: the arguments after `world`)."""
    p = argparse.ArgumentParser(prog="posttrain eval world",
                                description="Gold score on held-out tasks of the embedded assistant world.")
    p.add_argument("--model", required=True, help="model folder (or hub id) with its tokenizer")
    p.add_argument("--n", type=int, default=300, help="tasks, balanced across families")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="test", help="test (held out, default) or train")
    p.add_argument("--family", action="append", dest="families", help="only this family (repeatable)")
    p.add_argument("--raw", action="store_true", help="plain-text prompts, without the chat template (base models)")
    p.add_argument("--out", help="write the full result (with every sample) as JSON here")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args(argv)
    sample_tasks(0, split=args.split, families=args.families)  # a bad split or family fails before loading

    import torch

    from posttrain.io import atomic_write_json
    from posttrain.models.load import load_model, load_tokenizer

    tok = load_tokenizer(args.model)
    model = load_model(args.model)
    if torch.cuda.is_available():
        model = model.to("cuda")
    result = evaluate_world(model, tok, n=args.n, seed=args.seed, split=args.split, raw=args.raw,
                            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, families=args.families)
    result = {"model": args.model, **result}
    print(format_table(result))
    if args.out:
        atomic_write_json(args.out, result)
        print(f"wrote {args.out}")
    return 0
