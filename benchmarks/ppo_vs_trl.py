"""PPO throughput on CPU: `posttrain ppo` against TRL's PPOTrainer (TRL 1.12.0), like with like, in one run.

TRL 1.12.0 is the last TRL release that ships PPOTrainer (`trl.experimental.ppo`; 1.13.0 removed it, PR #7020
"Remove PPOTrainer"). It runs in its own environment, `benchmarks/.venv-ppo` (`requirements-ppo.txt`: TRL 1.12.0
with the same transformers 5.24 / accelerate / torch as the project, so no loading shim is needed). This script
runs from the project's `.venv`; each side is a fresh subprocess: TRL as `benchmarks/.venv-ppo/bin/python
benchmarks/ppo_vs_trl.py --worker trl ...`, posttrain as its own CLI, `.venv/bin/python -m posttrain ppo ...`.

Compared, the same on both sides:
- policy: the shipped 5.6M base after the pipeline's SFT (`sampling.sft_model`, trained once into `--sft-dir`);
  the reference a frozen copy of it;
- reward model: one trained once with posttrain into `--rm-dir` (`posttrain prefs generate --policy SFT
  --n-prompts 200 --k 4 --annotator fair`, then `posttrain rm`, 40 steps): an
  AutoModelForSequenceClassification folder with num_labels=1; the value model starts from it on both sides;
- prompts: world train prompts of every family (the recipe's default), the pool of 400 posttrain draws; TRL's
  dataset is exactly the N x 16 prompts posttrain's N steps take, so both see the same prompts over the run (TRL's
  dataloader shuffles them into other batches); each side renders them with the model's own chat template (the
  script checks that TRL's token ids equal posttrain's `Renderer.prompt_ids`);
- 16 prompts a step, one sample each, 64 new tokens at most, temperature 1 (top-p 1, no top-k), stop token = the
  template's end of turn (`<|eos|>`, TRL `stop_token_id`), missing_eos_penalty 1.0;
- 1 PPO epoch, 1 mini-batch of 16 (TRL `per_device_train_batch_size=16`, `gradient_accumulation_steps=1`,
  `num_mini_batches=1`, `num_ppo_epochs=1`, `local_rollout_forward_batch_size=16`; posttrain `mini_batch_size=16`,
  `micro_batch_size=16`, `ppo_epochs=1`): one optimizer step per rollout batch;
- kl_coef (beta) 0.05, k1 estimator, GAE gamma 1 / lam 0.95, cliprange 0.2, cliprange_value 0.2, vf_coef 0.1,
  whitened advantages, no reward whitening; AdamW lr 1e-5, constant, no warm-up, no weight decay, no gradient
  clipping (TRL's PPO loop clips nothing; posttrain `optim.max_grad_norm=0`); fp32, no gradient checkpointing, no
  dropout, 2 threads, seed 0.

Part of what is compared, not equalised: TRL generates with `model.generate` and pads each batch's responses to its
longest (it sets the stop token as the policy's EOS, so a batch ends early only when all 16 samples have stopped),
then truncates each response after its stop token post hoc, and every rollout and training forward pass runs over
the left-padded prompt + that whole width; posttrain decodes with its own loop, stops each sample at its stop token
and packs the sequences without padding. TRL takes the sampling log-probs from `generate`'s scores; posttrain
recomputes them in a forward pass. The reward is read at another token: TRL scores the truncated response at its
last token, the stop token itself; posttrain scores it at the last content token, as `posttrain rm` trained the
reward model (so the two reward curves differ; throughput does not depend on it).

Measured per side: episodes (samples) per second over steps 3..N (wall time from the end of step 2 to the end of
step N: generation, reward, reference, value and policy passes, GAE and the update all count; TRL: a
`TrainerCallback.on_step_end` clock; posttrain: `train/elapsed_s` of its metrics.jsonl); the mean response length
in tokens (the stop token included; TRL's also as the decoded width, the tokens each TRL batch generated and
trained on); episodes per CPU second over the same steps (`eps/cpu s`: CPU seconds of the process, all threads;
less disturbed than wall time when the shared machine is busy: a cross-check, not the headline); peak RSS (the
process's VmHWM over its whole life, libraries and loading included, read from `wait4`'s ru_maxrss); `cpu util`
(CPU over wall seconds of the whole process: about 2 on 2 idle cores; under 1.6 the script warns that something
else was running). The last line is `ratio: X.XX`, posttrain's episodes/s over TRL's.

    .venv/bin/python benchmarks/ppo_vs_trl.py --out runs/bench/ppo_vs_trl.json [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from sampling import (
    ROOT,
    sft_model,  # the shipped base after the pipeline's SFT, trained once (benchmarks/ is on sys.path)
)

SETTINGS = {"prompts": 16, "max_new": 64, "lr": 1e-5, "beta": 0.05, "missing_eos_penalty": 1.0, "seed": 0,
            "threads": 2, "pool": 400}
POSTTRAIN_PY = ROOT / ".venv" / "bin" / "python"
TRL_PY = ROOT / "benchmarks" / ".venv-ppo" / "bin" / "python"
ENV = {"OMP_NUM_THREADS": str(SETTINGS["threads"]), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
       "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
       "TRL_EXPERIMENTAL_SILENCE": "1"}


def timed(t_end: dict[int, float], eps: int, skip: int = 2) -> float:
    n = max(t_end)
    return (n - skip) * eps / (t_end[n] - t_end[skip])


def run_child(cmd: list, log: Path) -> tuple[int, float, float, float]:
    """Run `cmd` (stdout and stderr to `log`); (exit code, wall seconds, peak RSS in MiB: ru_maxrss of wait4,
    CPU seconds over wall seconds: about 2 on 2 idle cores)."""
    t = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, env=os.environ | ENV)
        _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    return p.returncode, wall, usage.ru_maxrss / 1024, (usage.ru_utime + usage.ru_stime) / wall


def reward_model(sft: Path, rm_dir: Path) -> Path:
    """A reward model trained once with posttrain on preference data from the SFT policy's own samples."""
    model = rm_dir / "rm" / "model"
    if not (model / "config.json").exists():
        print(f"reward model into {rm_dir}: posttrain prefs generate, then posttrain rm (about 5 minutes) ...",
              flush=True)
        rm_dir.mkdir(parents=True, exist_ok=True)
        prefs = rm_dir / "prefs.jsonl"
        subprocess.run([sys.executable, "-m", "posttrain", "prefs", "generate", "--policy", str(sft),
                        "--n-prompts", "200", "--k", "4", "--annotator", "fair", "--out", str(prefs)],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run([sys.executable, "-m", "posttrain", "rm", f"model={sft}", f"data={prefs}",
                        f"output_dir={rm_dir / 'rm'}", "max_steps=40", "batch_size=16", "optim.lr=1e-4",
                        f"threads={SETTINGS['threads']}", "save_every=0", "resume=false"],
                       check=True, stdout=subprocess.DEVNULL, env=os.environ | ENV)
    return model


def step_prompts(steps: int) -> tuple[list[list[dict]], list]:
    """The prompts posttrain ppo's `steps` steps take (its pool and its seeded order): as message lists (for TRL)
    and as the world's tasks."""
    from posttrain.config import load_config
    from posttrain.recipes.common import DataStream
    from posttrain.recipes.ppo import PPOConfig
    from posttrain.world import sample_tasks

    s = SETTINGS
    cfg = load_config(PPOConfig, None, [f"prompts.pool={s['pool']}", f"seed={s['seed']}", f"batch_size={s['prompts']}"])
    pool = sample_tasks(cfg.prompts.pool, "train", seed=cfg.seed, families=cfg.prompts.families, distinct=True)
    stream = DataStream(len(pool), cfg.batch_size, cfg.seed)
    tasks = [pool[i] for step in range(steps) for i in stream.step_units(step)]
    return [[{"role": m.role, "content": m.content} for m in t.messages] for t in tasks], tasks


def run_trl(sft: str, rm: str, steps: int, work: str, prompts_file: str) -> dict:
    import torch
    import trl
    import trl.experimental.ppo.ppo_trainer as ppo_trainer
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    s = SETTINGS
    torch.set_num_threads(s["threads"])
    tok = AutoTokenizer.from_pretrained(sft, padding_side="left")
    stop_id = tok.eos_token_id  # the template closes an assistant turn with eos_token (posttrain's stop token)
    messages = json.loads(Path(prompts_file).read_text())
    ids = [tok(tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False), add_special_tokens=False)
           ["input_ids"] for m in messages]
    ds = Dataset.from_dict({"input_ids": ids})

    widths: list[int] = []
    lengths: list[int] = []
    stopped: list[bool] = []
    generate_batches = ppo_trainer.batch_generation

    def recorded(model, queries, *a, **kw):  # TRL's own function; this only reads its output
        query_responses, logits = generate_batches(model, queries, *a, **kw)
        resp = query_responses[:, queries.shape[1]:]
        hit = resp == stop_id
        has = hit.any(1)
        widths.append(resp.shape[1])
        lengths.extend(torch.where(has, hit.int().argmax(1) + 1, resp.shape[1]).tolist())
        stopped.extend(has.tolist())
        return query_responses, logits

    ppo_trainer.batch_generation = recorded
    t_end: dict[int, float] = {}
    c_end: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            t_end[state.global_step] = time.perf_counter()
            c_end[state.global_step] = time.process_time()

    cfg = PPOConfig(
        output_dir=str(Path(work) / "trl"), per_device_train_batch_size=s["prompts"], gradient_accumulation_steps=1,
        num_mini_batches=1, num_ppo_epochs=1, local_rollout_forward_batch_size=s["prompts"],
        total_episodes=steps * s["prompts"], response_length=s["max_new"], temperature=1.0, stop_token_id=stop_id,
        missing_eos_penalty=s["missing_eos_penalty"], kl_coef=s["beta"], kl_estimator="k1", cliprange=0.2,
        cliprange_value=0.2, vf_coef=0.1, gamma=1.0, lam=0.95, whiten_rewards=False, learning_rate=s["lr"],
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, bf16=False, fp16=False, use_cpu=True,
        gradient_checkpointing=False, logging_steps=1, save_strategy="no", report_to=[], seed=s["seed"],
        num_sample_generations=0, dataloader_num_workers=0, disable_tqdm=True, sft_model_path=sft,
        reward_model_path=rm)
    policy = AutoModelForCausalLM.from_pretrained(sft, dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(rm, num_labels=1, dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(rm, num_labels=1, dtype=torch.float32)
    trainer = PPOTrainer(args=cfg, processing_class=tok, model=policy, ref_model=None, reward_model=reward,
                         value_model=value, train_dataset=ds, callbacks=[Clock()])
    trainer.train()
    logs = [r for r in trainer.state.log_history if "objective/scores" in r]
    return {"episodes_per_s": round(timed(t_end, s["prompts"]), 2),
            "episodes_per_cpu_s": round(timed(c_end, s["prompts"]), 3),
            "mean_length": round(sum(lengths) / len(lengths), 1),
            "mean_width": round(sum(widths) / len(widths), 1), "stopped": round(sum(stopped) / len(stopped), 3),
            "score_first": logs[0]["objective/scores"], "score_last": logs[-1]["objective/scores"],
            "kl_last": logs[-1]["objective/kl"], "steps": max(t_end), "widths": widths,
            "prompt_ids": ids, "version": f"trl {trl.__version__}"}


def run_posttrain(sft: str, rm: str, steps: int, work: str) -> tuple[list, Path]:
    s = SETTINGS
    out = Path(work) / "posttrain"
    cmd = [POSTTRAIN_PY, "-m", "posttrain", "ppo", f"model={sft}", f"rewards=rm:{rm}", f"value_model={rm}",
           f"batch_size={s['prompts']}", f"mini_batch_size={s['prompts']}", f"micro_batch_size={s['prompts']}",
           "ppo_epochs=1", f"max_new_tokens={s['max_new']}", f"beta={s['beta']}", "kl_estimator=k1",
           f"missing_eos_penalty={s['missing_eos_penalty']}", "temperature=1.0", "top_p=1.0",
           f"optim.lr={s['lr']}", "optim.schedule=constant", "optim.warmup_steps=0", "optim.weight_decay=0",
           "optim.max_grad_norm=0", f"max_steps={steps}", f"threads={s['threads']}", "precision=fp32",
           f"output_dir={out}", "save_every=0", "log_every=1", "log_samples=0", f"prompts.pool={s['pool']}",
           f"seed={s['seed']}", "resume=false"]
    return cmd, out


def posttrain_result(out: Path) -> dict:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    t_end = {r["step"]: r["train/elapsed_s"] for r in rows}
    c_end = {r["step"]: r["train/cpu_s"] for r in rows}
    return {"episodes_per_s": round(timed(t_end, SETTINGS["prompts"]), 2),
            "episodes_per_cpu_s": round(timed(c_end, SETTINGS["prompts"]), 3),
            "mean_length": round(sum(r["completions/mean_length"] for r in rows) / len(rows), 1),
            "stopped": round(1 - sum(r["completions/clipped_ratio"] for r in rows) / len(rows), 3),
            "score_first": rows[0]["objective/scores"], "score_last": rows[-1]["objective/scores"],
            "kl_last": rows[-1]["objective/kl"], "steps": len(rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--sft-dir", default="runs/bench/sampling_sft", help="where the SFT policy is trained, once")
    ap.add_argument("--rm-dir", default="runs/bench/ppo_rm", help="where the reward model is trained, once")
    ap.add_argument("--sides", default="trl,posttrain")
    ap.add_argument("--work", default="runs/bench/ppo_vs_trl_work", help="run folders, logs and the prompts file")
    ap.add_argument("--out", default="")
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.update(ENV)
    if args.worker:  # in benchmarks/.venv-ppo
        sft, rm, work, prompts_file, out = args.worker
        Path(out).write_text(json.dumps(run_trl(sft, rm, args.steps, work, prompts_file)))
        return
    if args.steps < 3:
        ap.error("--steps must be at least 3 (steps 3..N are timed)")
    for py in (POSTTRAIN_PY, TRL_PY):
        if not py.exists():
            sys.exit(f"{py} is missing: set up the environments first (benchmarks/README.md, or make bench-ppo)")
    sft = sft_model(Path(args.sft_dir))
    rm = reward_model(sft, Path(args.rm_dir))
    messages, tasks = step_prompts(args.steps)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "prompts.json").write_text(json.dumps(messages))
    results: dict = {}
    checks: dict = {}
    for side in [x for x in args.sides.split(",") if x]:
        if side == "trl":
            res_file = work / "trl_result.json"
            res_file.unlink(missing_ok=True)
            cmd = [TRL_PY, Path(__file__).resolve(), "--steps", args.steps, "--worker", sft, rm, work,
                   work / "prompts.json", res_file]
        else:
            cmd, out = run_posttrain(str(sft), str(rm), args.steps, str(work))
        rc, wall, peak, util = run_child(cmd, work / f"{side}.log")
        print(f"[{side}: {wall:.0f} s, exit {rc}, log {work / f'{side}.log'}]", flush=True)
        if rc != 0:
            results[side] = {"error": f"exit code {rc}"}
            continue
        r = json.loads(res_file.read_text()) if side == "trl" else posttrain_result(out)
        results[side] = r | {"peak_rss_mb": round(peak), "wall_s": round(wall, 1), "cpu_util": round(util, 2),
                             "loadavg_after": round(os.getloadavg()[0], 2)}
        if util < 1.6:
            warn = (f"{side} got {util:.2f} cores of {SETTINGS['threads']} (load average {os.getloadavg()[0]:.1f}): "
                    "something else is running; rerun on a quiet machine")
            checks.setdefault("warnings", []).append(warn)
            print(f"warning: {warn}")
    if "trl" in results and "prompt_ids" in results["trl"]:
        from posttrain.data.render import Renderer
        from posttrain.models.load import load_tokenizer

        tok = load_tokenizer(str(sft))
        renderer = Renderer(tok, 1024)
        checks["stop_token_ids"] = {"posttrain": renderer.stop_token_ids(), "trl": tok.eos_token_id}
        print(f"stop token: posttrain {renderer.stop_token_ids()}, TRL stop_token_id {tok.eos_token_id}")
        ours = [renderer.prompt_ids(t.messages) for t in tasks]
        same = sum(a == b for a, b in zip(results["trl"].pop("prompt_ids"), ours))
        checks["prompt_ids_identical"] = [same, len(ours)]
        print(f"prompt token ids identical (TRL's chat template render vs posttrain's Renderer): {same}/{len(ours)}")
    trl_version = results.get("trl", {}).get("version", "trl")
    s = SETTINGS
    print(f"\n{s['prompts']} prompts x 1 sample a step, {s['max_new']} new tokens at most, 1 PPO epoch, 1 mini-batch, "
          f"beta {s['beta']}, lr {s['lr']}, fp32, {s['threads']} threads, {args.steps} steps (3..N timed)\n"
          f"policy {sft}, reward and value model {rm}")
    print(f"{'run':18}{'episodes/s':>12}{'eps/cpu s':>10}{'mean len':>10}{'width':>8}{'stopped':>9}{'peak MiB':>10}"
          f"{'score@1':>9}{'score@N':>9}{'cpu util':>9}")
    for side, r in results.items():
        name = trl_version if side == "trl" else "posttrain ppo"
        if "error" in r:
            print(f"{name:18}{r['error']:>12}")
            continue
        width = f"{r['mean_width']:.1f}" if "mean_width" in r else "-"
        print(f"{name:18}{r['episodes_per_s']:>12.2f}{r['episodes_per_cpu_s']:>10.3f}{r['mean_length']:>10.1f}{width:>8}{r['stopped']:>9.2f}"
              f"{r['peak_rss_mb']:>10}{r['score_first']:>9.3f}{r['score_last']:>9.3f}{r['cpu_util']:>9.2f}")
    ours = results.get("posttrain", {}).get("episodes_per_s")
    theirs = results.get("trl", {}).get("episodes_per_s")
    ratio = ours / theirs if ours and theirs else float("nan")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"settings": SETTINGS, "steps": args.steps, "policy": str(sft),
                                              "reward_model": str(rm), "checks": checks, "results": results,
                                              "ratio": ratio},
                                             indent=2))
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
