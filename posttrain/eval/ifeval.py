"""`posttrain eval ifeval`: IFEval-style instruction-following accuracy (Zhou et al. 2023) on the world's
verifiable instructions. Pure functions (no torch) except `evaluate_ifeval`, which generates.

Families counted (`FAMILIES`), each instruction read from the named sub-checks of its verifier's `Score`:

- `ifeval`: one or two constraints in the user turn; an instruction per constraint (`max_words`, `start_with`,
  `end_with`, `no_letter`, `lower`, `upper`), followed when its check is 1.0 (within the word limit: the
  partial credit the gold score gives past it counts as not followed);
- `system_rule`: the same constraints, set by a system message (the same instruction kinds);
- `format`: one instruction per task, named by its kind: `one_word` (check `one_word`), `json` (`parses`,
  `has_keys` 1.0 and `no_extra_keys`: a JSON object with exactly the asked keys), `bullets` (`bullet_count`
  1.0 and `only_bullets`: exactly N bullet lines and nothing else).

Whether the question was answered (`answered`, format's `correct`) is content, not an instruction, and is
not counted here (the world's gold score counts it). As in IFEval, an empty (all-space) text follows nothing.

- **strict**: the instruction's checks on the response as it is;
- **loose** (IFEval's definition): followed by any of IFEval's 8 variants of the response (`variants`): as it
  is, with its first line removed, its last line removed, both removed, and each of those four with every `*`
  removed (markdown emphasis). Each instruction is checked on the variants on its own, so two instructions of
  one prompt may be rescued by different variants, as in IFEval. The world's word-based checks skip `*`, so
  removing it matters for `json` and `bullets`; dropping a first line ("Sure, here it is:") matters for most.
- **prompt-level accuracy**: the fraction of prompts whose every instruction is followed;
- **instruction-level accuracy**: followed instructions over all instructions (pooled, as IFEval does).

Intervals: 95% percentile bootstrap (`stats.bootstrap_ci`, 2,000 replicates, seed 0), stratified by family
(the sample is balanced by design): prompt-level over prompts, instruction-level over instructions (each
instruction a unit; the one or two instructions of a prompt are resampled independently). Prompts are
distinct within a family (`sample_tasks(..., distinct=True)`), responses greedy.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from posttrain.config import check_flags
from posttrain.errors import UserError, did_you_mean
from posttrain.eval.stats import bootstrap_ci
from posttrain.world import Task, sample_tasks, score

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

FAMILIES = ("ifeval", "system_rule", "format")
# format kind -> the checks that must all be full for its one instruction
FORMAT_CHECKS = {"one_word": ("one_word",), "json": ("parses", "has_keys", "no_extra_keys"),
                 "bullets": ("bullet_count", "only_bullets")}
N_BOOT, BOOT_SEED = 2000, 0
HEADLINE = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")


def variants(response: str) -> list[str]:
    """IFEval's 8 variants of a response, in its order: as is, `*` removed, first line removed, last line
    removed, both removed, then the last three with `*` removed (a removed line's rest is stripped)."""
    rows = response.split("\n")
    first, last, both = ("\n".join(part).strip() for part in (rows[1:], rows[:-1], rows[1:-1]))
    return [response, response.replace("*", ""), first, last, both,
            first.replace("*", ""), last.replace("*", ""), both.replace("*", "")]


def instructions(task: Task) -> dict[str, tuple[str, ...]]:
    """The task's instructions: kind -> the `Score` checks that must all be full (1.0 or True) for it to be
    followed; empty for a family not counted (module docstring)."""
    if task.family in ("ifeval", "system_rule"):
        return {name: (name,) for name in task.meta["constraints"]}
    if task.family == "format":
        return {task.meta["kind"]: FORMAT_CHECKS[task.meta["kind"]]}
    return {}


def followed(task: Task, response: str) -> dict[str, bool]:
    """Strict: for each instruction of `task`, whether `response` as it is follows it."""
    wanted = instructions(task)
    if not response.strip():
        return dict.fromkeys(wanted, False)
    checks = score(task, response).checks
    return {kind: all(float(checks[c]) == 1.0 for c in names) for kind, names in wanted.items()}


def follow(task: Task, response: str) -> dict:
    """{"instructions": kinds, "strict": [bool], "loose": [bool]}, aligned: each instruction of `task` checked
    on `response` as it is (strict) and on any of its `variants` (loose)."""
    strict = followed(task, response)
    loose = dict(strict)
    for text in variants(response)[1:]:
        if all(loose.values()):
            break
        loose = {k: v or ok for (k, v), ok in zip(loose.items(), followed(task, text).values())}
    return {"instructions": list(strict), "strict": list(strict.values()), "loose": list(loose.values())}


def check_families(names: list[str]) -> list[str]:
    """`names` if every one is a counted family (`FAMILIES`), else a `UserError` naming the first other."""
    for name in names:
        if name not in FAMILIES:
            raise UserError(f"ifeval counts the families {', '.join(FAMILIES)}, not '{name}'"
                            f"{did_you_mean(name, FAMILIES)}")
    return names


def _ci(values: list[float], strata: list[str]) -> list[float] | None:
    return list(bootstrap_ci(values, strata, n_boot=N_BOOT, seed=BOOT_SEED)) if values else None


def _accuracy(rows: list[tuple[str, dict]]) -> dict:
    """The four accuracies and their intervals over (family, `follow` result) rows."""
    out: dict = {"n": len(rows), "n_instructions": sum(len(r["instructions"]) for _, r in rows)}
    for mode in ("strict", "loose"):
        prompt = [float(all(r[mode])) for _, r in rows]
        inst = [(f, float(x)) for f, r in rows for x in r[mode]]
        out[f"prompt_{mode}"] = sum(prompt) / len(prompt) if prompt else None
        out[f"instruction_{mode}"] = sum(x for _, x in inst) / len(inst) if inst else None
        out[f"prompt_{mode}_ci"] = _ci(prompt, [f for f, _ in rows])
        out[f"instruction_{mode}_ci"] = _ci([x for _, x in inst], [f for f, _ in inst])
    return out


def summarize(tasks: list[Task], responses: list[str], stopped: list[bool] | None = None) -> dict:
    """IFEval accuracies of `responses` (aligned with `tasks`; tasks of families not counted are a
    `UserError`): `_accuracy`'s keys overall (`n` prompts, `n_instructions`, `prompt_strict`, `prompt_loose`,
    `instruction_strict`, `instruction_loose`, each with `_ci`), `families` ({family: the same}), `kinds`
    ({instruction kind: {"n", "strict", "loose", "strict_ci", "loose_ci"}}, kinds pooled across families),
    `eos_rate` (None without `stopped`) and `samples` (family, prompt, response, stopped, instructions,
    strict, loose)."""
    if len(tasks) != len(responses) or (stopped is not None and len(stopped) != len(tasks)):
        raise ValueError(f"summarize: {len(tasks)} tasks, {len(responses)} responses")
    check_families(sorted({t.family for t in tasks}))
    rows = [(t.family, follow(t, r)) for t, r in zip(tasks, responses)]
    units = [(kind, family, float(s), float(lo)) for family, r in rows
             for kind, s, lo in zip(r["instructions"], r["strict"], r["loose"])]
    kinds = {}
    for kind in sorted({u[0] for u in units}):
        mine = [u for u in units if u[0] == kind]
        strata, strict, loose = [u[1] for u in mine], [u[2] for u in mine], [u[3] for u in mine]
        kinds[kind] = {"n": len(mine), "strict": sum(strict) / len(mine), "loose": sum(loose) / len(mine),
                       "strict_ci": _ci(strict, strata), "loose_ci": _ci(loose, strata)}
    present = [f for f in FAMILIES if any(f == family for family, _ in rows)]
    stops = [True] * len(tasks) if stopped is None else [bool(s) for s in stopped]
    return {
        **_accuracy(rows),
        "eos_rate": sum(stops) / len(stops) if stopped is not None and stops else None,
        "families": {f: _accuracy([row for row in rows if row[0] == f]) for f in present},
        "kinds": kinds,
        "samples": [{"family": t.family, "prompt": t.prompt_text(), "response": resp, "stopped": s, **r}
                    for t, resp, s, (_, r) in zip(tasks, responses, stops, rows)],
    }


def evaluate_ifeval(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    n: int = 300,
    seed: int = 0,
    split: str = "test",
    families: list[str] | None = None,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    progress: str = "",
) -> dict:
    """Sample `n` distinct tasks of `split` balanced across `families` (default `FAMILIES`; a family not
    counted is a `UserError`), answer them greedily through `rollout.generate`, and summarize (`summarize`'s
    dict plus `split`, `seed`, `max_new_tokens`, `n_requested`). `seed` picks the prompts only."""
    from posttrain.rollout.generate import generate

    names = check_families(list(families or FAMILIES))
    tasks = sample_tasks(n, split=split, seed=seed, families=names, distinct=True)
    outputs = generate(model, tokenizer, [t.messages for t in tasks], max_new_tokens=max_new_tokens,
                       temperature=0.0, batch_size=batch_size, seed=seed, progress=progress)
    summary = summarize(tasks, [o["text"] for o in outputs], [o["stopped"] for o in outputs])
    settings = {"split": split, "seed": seed, "max_new_tokens": max_new_tokens, "n_requested": n}
    return {"n": summary.pop("n"), **settings, **summary}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _pct_ci(ci: list[float] | None) -> str:
    return "" if ci is None else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def format_table(result: dict) -> str:
    """Prompt- and instruction-level accuracy, strict and loose, with 95% intervals (percent); then each
    family's four numbers and each instruction kind's strict and loose accuracy."""
    lines = [f"ifeval  split {result['split']}  n {result['n']} prompts, {result['n_instructions']} instructions"
             f"  seed {result['seed']}  (accuracy in %)",
             f"  {'':<20}  {'strict':>6}  {'95% interval':<14}  {'loose':>6}  {'95% interval':<14}"]
    for level in ("prompt", "instruction"):
        s, lo = f"{level}_strict", f"{level}_loose"
        lines.append(f"  {level + '-level':<20}  {_pct(result[s]):>6}  {_pct_ci(result[s + '_ci']):<14}  "
                     f"{_pct(result[lo]):>6}  {_pct_ci(result[lo + '_ci']):<14}")
    lines.append(f"  {'family':<20}  {'n':>4}  {'prompt strict':>13}  {'prompt loose':>12}  "
                 f"{'instr strict':>12}  {'instr loose':>11}")
    lines += [f"  {f:<20}  {r['n']:>4}  {_pct(r['prompt_strict']):>13}  {_pct(r['prompt_loose']):>12}  "
              f"{_pct(r['instruction_strict']):>12}  {_pct(r['instruction_loose']):>11}"
              for f, r in result["families"].items()]
    lines.append(f"  {'instruction':<20}  {'n':>4}  {'strict':>6}  {'95% interval':<14}  {'loose':>6}  95% interval")
    lines += [f"  {k:<20}  {r['n']:>4}  {_pct(r['strict']):>6}  {_pct_ci(r['strict_ci']):<14}  "
              f"{_pct(r['loose']):>6}  {_pct_ci(r['loose_ci'])}" for k, r in result["kinds"].items()]
    return "\n".join(line.rstrip() for line in lines)


def eval_ifeval_cli(argv: list[str]) -> int:
    """`posttrain eval ifeval --model PATH [--n N] [--seed S] [--split test] [--family F] [--json] [--out FILE]`.
    Bad options (a number below 1, an unknown split or family, an `--out` that cannot be written) fail with a
    one-line `UserError` before the model is loaded."""

    p = argparse.ArgumentParser(prog="posttrain eval ifeval", description=(
        "IFEval-style accuracy (prompt- and instruction-level, strict and loose as IFEval defines them) on the "
        "world's verifiable instructions: families " + ", ".join(FAMILIES) + "."))
    p.add_argument("--model", required=True, help="model folder (or hub id) with its tokenizer")
    p.add_argument("--n", type=int, default=300, help="prompts, balanced across the families, distinct in each")
    p.add_argument("--seed", type=int, default=0, help="which prompts are drawn")
    p.add_argument("--split", default="test", help="test (held out, default) or train")
    p.add_argument("--family", action="append", dest="families",
                   help="only this family (repeatable): " + ", ".join(FAMILIES))
    p.add_argument("--json", action="store_true", help="print the result (without samples) as JSON")
    p.add_argument("--out", help="write the full result (with every sample) as JSON here")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args(argv)
    check_flags(args, n={"ge": 1}, max_new_tokens={"ge": 1}, batch_size={"ge": 1})
    sample_tasks(0, split=args.split, families=check_families(args.families or list(FAMILIES)))  # before loading

    from posttrain.io import check_writable

    if args.out:
        check_writable(args.out, "--out")
    model, tok = load_for_eval(args.model)
    result = {"model": args.model, **evaluate_ifeval(model, tok, n=args.n, seed=args.seed, split=args.split,
                                                     families=args.families, max_new_tokens=args.max_new_tokens,
                                                     batch_size=args.batch_size)}
    return print_result(args, result, format_table)


def print_result(args, result: dict, table) -> int:
    """What `eval ifeval` and `eval two-turn` print: the result without its samples as JSON (`--json`) or its
    table, then the full result written to `--out`."""
    import json

    from posttrain.io import atomic_write_json

    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    else:
        print(table(result))
    if args.out:
        atomic_write_json(args.out, result)
        if not args.json:
            print(f"wrote {args.out}")
    return 0


def load_for_eval(path: str) -> tuple:
    """(model, tokenizer) from `path`, the model on the GPU when there is one."""
    import torch

    from posttrain.models.load import load_model, load_tokenizer

    tok = load_tokenizer(path)
    model = load_model(path)
    return (model.to("cuda") if torch.cuda.is_available() else model), tok
