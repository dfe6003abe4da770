"""Sampling throughput on CPU: posttrain's decode loop against `transformers`' `model.generate`, in one run.

Both engines go through `posttrain.rollout.generate.generate` (the same chat-templated prompts, batches, stop
tokens and budget), one with `engine="posttrain"` (rollout/decode.py) and one with `engine="hf"`; only the decode
loop differs. The model is the embedded one after SFT: the shipped 5.6M base fine-tuned by the pipeline's own
data and sft stages (`configs/pipeline.yaml`, 40 steps, about a minute; cached in `--sft-dir`), so that answers
stop as the pipeline's do (a base model that never stops would hide what dropping finished rows saves).

Measured, for each engine, over `--prompts` world test prompts (distinct; `--n 1`) in batches of `--batch-size`
rows, temperature 1, `--max-new-tokens` 48: generated tokens (the stop token included) per wall-clock second, and
samples per second. Each engine runs `--rounds` times, alternating, after one warm-up batch each; the best round of
each counts (the machine is shared; the best round is the least disturbed). A second table repeats it with `--n-shared`
samples per prompt (a prompt's samples sit in one batch, as preference collection and GRPO groups draw them; the
posttrain engine computes such a prompt once). Greedy decoding of the first batch is checked identical between the
engines first. Threads: `--threads` (2).

    .venv/bin/python benchmarks/sampling.py [--out runs/bench/sampling.json]

The last line reads `ratio: X.XX`: posttrain's generated tokens/s over `model.generate`'s at n = 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sft_model(sft_dir: Path) -> Path:
    model = sft_dir / "sft" / "model"
    if not (model / "config.json").exists():
        print(f"SFT of the shipped base into {sft_dir} (the pipeline's data and sft stages) ...", flush=True)
        subprocess.run([sys.executable, "-m", "posttrain", "pipeline", "--config", str(ROOT / "configs/pipeline.yaml"),
                        f"output_dir={sft_dir}", "stages=data,sft"], check=True, stdout=subprocess.DEVNULL)
    return model


def run_engine(generate, model, tok, prompts, engine: str, batch_size: int, max_new: int, n: int, seed: int) -> dict:
    t0 = time.perf_counter()
    out = generate(model, tok, prompts, max_new_tokens=max_new, temperature=1.0, batch_size=batch_size,
                   seed=seed, n=n, engine=engine)
    wall = time.perf_counter() - t0
    tokens = sum(len(o["token_ids"]) for o in out)
    return {"wall_s": wall, "samples": len(out), "tokens": tokens, "tokens_per_s": tokens / wall,
            "samples_per_s": len(out) / wall, "mean_len": tokens / len(out),
            "stopped": sum(o["stopped"] for o in out) / len(out)}


def measure(generate, model, tok, prompts, args, n: int) -> dict:
    warm = prompts[: max(1, args.batch_size // n)]
    for engine in ("hf", "posttrain"):
        run_engine(generate, model, tok, warm, engine, args.batch_size, args.max_new_tokens, n, seed=99)
    rounds: dict[str, list[dict]] = {"hf": [], "posttrain": []}
    for r in range(args.rounds):
        for engine in ("hf", "posttrain"):
            rounds[engine].append(run_engine(generate, model, tok, prompts, engine, args.batch_size,
                                             args.max_new_tokens, n, seed=r))
    best = {e: max(rs, key=lambda x: x["tokens_per_s"]) for e, rs in rounds.items()}
    return {"rounds": rounds, "best": best, "ratio": best["posttrain"]["tokens_per_s"] / best["hf"]["tokens_per_s"]}


def table(title: str, res: dict) -> str:
    lines = [title, f"{'engine':<12}{'tok/s':>9}{'samples/s':>11}{'mean len':>10}{'stopped':>9}{'wall s':>8}"]
    for engine in ("hf", "posttrain"):
        b = res["best"][engine]
        lines.append(f"{engine:<12}{b['tokens_per_s']:>9.0f}{b['samples_per_s']:>11.1f}{b['mean_len']:>10.1f}"
                     f"{b['stopped']:>9.2f}{b['wall_s']:>8.2f}")
    lines.append(f"ratio (posttrain / hf, tokens/s): {res['ratio']:.2f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="", help="a causal LM folder (default: the shipped base after the pipeline's SFT)")
    ap.add_argument("--sft-dir", default="runs/bench/sampling_sft", help="where the default model is trained, once")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n-shared", type=int, default=8, help="samples per prompt of the second table (0: skip it)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    from posttrain.models.load import load_model, load_tokenizer
    from posttrain.rollout.generate import generate
    from posttrain.world.world import sample_tasks

    path = Path(args.model) if args.model else sft_model(Path(args.sft_dir))
    tok, model = load_tokenizer(str(path)), load_model(str(path)).eval()
    prompts = [t.messages for t in sample_tasks(args.prompts, "test", seed=0)]
    first = prompts[: args.batch_size]
    greedy = {e: generate(model, tok, first, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                          engine=e) for e in ("hf", "posttrain")}
    same = sum(a["token_ids"] == b["token_ids"] for a, b in zip(greedy["hf"], greedy["posttrain"]))
    print(f"model {path} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"{model.config.model_type}), {args.threads} threads; greedy identical on {same}/{len(first)} prompts")
    results = {"setup": vars(args) | {"model": str(path)}, "greedy_identical": [same, len(first)]}
    results["n1"] = measure(generate, model, tok, prompts, args, 1)
    print(table(f"\n{args.prompts} distinct prompts, batch {args.batch_size}, temperature 1, "
                f"max {args.max_new_tokens} new tokens", results["n1"]))
    if args.n_shared > 1:
        shared = prompts[: max(1, args.prompts // args.n_shared)]
        results["shared"] = measure(generate, model, tok, shared, args, args.n_shared)
        print(table(f"\n{len(shared)} prompts x {args.n_shared} samples, batch {args.batch_size}", results["shared"]))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"ratio: {results['n1']['ratio']:.2f}")


if __name__ == "__main__":
    main()
