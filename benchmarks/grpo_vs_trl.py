"""GRPO throughput on CPU: posttrain grpo against TRL's GRPOTrainer, like with like, in one run.

Compared: GRPO from the same model (the shipped 5.6M base after the pipeline's SFT, trained once into
`--sft-dir`, as `benchmarks/sampling.py` does: its answers stop, as a policy's do), the same prompts (world train
prompts of the verifiable families, as chat messages, rendered by the model's own chat template on both sides),
the same reward (the world's gold, a plain function on both sides), group size (8), prompts per step (16: 128
episodes), generation budget (64 new tokens), temperature (1), updates per batch (1: TRL `num_iterations=1`,
one optimizer step per generation batch), micro-batch (32 sequences: TRL `per_device_train_batch_size=32`,
`gradient_accumulation_steps=4`), loss (token mean over the step: TRL `loss_type="dapo"`, posttrain
`loss_aggregation=token_mean`), group-scaled advantages, epsilon 0.2, beta 0.04 (both keep a frozen reference
model), AdamW at lr 1e-4, fp32, no gradient checkpointing, 2 threads. Each run is a fresh subprocess.

TRL modes (TRL 1.16, no vLLM on this CPU): `generate` (its default: `model.generate`) and `paged`
(`use_transformers_paged=True`: transformers' paged-attention continuous batching, TRL's fastest non-vLLM
option where it works). posttrain: its default (its own decode loop).

Measured per run: episodes (completions) per second over steps 3..N (wall time from the end of step 2 to the end
of step N: generation, rewards, reference and policy passes and the update all count); mean completion length
(a policy that learns to answer shorter is cheaper: both sides' lengths are printed); peak RSS during training
(Linux VmHWM, reset when training starts). The last line is `ratio: X.XX`, posttrain's episodes/s over TRL's
best mode's.

    benchmarks/.venv/bin/python benchmarks/grpo_vs_trl.py --out runs/bench/grpo_vs_trl.json [--steps 12]

Measured 2026-12-01 (`--steps 8`, 2 shared cores; `results/grpo_vs_trl_2026-12-01.json`): posttrain 33.1
episodes/s, TRL 1.16 11.3 (`model.generate`) and 8.3 (paged); ratio 2.93; peak RSS 829 MiB against 1,452 and
5,929 MiB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sampling import (
    sft_model,  # the shipped base after the pipeline's SFT, trained once (benchmarks/ is on sys.path)
)

TRL_MODES = ("generate", "paged")
SETTINGS = {"prompts": 16, "group": 8, "max_new": 64, "micro": 32, "lr": 1e-4, "beta": 0.04, "seed": 0,
            "threads": 2, "pool": 400}


def _hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _reset_hwm() -> None:
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def timed(t_end: dict[int, float], eps: int, skip: int = 2) -> float:
    n = max(t_end)
    return (n - skip) * eps / (t_end[n] - t_end[skip])


def run_posttrain(model: str, steps: int, work: str) -> dict:
    from posttrain.config import load_config
    from posttrain.recipes import grpo

    s = SETTINGS
    out = Path(work) / "posttrain"
    cfg = load_config(grpo.GRPOConfig, None, [
        f"model={model}", f"output_dir={out}", f"max_steps={steps}", f"batch_size={s['prompts']}",
        f"group_size={s['group']}", f"max_new_tokens={s['max_new']}", f"micro_batch_size={s['micro']}",
        f"optim.lr={s['lr']}", "optim.warmup_steps=0", "optim.schedule=constant", f"beta={s['beta']}",
        f"prompts.pool={s['pool']}", f"threads={s['threads']}", "save_every=0", "log_samples=0"])
    _reset_hwm()
    grpo.main(cfg)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    t_end = {r["step"]: r["train/elapsed_s"] for r in rows}
    return {"episodes_per_s": round(timed(t_end, s["prompts"] * s["group"]), 2), "peak_rss_mb": round(_hwm_mb()),
            "mean_length": round(sum(r["completions/mean_length"] for r in rows) / len(rows), 1),
            "reward_first": rows[0]["reward"], "reward_last": rows[-1]["reward"], "steps": len(rows)}


def run_trl(model: str, steps: int, work: str, mode: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from posttrain.recipes.grpo import VERIFIABLE
    from posttrain.world import sample_tasks
    from posttrain.world import score as world_score

    s = SETTINGS
    torch.set_num_threads(s["threads"])
    pool = sample_tasks(s["pool"], "train", seed=s["seed"], families=VERIFIABLE, distinct=True)
    ds = Dataset.from_list([{"prompt": [{"role": m.role, "content": m.content} for m in t.messages], "task": i}
                            for i, t in enumerate(pool)])
    lengths: list[float] = []

    def gold(prompts, completions, task, completion_ids=None, **kw):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        lengths.extend(len(x) for x in (completion_ids or []))
        return [world_score(pool[i], x.removeprefix(" "), True).gold for i, x in zip(task, texts)]

    t_end: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            t_end[state.global_step] = time.perf_counter()

    cfg = GRPOConfig(
        output_dir=str(Path(work) / f"trl_{mode}"), max_steps=steps, learning_rate=s["lr"], lr_scheduler_type="constant",
        warmup_steps=0, per_device_train_batch_size=s["micro"],
        gradient_accumulation_steps=s["prompts"] * s["group"] // s["micro"], num_generations=s["group"],
        max_completion_length=s["max_new"], temperature=1.0, top_p=1.0, beta=s["beta"], epsilon=0.2,
        num_iterations=1, loss_type="dapo", scale_rewards="group", bf16=False, fp16=False, use_cpu=True,
        gradient_checkpointing=False, logging_steps=1, save_strategy="no", report_to=[], seed=s["seed"],
        dataloader_num_workers=0, disable_dropout=True, use_transformers_paged=(mode == "paged"))
    tok = AutoTokenizer.from_pretrained(model)
    policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    trainer = GRPOTrainer(model=policy, reward_funcs=gold, args=cfg, train_dataset=ds, processing_class=tok,
                          callbacks=[Clock()])
    _reset_hwm()
    trainer.train()
    logs = [r for r in trainer.state.log_history if "reward" in r]
    return {"episodes_per_s": round(timed(t_end, s["prompts"] * s["group"]), 2), "peak_rss_mb": round(_hwm_mb()),
            "mean_length": round(sum(r.get("completions/mean_length", 0) for r in logs) / max(len(logs), 1), 1),
            "reward_first": logs[0]["reward"] if logs else None, "reward_last": logs[-1]["reward"] if logs else None,
            "steps": max(t_end)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--sft-dir", default="runs/bench/sampling_sft")
    ap.add_argument("--trl-modes", default=",".join(TRL_MODES))
    ap.add_argument("--out", default="")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.update(OMP_NUM_THREADS=str(SETTINGS["threads"]), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
                      HF_DATASETS_OFFLINE="1", TQDM_DISABLE="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    if args.worker:
        name, model, work, out = args.worker
        kind, _, mode = name.partition(":")
        res = run_posttrain(model, args.steps, work) if kind == "posttrain" else run_trl(model, args.steps, work, mode)
        Path(out).write_text(json.dumps(res))
        return
    model = str(sft_model(Path(args.sft_dir)))
    names = [f"trl:{m}" for m in args.trl_modes.split(",") if m] + ["posttrain:default"]
    results = {}
    with tempfile.TemporaryDirectory(prefix="grpo_vs_trl_") as work:
        for name in names:
            out = f"{work}/{name.replace(':', '_')}.json"
            t = time.perf_counter()
            rc = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--worker", name, model, work,
                                 out]).returncode
            print(f"[{name}: {time.perf_counter() - t:.0f} s, exit {rc}]", flush=True)
            results[name] = json.loads(Path(out).read_text()) if rc == 0 else {"error": f"exit code {rc}"}
    s = SETTINGS
    print(f"\n{s['prompts']} prompts x {s['group']} samples a step, {s['max_new']} new tokens, micro-batch "
          f"{s['micro']}, beta {s['beta']}, fp32, {args.steps} steps (3..N timed), model {model}")
    print(f"{'run':22}{'episodes/s':>12}{'mean len':>10}{'peak MiB':>10}{'reward@1':>10}{'reward@N':>10}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:22}{r['error']:>12}")
            continue
        print(f"{name:22}{r['episodes_per_s']:>12.2f}{r['mean_length']:>10.1f}{r['peak_rss_mb']:>10}"
              f"{r['reward_first']:>10.3f}{r['reward_last']:>10.3f}")
    trl = [r["episodes_per_s"] for n, r in results.items() if n.startswith("trl") and "error" not in r]
    ours = results["posttrain:default"].get("episodes_per_s")
    ratio = ours / max(trl) if trl and ours else float("nan")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"settings": SETTINGS, "steps": args.steps, "results": results,
                                              "ratio": ratio}, indent=2))
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
