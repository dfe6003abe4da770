"""Round-robin battles between models on held-out world prompts, judged in both orders, then arena ratings.

    posttrain arena --models sft=runs/p/sft/model,dpo=runs/p/dpo/model --judge gold [--n 140] [--seed 0]
                    [--out DIR] [--raw base] [--bootstrap 1000]

Every model answers the same `--n` held-out prompts (`eval world`'s draw: balanced over the families, greedy;
`--raw` names models prompted without the chat template, e.g. a base model). For every two models and every
prompt, the judge sees the two answers in both orders (`judges.both_orders`): the battle's winner is the
answer both orders prefer, and a tie when they disagree or both say tie. A battle whose verdict could not be
read is left out and counted (never a tie or a loss). The battles go to `battles.jsonl` as Chatbot Arena rows
(`model_a`, `model_b`, `winner`, plus the prompt's index and family and both orders' verdicts), the ratings
to `leaderboard.json` and `arena.png` (`arena.arena_ratings`: Bradley-Terry with bootstrap intervals), and the
judge's own numbers (swap consistency, first-position preference; with a world task, agreement with gold and
Cohen's kappa) to `judge.json`. The answers are kept in `answers/NAME.json`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from pathlib import Path

from posttrain.errors import UserError
from posttrain.eval.judges import Judge, Pair, both_orders, judge_report
from posttrain.world.core import Task

WINNER = {"a": "model_a", "b": "model_b", "tie": "tie"}


def gold_label(task: Task, a: str, b: str, stopped: tuple[bool, bool]) -> str:
    """The gold ordering of two answers: "a", "b" or "tie"."""
    ga, gb = Pair(task.messages, a, b, task, stopped).golds("gold")
    return "a" if ga > gb else "b" if gb > ga else "tie"


def battles(tasks: list[Task], answers: dict[str, list[dict]], judge: Judge) -> tuple[list[dict], dict]:
    """Battle rows for every two models of `answers` (name -> one {"text", "stopped"} per task) on every task,
    and the judge's report over all of them (with gold agreement: the tasks are world tasks)."""
    rows, results, golds = [], [], []
    names = list(answers)
    for x, y in itertools.combinations(names, 2):
        pairs = [Pair(t.messages, a["text"], b["text"], t, (a["stopped"], b["stopped"]))
                 for t, a, b in zip(tasks, answers[x], answers[y])]
        res = both_orders(judge, pairs)
        for i, (t, r, p) in enumerate(zip(tasks, res, pairs)):
            g = gold_label(t, p.first, p.second, p.stopped)
            results.append(r)
            golds.append(g)
            row = {"model_a": x, "model_b": y, "winner": WINNER.get(r["winner"]), "prompt": i, "family": t.family,
                   "judge": judge.name, "order_ab": r["ab"], "order_ba": r["ba"], "gold": g}
            if r["winner"] is None:
                row["unreadable"] = r["raw"]
            rows.append(row)
    return rows, judge_report(results, golds)


PADDING = " I hope this helps! Let me know if you have any other questions."


def padded(answers: list[dict], every: int = 2) -> list[dict]:
    """A verbosity probe: the same answers with `PADDING` appended to every `every`-th one (the others as they
    are, so the length differences vary and the length-controlled fit can tell length from quality)."""
    return [{**a, "text": a["text"].rstrip() + PADDING} if i % every == every - 1 else a for i, a in enumerate(answers)]


def judge_bias(tasks: list[Task], answers: dict[str, list[dict]], baseline: str,
               judges: tuple[str, ...] = ("gold", "annotator:fair", "annotator:length", "annotator:position"), n_boot: int = 1000,
               seed: int = 0) -> list[dict]:
    """Each model's win rate against `baseline`, raw and length-controlled (`winrate.win_rates`), under each
    judge, for the models in `answers` and the padding probe (`padded(baseline)`, named "BASELINE+padding"): a
    length-biased judge moves the raw win rate of longer answers, the length-controlled one much less."""
    from posttrain.eval.judges import make_judge
    from posttrain.eval.winrate import win_rates

    others = {n: a for n, a in answers.items() if n != baseline}
    others[f"{baseline}+padding"] = padded(answers[baseline])
    out = []
    for spec in judges:
        judge = make_judge(spec, seed=seed)
        for name, ans in others.items():
            rows, report = annotations(answers[baseline], ans, tasks, judge, (baseline, name))
            rows = [r for r in rows if r["preference"] is not None]
            if not rows:
                continue
            r = win_rates([x["preference"] - 1 for x in rows], [len(x["output_2"]) for x in rows],
                          [len(x["output_1"]) for x in rows], n_boot=n_boot, seed=seed)
            out.append({"model": name, "judge": judge.name, "first_position": report["first_position"], **r})
    return out


def parse_models(text: str, flag: str = "--models") -> list[tuple[str, str]]:
    """`name=path,name=path` or `path,path` (each named by its folder) -> [(name, path)]; two models of one name
    are refused."""
    out = []
    for item in [s.strip() for s in text.split(",") if s.strip()]:
        name, sep, path = item.partition("=")
        if not sep:
            path, name = item, Path(item).resolve().name
        out.append((name, path))
    names = [n for n, _ in out]
    if len(out) < 2:
        raise UserError(f"{flag}: give at least two (name=path,name=path), got {len(out)}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"{flag}: two are named '{dup[0]}'; name them: name=path")
    return out


def answer(path: str, tasks: list[Task], raw: bool, max_new_tokens: int, batch_size: int, label: str) -> list[dict]:
    """The model's greedy answers to the tasks, as `eval world` makes them."""
    from posttrain.eval.world import raw_prompt
    from posttrain.models.load import load_model, load_tokenizer
    from posttrain.rollout.generate import generate

    tok, model = load_tokenizer(path), load_model(path)
    prompts = [raw_prompt(t) for t in tasks] if raw else [t.messages for t in tasks]
    outs = generate(model, tok, prompts, max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size,
                    raw=raw, progress=label)
    return [{"text": o["text"], "stopped": bool(o["stopped"])} for o in outs]


def plot_png(result: dict, title: str) -> bytes:
    """Ratings with their intervals, best at the top."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["models"][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(rows) + 1.2))
    y = range(len(rows))
    ax.errorbar([r["rating"] for r in rows], list(y),
                xerr=[[r["rating"] - r["lo"] for r in rows], [r["hi"] - r["rating"] for r in rows]],
                fmt="o", capsize=4)
    ax.set_yticks(list(y), [r["model"] for r in rows])
    ax.set_xlabel(f"Bradley-Terry rating, {round(100 * result['level'])}% bootstrap interval")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def format_judge(report: dict) -> str:
    def f(x):
        return "-" if x is None else f"{x:.3f}"

    line = (f"judge: {report['n']} battles, {report['failures']} unreadable, swap consistency "
            f"{f(report['swap_consistency'])}, first-position preference {f(report['first_position'])}")
    if "agreement" in report:
        line += (f"; with gold: agreement {f(report['agreement'])} (ties included), {f(report['agreement_no_ties'])}"
                 f" (no ties), kappa {f(report['kappa'])}")
    return line


def run_arena(models: list[tuple[str, str]], judge_spec: str, out: Path, n: int = 140, seed: int = 0,
              raw: tuple[str, ...] = (), max_new_tokens: int = 128, batch_size: int = 16, n_boot: int = 1000,
              answers: dict[str, list[dict]] | None = None, tasks: list[Task] | None = None) -> dict:
    """The whole arena (module docstring); `answers` given (name -> answers to `sample_tasks(n, "test", seed)`,
    as the pipeline has them from its evaluation) skips the generation. Returns the leaderboard with the judge's
    report."""
    from posttrain.eval.arena import arena_ratings
    from posttrain.eval.judges import make_judge
    from posttrain.io import atomic_write_bytes, atomic_write_json, atomic_write_text
    from posttrain.world import sample_tasks

    tasks = tasks if tasks is not None else sample_tasks(n, split="test", seed=seed, distinct=True)
    judge = make_judge(judge_spec, seed=seed)
    if answers is None:
        answers = {}
        for name, path in models:
            answers[name] = answer(path, tasks, name in raw, max_new_tokens, batch_size, f"arena: {name} answers")
            atomic_write_json(out / "answers" / f"{name}.json", answers[name])
    rows, report = battles(tasks, answers, judge)
    atomic_write_text(out / "battles.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    usable = [(r["model_a"], r["model_b"], {"model_a": 1.0, "model_b": 0.0, "tie": 0.5}[r["winner"]])
              for r in rows if r["winner"] is not None]
    if not usable:
        raise UserError(f"arena: the judge {judge.name} gave no readable verdict in {len(rows)} battles "
                        f"(first: {rows[0].get('unreadable') if rows else '-'}); see {out / 'battles.jsonl'}")
    result = arena_ratings(usable, n_boot=n_boot, seed=seed)
    missing = [name for name in answers if name not in {r["model"] for r in result["models"]}]
    result.update(judge=judge.name, judge_report=report, n_prompts=len(tasks), eval_seed=seed,
                  unreadable=len(rows) - len(usable), missing=missing)
    atomic_write_json(out / "judge.json", report)
    atomic_write_json(out / "leaderboard.json", result)
    atomic_write_bytes(out / "arena.png", plot_png(result, f"judge {judge.name}, {len(tasks)} prompts, "
                                                           f"{len(usable)} battles"))
    return result


def arena_main(argv: list[str]) -> int:
    from posttrain.config import check_flags
    from posttrain.io import check_writable
    from posttrain.models.load import check_model_folder

    p = argparse.ArgumentParser(prog="posttrain arena", description=(
        "Round-robin battles between models on held-out world prompts, judged in both orders, then Bradley-Terry "
        "ratings with bootstrap intervals. `posttrain arena ratings --battles FILE` rates battles you have."))
    p.add_argument("--models", help="name=path,name=path,... (or path,path: named by folder)")
    p.add_argument("--results", help="instead of --models: name=FILE,... `eval world --out` results on the same "
                                     "prompts, whose answers are judged (nothing is generated; --n and --seed come "
                                     "from the results)")
    p.add_argument("--judge", default="gold", help="gold, annotator:NAME, rm:PATH, llm:PATH[#generate|#rating], "
                                                   "http://HOST:PORT/v1[#MODEL] (default gold)")
    p.add_argument("--n", type=int, default=140, help="held-out prompts, balanced over the families (default 140)")
    p.add_argument("--seed", type=int, default=0, help="which prompts are drawn, and the bootstrap's seed")
    p.add_argument("--raw", default="", help="models prompted without the chat template (comma-separated names)")
    p.add_argument("--out", default="runs/arena", help="output folder (default runs/arena)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--json", action="store_true", help="print the leaderboard as JSON")
    args = p.parse_args(argv)
    check_flags(args, n={"ge": 1}, max_new_tokens={"ge": 1}, batch_size={"ge": 1}, bootstrap={"ge": 1})
    if (args.models is None) == (args.results is None):
        raise UserError("arena: give --models name=path,... (they answer) or --results name=FILE,... (their "
                        "`eval world --out` answers are judged), not both")
    if args.results is not None:
        return _arena_from_results(args)
    models = parse_models(args.models)
    raw = tuple(s for s in args.raw.split(",") if s)
    unknown = [r for r in raw if r not in {m for m, _ in models}]
    if unknown:
        raise UserError(f"--raw: '{unknown[0]}' is not one of the --models names ({', '.join(m for m, _ in models)})")
    for name, path in models:
        check_model_folder(path, f"--models {name}")
    check_writable(os.path.join(args.out, "leaderboard.json"), "--out")
    result = run_arena(models, args.judge, Path(args.out), n=args.n, seed=args.seed, raw=raw,
                       max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, n_boot=args.bootstrap)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    _print_arena(result, args.out)
    return 0


def _print_arena(result: dict, out: str) -> None:
    from posttrain.eval.arena import format_ratings

    print(format_ratings(result))
    print(format_judge(result["judge_report"]))
    if result["unreadable"]:
        print(f"{result['unreadable']} battles left out: the judge's verdict could not be read (see battles.jsonl)")
    if result["missing"]:
        print(f"not rated (no readable battle): {', '.join(result['missing'])}")
    print(f"wrote {out}/battles.jsonl, leaderboard.json, judge.json, arena.png")


def _arena_from_results(args) -> int:
    from posttrain.data.loading import read_json_file
    from posttrain.io import check_writable

    files = parse_models(args.results, "--results")
    check_writable(os.path.join(args.out, "leaderboard.json"), "--out")
    answers, first, tasks = {}, None, []
    for name, path in files:
        r = read_json_file(path)
        if not isinstance(r, dict) or "samples" not in r:
            raise UserError(f"{path}: not an `eval world --out` result (no 'samples')")
        prompts = [x.get("prompt_text", x["prompt"]) for x in r["samples"]]
        if first is None:
            tasks = tasks_of(r, path)  # drawn again once; the other results must be on the same prompts
            first = (path, r, prompts)
        elif prompts != first[2]:
            raise UserError(f"{path}: not on the same prompts as {first[0]} (evaluate with the same --n and --seed)")
        answers[name] = answers_of(r)
    r = first[1]
    result = run_arena([], args.judge, Path(args.out), n=r["n_requested"], seed=r["seed"], n_boot=args.bootstrap,
                       answers=answers, tasks=tasks)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_arena(result, args.out)
    return 0


def answers_of(result: dict) -> list[dict]:
    """An `eval world --out` result's answers as the judges take them: {"text", "stopped"} per prompt."""
    return [{"text": x["response"], "stopped": bool(x["stopped"])} for x in result["samples"]]


def tasks_of(result: dict, path: str) -> list[Task]:
    """The world tasks an `eval world --out` result was made on, drawn again from its settings and checked."""
    from posttrain.world import sample_tasks

    try:
        tasks = sample_tasks(result["n_requested"], split=result["split"], seed=result["seed"],
                             distinct=result.get("distinct", True))
    except KeyError as e:
        raise UserError(f"{path}: not an `eval world --out` result (no '{e.args[0]}')") from None
    texts = [x.get("prompt_text", x["prompt"]) for x in result["samples"]]
    if texts != [t.prompt_text() for t in tasks]:
        raise UserError(f"{path}: its prompts are not those its settings draw (split {result['split']}, seed "
                        f"{result['seed']}, n {result['n_requested']}); was it made by another posttrain version?")
    return tasks


def annotations(baseline: list[dict], model: list[dict], tasks: list[Task], judge: Judge,
                names: tuple[str, str]) -> tuple[list[dict], dict]:
    """AlpacaEval annotation rows of `model`'s answers against `baseline`'s on the same tasks (answers as
    {"text", "stopped"}), each pair judged in both orders: output_1 the baseline's, output_2 the model's,
    preference 1 (baseline), 2 (model), 1.5 (a tie, or the two orders disagreeing), None when a verdict was
    unreadable. Returns (rows, the judge's report)."""
    pairs = [Pair(t.messages, a["text"], b["text"], t, (a["stopped"], b["stopped"]))
             for t, a, b in zip(tasks, baseline, model)]
    results = both_orders(judge, pairs)
    golds = [gold_label(t, p.first, p.second, p.stopped) for t, p in zip(tasks, pairs)]
    rows = []
    for t, p, r, g in zip(tasks, pairs, results, golds):
        rows.append({"instruction": t.prompt_text(), "output_1": p.first, "output_2": p.second,
                     "generator_1": names[0], "generator_2": names[1], "family": t.family, "annotator": judge.name,
                     "preference": {"a": 1, "b": 2, "tie": 1.5}.get(r["winner"]) if r["winner"] else None,
                     "order_ab": r["ab"], "order_ba": r["ba"], "gold": g})
    return rows, judge_report(results, golds)


def annotate_main(argv: list[str]) -> int:
    """`posttrain eval annotate --baseline A.json --model B.json --judge SPEC --out FILE`."""
    from posttrain.data.loading import read_json_file
    from posttrain.eval.judges import make_judge
    from posttrain.io import atomic_write_json, check_writable

    p = argparse.ArgumentParser(prog="posttrain eval annotate", description=(
        "Judge a model's answers against a baseline's on the same prompts (two `eval world --out` results), each "
        "pair in both orders, and write AlpacaEval annotation rows for `posttrain eval winrate`."))
    p.add_argument("--baseline", required=True, help="the baseline's `eval world --out` result (output_1)")
    p.add_argument("--model", required=True, help="the model's `eval world --out` result on the same prompts (output_2)")
    p.add_argument("--judge", default="gold", help="gold, annotator:NAME, rm:PATH, llm:PATH[#mode], http://URL[#MODEL]")
    p.add_argument("--names", default="", help="baseline,model names for generator_1/2 (default: the file names)")
    p.add_argument("--seed", type=int, default=0, help="the simulated annotators' seed")
    p.add_argument("--out", required=True, help="the annotation rows (a .json list)")
    args = p.parse_args(argv)
    check_writable(args.out, "--out")
    a, b = read_json_file(args.baseline), read_json_file(args.model)
    for path, r in ((args.baseline, a), (args.model, b)):
        if not isinstance(r, dict) or "samples" not in r:
            raise UserError(f"{path}: not an `eval world --out` result (no 'samples')")
    tasks = tasks_of(a, args.baseline)
    if [x.get("prompt_text", x["prompt"]) for x in a["samples"]] != [x.get("prompt_text", x["prompt"]) for x in b["samples"]]:
        raise UserError(f"{args.model}: not on the same prompts as {args.baseline} (use the same --n and --seed)")
    names = tuple(args.names.split(",")) if args.names else (Path(args.baseline).stem, Path(args.model).stem)
    if len(names) != 2:
        raise UserError(f"--names: give two names, baseline,model; got {args.names!r}")
    judge = make_judge(args.judge, seed=args.seed)
    rows, report = annotations(answers_of(a), answers_of(b), tasks, judge, names)
    atomic_write_json(args.out, rows)
    print(format_judge(report))
    print(f"wrote {len(rows)} annotation rows to {args.out} ({report['failures']} unreadable: preference null)")
    return 0
