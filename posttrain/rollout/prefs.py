"""`posttrain prefs generate`: preference data from a policy's own samples, labelled by a simulated annotator.

    posttrain prefs generate --policy PATH --n-prompts N --k K --annotator NAME --out FILE [--split train|test]
        [--mode all|best_vs_worst] [--ties drop|keep] [--unpaired] [--threshold 0.7]
        [--temperature 1.0] [--top-p 1.0] [--max-new-tokens 128] [--batch-size 32] [--seed 0]
    posttrain prefs relabel --data FILE --annotator NAME --out FILE [--seed 0]

`prefs relabel` (`relabel`) labels the pairs of a `prefs generate` file again, by another annotator, each shown
in the order it was shown before (its `world.shown_first`), row n from its own stream `random.Random(
f"posttrain.prefs.relabel:{seed}:{n}")`: the same responses under a fair, a length-biased or a noise-free
judge. A pair the new annotator calls a tie is dropped (counted). A row without the world's gold scores (a
user's file) is refused with its file, line and field.

The steps, each a function the pipeline can call without the command line:

1. `sample_tasks(N, split, seed, distinct=True)`: N distinct prompts of the world's `split` (`train` by
   default; `test`, the held-out prompts, for data that evaluates reward models: the same format, and the
   command prints a note that these are the test prompts, to train on only knowingly), balanced across
   families (a family with fewer distinct prompts than its share gives them all, so there can be fewer than N);
2. `sample_responses`: K samples per prompt from the policy (`generate(..., n=K)`, temperature > 0: K
   greedy samples would be identical), prompt-major, seeded by `seed`;
3. `score_responses`: each response's gold score (`world.score(task, text, stopped)`);
4. `label_pairs`: preference records through `annotators.pairs` (mode `all`: every two of a prompt's K
   responses; `best_vs_worst`: one pair per prompt), with prompt i's coin flips and labels drawn from its
   own stream `random.Random(f"posttrain.prefs:{seed}:{i}")`; or, `unpaired`, `label_unpaired`: one KTO
   row per response through `annotators.unpaired` (good when gold >= threshold).

`make_preferences` runs all four and returns `(records, report)`. The records load with
`posttrain.data.formats.load_examples` as `preference` (or `unpaired`) data like any user's file; their
`world` key (family, annotator, label, gold of each side) is ignored by the loader.

The report (`format_report` prints it): prompts (and their split) and responses, the mean gold and EOS
rate of the responses, pairs written out of the candidates and the pairs dropped, split into equal-gold pairs of
prompts with some spread (`dropped_ties`) and the pairs of `flat_prompts` (prompts whose K responses all
have the same gold; they give no pair unless `ties="keep"` in mode `all`); the annotator's agreement with
the gold ordering on the written pairs (`annotators.agreement`: a tie against a choice counts half); the
mean gold of the chosen and of the rejected side; and `annotators.panel_report` over the same pairs as
they were shown (agreement with gold of `fair`, `length`, `position`, `panel` and each panel member, and
between members), each from its own seeded stream, so its `fair` figure is a second draw, not the labels
written. For unpaired rows: how many are good and bad and the mean gold of each. Both count the written
rows with an empty (or whitespace-only) response (`empty_side`): the renderer drops an empty assistant turn,
so training skips them, and the report says so.

When no pair is left (every prompt flat, ties dropped) there is nothing to write: the command prints the
report, writes nothing and fails with one line (exit 2), since an empty preference file cannot train
anything (`load_examples` refuses it). Unpaired rows are never empty (one per response).
"""

from __future__ import annotations

import argparse
import random
import sys
from typing import TYPE_CHECKING

from posttrain.config import check_flags
from posttrain.errors import UserError, did_you_mean
from posttrain.world import SPLITS, Task, sample_tasks, score
from posttrain.world.annotators import (
    GOOD_THRESHOLD,
    MODES,
    REPORTED,
    TIE_RULES,
    Comparison,
    agreement,
    get_annotator,
    help_text,
    pairs,
    panel_report,
    response_length,
)
from posttrain.world.annotators import unpaired as unpaired_rows

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 128, "batch_size": 32, "seed": 0}
TEST_SPLIT_NOTE = ("note: --split test samples the world's held-out test prompts: use this data to evaluate reward "
                   "models; training on it trains on the test set (do so only knowingly)")


def check_choice(value: str, choices: tuple[str, ...], flag: str) -> str:
    """`value` if it is one of `choices`, else a one-line `UserError` naming `flag`, with "did you mean"."""
    if value not in choices:
        raise UserError(f"{flag}: unknown value '{value}'{did_you_mean(value, choices)}; "
                        f"choose one of {', '.join(choices)}")
    return value


def _check_counts(n_prompts: int, k: int, temperature: float) -> None:
    if n_prompts < 1:
        raise UserError(f"prefs: n_prompts must be >= 1, got {n_prompts}")
    if k < 2:
        raise UserError(f"prefs: k must be >= 2 (a pair needs two responses), got {k}")
    if not temperature > 0:
        raise UserError(f"prefs: temperature must be > 0 (K greedy samples are identical), got {temperature}")


def sample_responses(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tasks: list[Task], k: int,
                     temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 128,
                     batch_size: int = 32, seed: int = 0, progress: str = "") -> list[list[dict]]:
    """K `generate` outputs (`text`, `stopped`, ...) per task, in task order; sampled, seeded by `seed`."""
    from posttrain.rollout import generate as gen  # torch loads only to sample

    outputs = gen.generate(model, tokenizer, [t.messages for t in tasks], max_new_tokens=max_new_tokens,
                           temperature=temperature, top_p=top_p, batch_size=batch_size, seed=seed, n=k,
                           progress=progress)
    return [outputs[i * k:(i + 1) * k] for i in range(len(tasks))]


def score_responses(tasks: list[Task], samples: list[list[dict]]) -> list[list[float]]:
    """The gold score of every sample (`world.score(task, text, stopped)`), shaped like `samples`."""
    return [[score(t, o["text"], o["stopped"]).gold for o in outs] for t, outs in zip(tasks, samples)]


def _base_report(tasks: list[Task], samples: list[list[dict]], golds: list[list[float]]) -> dict:
    flat = [g for g in golds if len(set(g)) <= 1]
    every = [x for g in golds for x in g]
    stopped = [bool(o["stopped"]) for outs in samples for o in outs]
    return {"prompts": len(tasks), "k": len(golds[0]) if golds else 0, "responses": len(every),
            "mean_gold": _mean(every), "eos_rate": _mean([float(s) for s in stopped]),
            "flat_prompts": len(flat)}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _gold_label(gold_a: float, gold_b: float) -> str:
    return "a" if gold_a > gold_b else "b" if gold_b > gold_a else "tie"


def shown(record: dict) -> Comparison:
    """A written pair as the annotator saw it: gold and length of the response shown first, then the other."""
    w = record["world"]
    sides = [(w["gold_chosen"], record["chosen"]), (w["gold_rejected"], record["rejected"])]
    (ga, ta), (gb, tb) = sides if w["shown_first"] == "chosen" else sides[::-1]
    return Comparison(ga, gb, response_length(ta), response_length(tb))


def label_pairs(tasks: list[Task], responses: list[list[str]], golds: list[list[float]], annotator: str,
                seed: int = 0, mode: str = "all", ties: str = "drop") -> tuple[list[dict], dict]:
    """Preference records for every task's scored responses (`annotators.pairs`, prompt i from the stream
    `random.Random(f"posttrain.prefs:{seed}:{i}")`) and the pair part of the report (module docstring)."""
    judge = get_annotator(annotator)
    check_choice(mode, MODES, "mode")
    check_choice(ties, TIE_RULES, "ties")
    records: list[dict] = []
    dropped_ties = dropped_flat = candidates = 0
    for i, (task, texts, g) in enumerate(zip(tasks, responses, golds)):
        got = pairs(task, texts, g, judge, random.Random(f"posttrain.prefs:{seed}:{i}"), mode=mode, ties=ties)
        n_cand = 1 if mode == "best_vs_worst" else len(g) * (len(g) - 1) // 2
        candidates += n_cand
        if len(set(g)) <= 1:
            dropped_flat += n_cand - len(got)
        else:
            dropped_ties += n_cand - len(got)
        records += got
    items = [shown(r) for r in records]
    worlds = [r["world"] for r in records]
    report = {
        "annotator": judge.name, "mode": mode, "ties": ties, "candidates": candidates, "pairs": len(records),
        "dropped_ties": dropped_ties, "dropped_flat": dropped_flat,
        "tie_labels": sum(w["tie"] for w in worlds),
        "empty_side": sum(not r["chosen"].strip() or not r["rejected"].strip() for r in records),
        "agreement": agreement([w["label"] for w in worlds], [_gold_label(c.gold_a, c.gold_b) for c in items])
        if records else None,
        "gold_chosen": _mean([w["gold_chosen"] for w in worlds]),
        "gold_rejected": _mean([w["gold_rejected"] for w in worlds]),
        "panel": panel_report(items, REPORTED, seed=seed) if records else None,
    }
    return records, report


def label_unpaired(tasks: list[Task], responses: list[list[str]], golds: list[list[float]],
                   threshold: float = GOOD_THRESHOLD) -> tuple[list[dict], dict]:
    """KTO rows, one per response (`annotators.unpaired`), and the unpaired part of the report."""
    records = [r for task, texts, g in zip(tasks, responses, golds) for r in unpaired_rows(task, texts, g, threshold)]
    good = [r["world"]["gold"] for r in records if r["label"]]
    bad = [r["world"]["gold"] for r in records if not r["label"]]
    return records, {"threshold": threshold, "rows": len(records), "good": len(good), "bad": len(bad),
                     "gold_good": _mean(good), "gold_bad": _mean(bad),
                     "empty_side": sum(not r["completion"].strip() for r in records)}


def make_preferences(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, n_prompts: int, k: int,
                     annotator: str, seed: int = 0, mode: str = "all", ties: str = "drop",
                     unpaired: bool = False, threshold: float = GOOD_THRESHOLD, temperature: float = 1.0,
                     top_p: float = 1.0, max_new_tokens: int = 128, batch_size: int = 32,
                     progress: str = "", split: str = "train") -> tuple[list[dict], dict]:
    """Sample, score and label (module docstring): `(records, report)`. Records are preference pairs, or with
    `unpaired` KTO rows (then `annotator`, `mode` and `ties` are checked but unused), for prompts of the world's
    `split` ("train", or "test" for held-out evaluation data). Bad arguments are a `UserError` before anything
    is sampled."""
    _check_counts(n_prompts, k, temperature)
    check_choice(split, SPLITS, "split")
    get_annotator(annotator)
    check_choice(mode, MODES, "mode")
    check_choice(ties, TIE_RULES, "ties")
    if not 0 <= threshold <= 1:
        raise UserError(f"prefs: threshold must be in [0, 1] (gold scores are), got {threshold}")
    tasks = sample_tasks(n_prompts, split, seed, distinct=True)
    samples = sample_responses(model, tokenizer, tasks, k, temperature=temperature, top_p=top_p,
                               max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, progress=progress)
    golds = score_responses(tasks, samples)
    texts = [[o["text"] for o in outs] for outs in samples]
    base = {"prompts_requested": n_prompts, "split": split, "seed": seed, **_base_report(tasks, samples, golds)}
    if unpaired:
        records, part = label_unpaired(tasks, texts, golds, threshold)
        return records, {"kind": "unpaired", **base, **part}
    records, part = label_pairs(tasks, texts, golds, annotator, seed=seed, mode=mode, ties=ties)
    return records, {"kind": "pairs", **base, **part}


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _panel_lines(panel: dict) -> list[str]:
    with_gold = panel["with_gold"]
    top = [n for n in with_gold if "/" not in n]
    lines = [f"panel report on the same {panel['n']} pairs ({panel['gold_ties']} gold ties), agreement with gold:",
             "  " + "  ".join(f"{n} {with_gold[n]:.3f}" for n in top)]
    for name, p in panel["panels"].items():
        members = "  ".join(f"{m.split('/')[-1]}: {with_gold[m]:.3f}" for m in p["members"])
        lines.append(f"  {name} members {members}; with each other {p['mean_pairwise']:.3f} on average "
                     f"({min(p['pairwise'].values()):.3f}-{max(p['pairwise'].values()):.3f})")
    return lines


def format_report(report: dict) -> str:
    """The report as a few lines of text (module docstring)."""
    r = report
    lines = [f"prompts {r['prompts']} ({r['split']} split, {r['prompts_requested']} asked)  k {r['k']}  "
             f"responses {r['responses']}  mean gold {_f(r['mean_gold'])}  EOS rate {_f(r['eos_rate'])}",
             f"flat prompts {r['flat_prompts']} (all {r['k']} responses with the same gold)"]
    if r["kind"] == "unpaired":
        lines.append(f"unpaired rows {r['rows']}: good {r['good']} (gold >= {r['threshold']:g}, mean gold "
                     f"{_f(r['gold_good'])})  bad {r['bad']} (mean gold {_f(r['gold_bad'])})")
        return "\n".join(lines + _empty_line(r["empty_side"], "rows"))
    lines.append(f"pairs {r['pairs']} written of {r['candidates']} (mode {r['mode']}, ties {r['ties']}); dropped "
                 f"{r['dropped_ties']} equal-gold, {r['dropped_flat']} of flat prompts")
    if r["pairs"]:
        lines.append(f"annotator {r['annotator']}: agreement with gold {_f(r['agreement'])} on the written pairs "
                     f"({r['tie_labels']} tie labels); mean gold chosen {_f(r['gold_chosen'])}, "
                     f"rejected {_f(r['gold_rejected'])}")
        lines += _panel_lines(r["panel"])
    return "\n".join(lines + _empty_line(r["empty_side"], "pairs"))


def _empty_line(n: int, what: str) -> list[str]:
    if not n:
        return []
    return [f"note: {n} {what} have an empty response; training drops them (the renderer drops an empty "
            f"assistant turn)"]


def relabel(rows: list[dict], annotator: str, seed: int = 0,
            wheres: list[str] | None = None) -> tuple[list[dict], dict]:
    """`rows` (`prefs generate` records; `wheres`: where each was read, for errors) labelled again by `annotator`
    (module docstring; row n, from 1, draws from its own stream); returns the new records and a report: pairs,
    ties dropped, pairs whose chosen side changed, the new labels' agreement with gold, and how often the chosen
    side is the longer one, before and after."""
    judge = get_annotator(annotator)
    out, flipped, ties = [], 0, 0
    for line, r in enumerate(rows, 1):
        where = wheres[line - 1] if wheres else f"row {line}"
        w = r.get("world")
        missing = [k for k in ("gold_chosen", "gold_rejected", "shown_first") if not isinstance(w, dict) or k not in w]
        if missing or not isinstance(r.get("chosen"), str) or not isinstance(r.get("rejected"), str):
            field = f"world.{missing[0]}" if missing else "chosen" if not isinstance(r.get("chosen"), str) else "rejected"
            raise UserError(f"{where}: no '{field}' (prefs relabel reads `prefs generate` rows, which carry "
                            f"the world's gold scores)")
        c = shown(r)
        label = judge.judge(c.gold_a, c.gold_b, random.Random(f"posttrain.prefs.relabel:{seed}:{line}"), c.len_a,
                            c.len_b)
        if label == "tie":
            ties += 1
            continue
        first_is_chosen = w["shown_first"] == "chosen"
        new = {**r, "world": {**w, "annotator": judge.name, "label": label, "tie": False}}
        if (label == "a") != first_is_chosen:   # the other side wins now
            flipped += 1
            nw = new["world"]
            new["chosen"], new["rejected"] = r["rejected"], r["chosen"]
            nw["gold_chosen"], nw["gold_rejected"] = w["gold_rejected"], w["gold_chosen"]
            if "index_chosen" in w and "index_rejected" in w:
                nw["index_chosen"], nw["index_rejected"] = w["index_rejected"], w["index_chosen"]
            nw["shown_first"] = "rejected" if first_is_chosen else "chosen"
        out.append(new)

    def longer(rs: list[dict]) -> float | None:
        return _mean([float(len(x["chosen"].strip()) > len(x["rejected"].strip())) for x in rs])

    report = {"annotator": judge.name, "rows": len(rows), "pairs": len(out), "dropped_ties": ties,
              "flipped": flipped,
              "agreement": agreement([x["world"]["label"] for x in out], [_gold_label(*shown(x)[:2]) for x in out])
              if out else None,
              "chosen_longer_before": longer(rows), "chosen_longer_after": longer(out)}
    return out, report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posttrain prefs", description="Preference data from a policy's samples.")
    sub = p.add_subparsers(dest="action", required=True)
    g = sub.add_parser("generate", formatter_class=argparse.RawTextHelpFormatter,
                       help="sample K responses per prompt, score them, label pairs, write JSONL",
                       description=(__doc__ or "").strip().split("\n\n")[0])
    g.add_argument("--policy", required=True, metavar="PATH", help="model folder (or hub id) with its tokenizer")
    g.add_argument("--n-prompts", type=int, required=True, metavar="N", help="distinct prompts of --split, balanced across families")
    g.add_argument("--split", default="train",
                   help="train (default): the world's train prompts; test: its held-out prompts, for data that "
                        "evaluates reward models")
    g.add_argument("--k", type=int, required=True, metavar="K", help="responses sampled per prompt (>= 2)")
    g.add_argument("--annotator", required=True, metavar="NAME",
                   help="simulated annotator that labels the pairs:\n" + help_text().replace("%", "%%"))
    g.add_argument("--out", required=True, metavar="FILE", help="output .jsonl file (written atomically)")
    g.add_argument("--mode", default="all", help="all (default): every two responses; best_vs_worst: one pair per prompt")
    g.add_argument("--ties", default="drop", help="drop (default): skip equal-gold pairs; keep: judge them too")
    g.add_argument("--unpaired", action="store_true", help="write KTO rows (good when gold >= --threshold)")
    g.add_argument("--threshold", type=float, default=GOOD_THRESHOLD, help="--unpaired: gold that counts as good (default %(default)g)")
    g.add_argument("--temperature", type=float, default=DEFAULTS["temperature"], help="sampling temperature, > 0 (default %(default)g)")
    g.add_argument("--top-p", type=float, default=DEFAULTS["top_p"], help="in (0, 1] (default %(default)g)")
    g.add_argument("--max-new-tokens", type=int, default=DEFAULTS["max_new_tokens"], help="(default %(default)d)")
    g.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="sequences per forward pass (default %(default)d)")
    g.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="picks the prompts, the samples and the labels (default %(default)d)")
    r = sub.add_parser("relabel", formatter_class=argparse.RawTextHelpFormatter,
                       help="label the pairs of a prefs generate file again, by another annotator",
                       description="Label the pairs of a `prefs generate` file again, by another annotator, each "
                                   "shown in its old order; ties are dropped.")
    r.add_argument("--data", required=True, metavar="FILE", help="a prefs generate .jsonl file")
    r.add_argument("--annotator", required=True, metavar="NAME", help="the new annotator:\n" + help_text().replace("%", "%%"))
    r.add_argument("--out", required=True, metavar="FILE", help="output .jsonl file (written atomically)")
    r.add_argument("--seed", type=int, default=0, help="the labels' random streams (default %(default)d)")
    return p


def _check_args(args: argparse.Namespace) -> None:
    """Every flag, before any model is loaded."""
    check_flags(args, n_prompts={"ge": 1}, k={"ge": 2}, top_p={"gt": 0, "le": 1}, max_new_tokens={"ge": 1},
                batch_size={"ge": 1}, threshold={"ge": 0, "le": 1})
    if not args.temperature > 0:
        raise UserError(f"--temperature: must be > 0, got {args.temperature!r} "
                        f"(preference data needs sampling: K greedy samples are identical)")
    try:
        get_annotator(args.annotator)
    except UserError as e:
        raise UserError(f"--annotator: {e}") from None
    check_choice(args.mode, MODES, "--mode")
    check_choice(args.ties, TIE_RULES, "--ties")
    check_choice(args.split, SPLITS, "--split")

    from posttrain.io import check_writable

    check_writable(args.out, "--out")


def relabel_main(args: argparse.Namespace) -> int:
    from posttrain.data.loading import read_records
    from posttrain.io import check_writable
    from posttrain.world.sft_data import write_jsonl

    try:
        get_annotator(args.annotator)
    except UserError as e:
        raise UserError(f"--annotator: {e}") from None
    check_writable(args.out, "--out")
    records = read_records(args.data)   # file:line errors for bad JSON and non-objects
    rows, wheres = [r for r, _ in records], [w for _, w in records]
    out, report = relabel(rows, args.annotator, seed=args.seed, wheres=wheres)
    print(f"relabel: {report['rows']} pairs by {report['annotator']}: {report['pairs']} written, "
          f"{report['dropped_ties']} ties dropped, {report['flipped']} with the other side chosen now; agreement "
          f"with gold {_f(report['agreement'])}; chosen side the longer one {_f(report['chosen_longer_before'])} "
          f"-> {_f(report['chosen_longer_after'])}")
    if not out:
        raise UserError(f"no pair left: {args.annotator} called every pair a tie; nothing written to {args.out}")
    write_jsonl(out, args.out)
    print(f"wrote {len(out)} preference pairs to {args.out}")
    return 0


def prefs_main(argv: list[str]) -> int:
    """Run `posttrain prefs generate ...` or `prefs relabel ...` (module docstring); returns the exit code."""
    args = _parser().parse_args(argv)
    if args.action == "relabel":
        return relabel_main(args)
    _check_args(args)

    import torch

    from posttrain.models.load import load_model, load_tokenizer
    from posttrain.world.sft_data import write_jsonl

    if args.split == "test":
        print(TEST_SPLIT_NOTE)
    tok = load_tokenizer(args.policy)
    model = load_model(args.policy)
    if torch.cuda.is_available():
        model = model.to("cuda")
    records, report = make_preferences(
        model, tok, args.n_prompts, args.k, args.annotator, seed=args.seed, mode=args.mode, ties=args.ties,
        unpaired=args.unpaired, threshold=args.threshold, temperature=args.temperature, top_p=args.top_p,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        progress="sampling" if sys.stderr.isatty() else "", split=args.split)
    print(format_report(report))
    if not records:
        sys.stdout.flush()  # the report first, then the error line
        raise UserError(f"no preference pair: the {args.k} responses of each of the {report['prompts']} prompts "
                        f"all have the same gold; nothing written to {args.out} (try a larger --k or "
                        f"--max-new-tokens, a better policy, --unpaired, or --ties keep with --mode all)")
    write_jsonl(records, args.out)
    print(f"wrote {len(records)} {'unpaired rows' if args.unpaired else 'preference pairs'} to {args.out}")
    return 0
