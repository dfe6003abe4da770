"""SFT from scratch on your own chats: build a tiny model, fine-tune it on the demo chats, show what changed.

    .venv/bin/python examples/sft_from_scratch.py      (about 2 minutes on 2 cores)

Each step is a `posttrain` command, printed before it runs, so you can run them yourself:
  1. posttrain init-model   a tiny random-init Llama with a BPE tokenizer trained on the demo data
  2. posttrain sft          full fine-tune with configs/sft_demo.yaml (resumes if interrupted)
  3. posttrain generate     the same prompts through the base and the fine-tuned model
(`make demo` runs `posttrain pipeline` on the shipped pretrained base model instead.)
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

RUN = Path("runs/demo")
PROMPTS = ["What is 12 + 7?", "Reverse the word stone.", "What is the capital of Peru?", "Write tiger in upper case."]


def posttrain(*args: str, capture: bool = False) -> str:
    cmd = [sys.executable, "-m", "posttrain", *args]
    print("$ posttrain " + " ".join(shlex.quote(a) for a in args), flush=True)
    p = subprocess.run(cmd, text=True, stdout=subprocess.PIPE if capture else None)
    if p.returncode:
        sys.exit(p.returncode)
    return p.stdout or ""


def answers(model: Path) -> list[str]:
    out = posttrain("generate", "--model", str(model), "--max-new-tokens", "24", "--json",
                    *[a for p in PROMPTS for a in ("--prompt", p)], capture=True)
    return [r["response"] if r["stopped"] else r["response"] + " [no stop]" for r in json.loads(out)]


def main() -> None:
    t0 = time.time()
    base = RUN / "base"
    if not (base / "config.json").exists():
        posttrain("init-model", "--arch", "llama", "--data", "examples/data/demo_sft.jsonl", "--out", str(base),
                  "--hidden", "128", "--layers", "4", "--vocab-size", "1024", "--seed", "0")
    posttrain("sft", "--config", "configs/sft_demo.yaml")
    before, after = answers(base), answers(RUN / "sft" / "model")
    print("\nprompt -> base model | after SFT")
    for p, b, a in zip(PROMPTS, before, after):
        print(f"  {p}\n    base: {b[:60]!r}\n    sft:  {a!r}")
    metrics = [json.loads(x) for x in (RUN / "sft" / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if "train/loss" in m]
    evals = [m for m in metrics if "eval/loss" in m]
    print(f"\ntrain loss {train[0]['train/loss']:.3f} -> {train[-1]['train/loss']:.3f}; "
          f"eval loss {evals[-1]['eval/loss']:.3f} (ppl {evals[-1]['eval/ppl']:.2f})" if evals else "")
    print(f"demo finished in {time.time() - t0:.0f} s; the fine-tuned model is in {RUN / 'sft' / 'model'}")


if __name__ == "__main__":
    main()
