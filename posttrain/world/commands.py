"""`posttrain world ...`: write the world's SFT data and pretraining corpus, and show its task prompts.

    posttrain world sft-data --kind curated|noisy --n N --out FILE [--seed S]
    posttrain world corpus --n N --out FILE [--seed S]
    posttrain world tasks --split train|test --n N [--family F ...] [--seed S] [--json]

Bad input (an unknown kind, family or split; N below 1; an --out that cannot be written) is a one-line
`UserError`, raised before any work.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

from posttrain.errors import UserError
from posttrain.io import check_writable
from posttrain.world.core import check_split
from posttrain.world.corpus import corpus_stats, make_documents, write_corpus
from posttrain.world.sft_data import make_sft_data, write_jsonl
from posttrain.world.world import sample_tasks


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posttrain world", description="The embedded assistant world.")
    sub = p.add_subparsers(dest="action", required=True)
    s = sub.add_parser("sft-data", help="write SFT data (messages JSONL) from the world's train prompts")
    s.add_argument("--kind", required=True, help="curated (gold references) or noisy (40%% flawed)")
    s.add_argument("--n", type=int, required=True, help="number of records")
    s.add_argument("--out", required=True, help="output .jsonl file")
    s.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("corpus", help="write a web-like pretraining corpus (text JSONL)")
    c.add_argument("--n", type=int, required=True, help="number of documents")
    c.add_argument("--out", required=True, help="output .jsonl file")
    c.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("tasks", help="print sample task prompts")
    t.add_argument("--split", default="train", help="train or test")
    t.add_argument("--n", type=int, default=14, help="number of tasks, balanced across families")
    t.add_argument("--family", action="extend", nargs="+", help="only these families (repeatable)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--json", action="store_true", help="print a JSON list with references")
    return p


def _positive(n: int, what: str) -> int:
    if n < 1:
        raise UserError(f"--n must be at least 1 {what}, got {n}")
    return n


def _sft_data(args: argparse.Namespace) -> int:
    _positive(args.n, "record")
    check_writable(args.out, "--out")
    records = make_sft_data(args.kind, args.n, args.seed)
    write_jsonl(records, args.out)
    families = Counter(r["world"]["family"] for r in records)
    flaws = Counter(r["world"]["flaw"] or "clean" for r in records)
    print(f"wrote {len(records)} {args.kind} SFT records to {args.out}")
    for name, count in sorted(families.items()):
        print(f"  {name:<18}{count:>8}")
    if args.kind == "noisy":
        print("flaws: " + ", ".join(f"{name} {count}" for name, count in sorted(flaws.items())))
    return 0


def _corpus(args: argparse.Namespace) -> int:
    _positive(args.n, "document")
    check_writable(args.out, "--out")
    start = time.perf_counter()
    docs = make_documents(args.n, args.seed)
    seconds = time.perf_counter() - start
    write_corpus(docs, args.out)
    stats = corpus_stats(docs)
    print(f"wrote {stats['documents']} documents ({stats['words']} words, {stats['characters']} characters) "
          f"to {args.out}; generated in {seconds:.1f}s")
    for kind, count in sorted(stats["kinds"].items()):
        print(f"  {kind:<15}{count:>8}  {count / stats['documents']:6.1%}")
    return 0


def _tasks(args: argparse.Namespace) -> int:
    _positive(args.n, "task")
    tasks = sample_tasks(args.n, check_split(args.split), args.seed, args.family)
    if args.json:
        rows = [{"family": t.family, "split": args.split, "messages": [{"role": m.role, "content": m.content}
                                                                      for m in t.messages],
                 "reference": t.reference} for t in tasks]
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    for i, task in enumerate(tasks, 1):
        print(f"--- {i} {task.family} ({args.split})\n{task.prompt_text()}")
    return 0


def world_main(argv: list[str]) -> int:
    """Run `posttrain world <action> ...` (module docstring); returns the exit code."""
    args = _parser().parse_args(argv)
    handlers = {"sft-data": _sft_data, "corpus": _corpus, "tasks": _tasks}
    return handlers[args.action](args)
