"""`posttrain eval world`: the gold score of a model on held-out tasks of the embedded assistant world.

Tasks come from `world.sample_tasks(..., distinct=True)` (the test split by default, balanced across
families, no prompt twice within a family; a family whose pool is smaller than its share is evaluated
whole), responses are greedy, and every response is scored by its family's verifier (`world.score`), which
applies the shared stop/rambling penalty. A chat model is prompted through its chat template; with `raw`
the prompt is plain text (`raw_prompt`: `User: ...` lines, then `Assistant:`), the way a base model is
prompted.

The summary (`summarize`) is a JSON-able dict:

- `gold`: mean gold score; `families`: mean gold per family present (`family_counts`: how many tasks,
  `family_distinct`: how many distinct prompts);
- `eos_rate`: fraction of responses that ended with a stop token rather than at the token limit;
- `harmful_refusal_rate`: among `harmful` tasks, the fraction whose check `refused` is true;
- `over_refusal_rate`: among `benign_lookalike` tasks, the fraction refused (check `not_refused` false);
  either rate is `None` when no task of its family was sampled;
- `mean_length`: mean response length in tokens;
- `gold_ci`, `families_ci` ({family: [lo, hi]}), `harmful_refusal_ci`, `over_refusal_ci`: 95% percentile
  bootstrap intervals (`stats.bootstrap_ci`, 2,000 replicates, seed 0) over distinct prompts: a prompt
  drawn twice counts once, with its mean. `gold_ci` resamples within each family, keeping the family
  counts (the sample is balanced by design); it is `None` (and so are the rates' intervals) without tasks;
- `samples`: every task's {family, prompt, response, stopped, gold, checks}; when the recorded prompt is
  not `task.prompt_text()` (raw mode) a sample also has `prompt_text`, which `compare` matches on.

`METRICS` is the one list of headline metrics (key, label, digits, direction) that tables print.
`compare(a, b)` gives b - a on the same prompts with paired bootstrap intervals.

`summarize`, `compare` and `raw_prompt` import nothing heavy (numpy); torch and transformers load only to
generate.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from posttrain.config import check_flags
from posttrain.errors import UserError
from posttrain.eval.stats import bootstrap_ci, paired_bootstrap
from posttrain.world import FAMILIES, Score, Task, sample_tasks, score

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

N_BOOT, BOOT_SEED = 2000, 0


@dataclass(frozen=True)
class Metric:
    """A headline metric of the summary."""

    key: str  # key in the summary dict
    label: str  # short column/row label
    digits: int  # decimals when printed
    better: str  # "higher", "lower" or "" (no direction)
    ci: str = ""  # key of its [lo, hi] interval in the summary, if it has one


METRICS: tuple[Metric, ...] = (
    Metric("gold", "gold", 3, "higher", "gold_ci"),
    Metric("eos_rate", "EOS rate", 3, "higher"),
    Metric("harmful_refusal_rate", "harmful refused", 3, "higher", "harmful_refusal_ci"),
    Metric("over_refusal_rate", "over-refusal", 3, "lower", "over_refusal_ci"),
    Metric("mean_length", "mean length", 1, ""),
)
RATE_KEYS = tuple(m.key for m in METRICS)


def raw_prompt(task: Task) -> str:
    """The task as a plain-text transcript for a base model: one `Role: content` line per turn, then
    `Assistant:` for the model to continue."""
    lines = [f"{m.role.capitalize()}: {m.content}" for m in task.messages]
    return "\n".join([*lines, "Assistant:"])


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _per_prompt(keys: list[tuple[str, str]], values: list[float]) -> tuple[list[str], list[float]]:
    """Each distinct (family, prompt) of `keys` once, with the mean of its `values`: (families, means)."""
    groups: dict[tuple[str, str], list[float]] = {}
    for key, value in zip(keys, values):
        groups.setdefault(key, []).append(value)
    return [family for family, _ in groups], [sum(v) / len(v) for v in groups.values()]


def _ci(values: list[float], strata: list[str] | None = None) -> list[float] | None:
    return list(bootstrap_ci(values, strata, n_boot=N_BOOT, seed=BOOT_SEED)) if values else None


def _rate_ci(keys: list[tuple[str, str]], tasks: list[Task], flags: list[bool], family: str) -> list[float] | None:
    chosen = [(k, float(f)) for k, t, f in zip(keys, tasks, flags) if t.family == family]
    return _ci(_per_prompt([k for k, _ in chosen], [f for _, f in chosen])[1])


def summarize(tasks: list[Task], outputs: list[dict], scores: list[Score], prompts: list[str] | None = None) -> dict:
    """Aggregate one evaluation (see module docstring). `outputs` are `generate` results (`text`, `ids`,
    `stopped`), `scores` the world's scores, all aligned with `tasks`; `prompts` are the prompt texts
    to record in `samples` (default: `task.prompt_text()`)."""
    if not len(tasks) == len(outputs) == len(scores):
        raise ValueError(f"summarize: {len(tasks)} tasks, {len(outputs)} outputs, {len(scores)} scores")
    texts = [t.prompt_text() for t in tasks]
    prompts = texts if prompts is None else prompts
    by_family: dict[str, list[float]] = {}
    for t, s in zip(tasks, scores):
        by_family.setdefault(t.family, []).append(s.gold)
    order = [f for f in FAMILIES if f in by_family] + sorted(f for f in by_family if f not in FAMILIES)
    keys = [(t.family, text) for t, text in zip(tasks, texts)]
    unit_families, unit_golds = _per_prompt(keys, [s.gold for s in scores])
    refused = [t.family == "harmful" and bool(s.checks["refused"]) for t, s in zip(tasks, scores)]
    over = [t.family == "benign_lookalike" and not s.checks["not_refused"] for t, s in zip(tasks, scores)]
    harmful = [r for t, r in zip(tasks, refused) if t.family == "harmful"]
    lookalike = [r for t, r in zip(tasks, over) if t.family == "benign_lookalike"]
    return {
        "n": len(tasks),
        "gold": _mean([s.gold for s in scores]) or 0.0,
        "eos_rate": _mean([float(o["stopped"]) for o in outputs]) or 0.0,
        "harmful_refusal_rate": _mean([float(r) for r in harmful]),
        "over_refusal_rate": _mean([float(r) for r in lookalike]),
        "mean_length": _mean([float(len(o["ids"])) for o in outputs]) or 0.0,
        "families": {f: _mean(by_family[f]) for f in order},
        "family_counts": {f: len(by_family[f]) for f in order},
        "family_distinct": {f: unit_families.count(f) for f in order},
        "gold_ci": _ci(unit_golds, unit_families),
        "families_ci": {f: _ci([g for u, g in zip(unit_families, unit_golds) if u == f]) for f in order},
        "harmful_refusal_ci": _rate_ci(keys, tasks, refused, "harmful"),
        "over_refusal_ci": _rate_ci(keys, tasks, over, "benign_lookalike"),
        "samples": [
            {"family": t.family, "prompt": p, "response": o["text"], "stopped": bool(o["stopped"]),
             "gold": s.gold, "checks": dict(s.checks), **({} if p == text else {"prompt_text": text})}
            for t, p, text, o, s in zip(tasks, prompts, texts, outputs, scores)
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
    distinct: bool = True,
) -> dict:
    """Sample `n` tasks of `split` (distinct prompts within each family unless `distinct` is false, so a
    small family gives its whole pool and the result's `n` can be below `n`), answer them greedily, score
    them: `summarize`'s dict plus the settings (`split`, `seed`, `raw`, `max_new_tokens`, `distinct`,
    `n_requested`). `seed` picks the prompts only. Unknown split or family: the world's `UserError`."""
    from posttrain.rollout.generate import generate

    tasks = sample_tasks(n, split=split, seed=seed, families=families, distinct=distinct)
    prompts: list = [raw_prompt(t) for t in tasks] if raw else [t.messages for t in tasks]
    outputs = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.0,
                       batch_size=batch_size, seed=seed, raw=raw, progress=progress)
    scores = [score(t, o["text"], o["stopped"]) for t, o in zip(tasks, outputs)]
    shown = prompts if raw else None
    summary = summarize(tasks, outputs, scores, prompts=shown)
    settings = {"split": split, "seed": seed, "raw": raw, "max_new_tokens": max_new_tokens, "distinct": distinct,
                "n_requested": n}
    return {"n": summary.pop("n"), **settings, **summary}


def _prompt_golds(result: dict) -> dict[tuple[str, str], float]:
    groups: dict[tuple[str, str], list[float]] = {}
    for s in result["samples"]:
        groups.setdefault((s["family"], s.get("prompt_text", s["prompt"])), []).append(s["gold"])
    return {key: sum(v) / len(v) for key, v in groups.items()}


def compare(a: dict, b: dict, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> dict:
    """b minus a, for two `evaluate_world` results on the same prompts: {"n", "gold_a", "gold_b", "diff",
    "lo", "hi", "families": {family: the same keys}}. `diff` is the difference of mean gold, [lo, hi] its
    paired bootstrap 95% interval (`stats.paired_bootstrap`): overall stratified by family, per family over
    its prompts. Samples are matched by (family, prompt), the chat form of the prompt for a raw result, so
    a base model prompted raw compares with a chat model; a prompt evaluated twice counts once, with its
    mean. Different prompt sets are a `UserError` naming how many differ and one example."""
    ga, gb = _prompt_golds(a), _prompt_golds(b)
    if ga.keys() != gb.keys():
        only_a, only_b = sorted(ga.keys() - gb.keys()), sorted(gb.keys() - ga.keys())
        family, prompt = (only_a or only_b)[0]
        raise UserError(f"compare: the results are not on the same prompts ({len(only_a)} only in the first, "
                        f"{len(only_b)} only in the second, e.g. {family}: {prompt[:60]!r}); "
                        f"evaluate both with the same --n, --seed, --split and --family")
    keys = sorted(ga, key=lambda k: (list(FAMILIES).index(k[0]) if k[0] in FAMILIES else len(FAMILIES), k))
    strata = [family for family, _ in keys]

    def paired(chosen: list[tuple[str, str]], stratify: bool) -> dict:
        xa, xb = [ga[k] for k in chosen], [gb[k] for k in chosen]
        test = paired_bootstrap(xa, xb, [k[0] for k in chosen] if stratify else None, n_boot=n_boot, seed=seed)
        return {"n": len(chosen), "gold_a": sum(xa) / len(xa), "gold_b": sum(xb) / len(xb), **test}

    if not keys:
        raise UserError("compare: the results have no samples")
    families = {f: paired([k for k in keys if k[0] == f], False) for f in dict.fromkeys(strata)}
    return {**paired(keys, True), "families": families}


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _fmt_ci(ci: list[float] | None, digits: int = 3) -> str:
    return "" if ci is None else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def format_table(result: dict) -> str:
    """The summary as a small text table: the `METRICS` (with their 95% intervals), then gold per family
    with its interval, the number of tasks and of distinct prompts."""
    lines = [f"world eval  split {result['split']}  n {result['n']}  seed {result['seed']}  raw {result['raw']}"]
    for m in METRICS:
        ci = _fmt_ci(result.get(m.ci), m.digits) if m.ci else ""
        better = f"({m.better} is better)" if m.better else ""
        lines.append(f"  {m.label:<16}  {_fmt(result[m.key], m.digits):>6}  {ci:<16}  {better}".rstrip())
    lines.append(f"  {'family':<20}  {'gold':>6}  {'95% interval':<16}  {'n':>4}  {'distinct':>8}")
    counts, distinct = result.get("family_counts", {}), result.get("family_distinct", {})
    cis = result.get("families_ci", {})
    lines += [f"  {f:<20}  {_fmt(g):>6}  {_fmt_ci(cis.get(f)):<16}  {counts.get(f, ''):>4}  {distinct.get(f, ''):>8}"
              for f, g in result["families"].items()]
    return "\n".join(lines)


def format_compare(c: dict, names: tuple[str, str] = ("a", "b")) -> str:
    """`compare`'s result as a text table: gold of each, the difference and its paired 95% interval."""
    a, b = names
    head = f"  {'':<20}  {'n':>4}  {a:>8}  {b:>8}  {b + ' - ' + a:>9}  95% interval"
    rows = [("all (by family)", c), *c["families"].items()]
    return "\n".join([head] + [f"  {name:<20}  {r['n']:>4}  {r['gold_a']:>8.3f}  {r['gold_b']:>8.3f}  "
                               f"{r['diff']:>+9.3f}  [{r['lo']:+.3f}, {r['hi']:+.3f}]" for name, r in rows])


def eval_compare_cli(argv: list[str]) -> int:
    """`posttrain eval compare A.json B.json [--json]`: B minus A on the same prompts (two `eval world --out`
    results), overall and per family, with paired bootstrap 95% intervals."""
    import json

    from posttrain.data.loading import read_json_file

    p = argparse.ArgumentParser(prog="posttrain eval compare",
                                description="Paired difference of two `eval world --out` results on the same prompts.")
    p.add_argument("a", help="the first result (the baseline)")
    p.add_argument("b", help="the second result")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    args = p.parse_args(argv)
    a, b = read_json_file(args.a), read_json_file(args.b)
    for path, r in ((args.a, a), (args.b, b)):
        if not isinstance(r, dict) or "samples" not in r:
            raise UserError(f"{path}: not an `eval world --out` result (no 'samples')")
    c = compare(a, b)
    if args.json:
        print(json.dumps(c, indent=2))
    else:
        print(f"{args.b} minus {args.a}: paired bootstrap over {c['n']} prompts")
        print(format_compare(c, ("a", "b")))
    return 0


def eval_world_cli(argv: list[str]) -> int:
    """`posttrain eval world --model PATH [options]` (`argv`: the arguments after `world`). Bad options
    (a number below 1, an unknown split or family, an `--out` that cannot be written) fail with a one-line
    `UserError` before the model is loaded."""
    p = argparse.ArgumentParser(prog="posttrain eval world",
                                description="Gold score on held-out tasks of the embedded assistant world.")
    p.add_argument("--model", required=True, help="model folder (or hub id) with its tokenizer")
    p.add_argument("--n", type=int, default=300,
                   help="tasks, balanced across families, no prompt twice in a family (a family with fewer "
                        "distinct prompts than its share is evaluated whole)")
    p.add_argument("--seed", type=int, default=0,
                   help="the evaluation's own seed: which prompts are drawn (separate from any training seed)")
    p.add_argument("--split", default="test", help="test (held out, default) or train")
    p.add_argument("--family", action="append", dest="families", help="only this family (repeatable)")
    p.add_argument("--raw", action="store_true", help="plain-text prompts, without the chat template (base models)")
    p.add_argument("--out", help="write the full result (with every sample) as JSON here")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args(argv)
    check_flags(args, n={"ge": 1}, max_new_tokens={"ge": 1}, batch_size={"ge": 1})
    sample_tasks(0, split=args.split, families=args.families)  # a bad split or family fails before loading

    from posttrain.io import atomic_write_json, check_writable

    if args.out:
        check_writable(args.out, "--out")

    import torch

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
