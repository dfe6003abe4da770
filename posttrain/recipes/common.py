"""Loop plumbing every recipe calls (never inherits): accelerate setup, seeding, the data stream, gradient
accumulation, the optimizer step with its NaN guard, checkpoints of several models and optimizers that resume
exactly, metrics to metrics.jsonl and TensorBoard, the progress bar, and the run folder (`open_run`, `Run`).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from tqdm.auto import tqdm

from posttrain.config import doc, result_diff, save_config
from posttrain.data.formats import load_examples
from posttrain.errors import TrainingDiverged, UserError
from posttrain.io import atomic_dir, atomic_write_json, check_writable
from posttrain.losses.sft import nll_sum, token_mean
from posttrain.models.forward import response_logits
from posttrain.models.load import load_model, save_model


@dataclass
class OptimConfig:
    lr: float = doc(2e-5, "peak learning rate (AdamW)", ge=0)
    weight_decay: float = doc(0.0, "AdamW weight decay", ge=0)
    beta1: float = doc(0.9, "AdamW beta1", ge=0, lt=1)
    beta2: float = doc(0.999, "AdamW beta2", ge=0, lt=1)
    eps: float = doc(1e-8, "AdamW epsilon", gt=0)
    warmup_steps: int = doc(0, "linear warmup steps", ge=0)
    schedule: Literal["cosine", "linear", "constant"] = doc("cosine", "decay after warmup")
    min_lr_ratio: float = doc(0.0, "final learning rate as a fraction of the peak", ge=0, le=1)
    max_grad_norm: float = doc(1.0, "clip the global gradient norm (0: no clipping)", ge=0)


@dataclass
class ModelConfig:
    PRIMARY: ClassVar[str] = "path"
    path: str = doc("", "Hugging Face model folder or hub id to train")
    gradient_checkpointing: bool = doc(False, "recompute activations in the backward pass to save memory",
                                      changes_result=False)


@dataclass
class LoraConfig:
    enabled: bool = doc(False, "train LoRA adapters instead of all weights")
    r: int = doc(16, "LoRA rank", ge=1)
    alpha: int = doc(32, "LoRA alpha (scale = alpha / r)", gt=0)
    dropout: float = doc(0.0, "dropout on the LoRA input", ge=0, lt=1)
    target_modules: list[str] = doc([], "module names to adapt; empty: every linear layer in the blocks")
    merge: bool = doc(True, "also write the merged full model to model/ (the adapter goes to adapter/)",
                       changes_result=False)


@dataclass
class RunConfig:
    """The fields every training recipe has; a recipe's config adds its own sections and fields.

    Fields marked `changes_result=False` may differ when a run resumes (they change how it runs, not what it
    computes; `micro_batch_size` and `compile` included: the loss divides by global token counts, tested).
    """

    output_dir: str = doc("runs/run", "run folder: config.yaml, metrics.jsonl, tb/, checkpoints/, model/, result.json",
                          changes_result=False)
    seed: int = doc(0, "seed for initialisation, data order and dropout", ge=0)
    max_steps: int = doc(0, "optimizer steps (0: as many as `epochs` epochs take; result.json records the count)",
                         ge=0)
    epochs: float = doc(1.0, "epochs over the training data when max_steps is 0", gt=0)
    batch_size: int = doc(16, "examples (or packed rows) per optimizer step, over all processes and accumulation",
                          ge=1)
    micro_batch_size: int = doc(4, "examples (or packed rows) per forward pass on one process", ge=1,
                                changes_result=False)
    precision: Literal["fp32", "bf16"] = doc("fp32", "fp32, or bf16 autocast")
    compile: bool = doc(False, "torch.compile the model: faster steps after a one-off compile (about a minute on CPU)",
                        changes_result=False)
    log_every: int = doc(1, "log metrics every N steps", ge=1, changes_result=False)
    save_every: int = doc(0, "checkpoint every N steps (0: no intermediate checkpoints)", ge=0, changes_result=False)
    keep_checkpoints: int = doc(2, "how many checkpoints to keep", ge=1, changes_result=False)
    resume: bool = doc(True, "continue the run in output_dir from its newest checkpoint (refused when its settings "
                             "differ); false: start over, replacing that run", changes_result=False)
    threads: int = doc(0, "torch CPU threads (0: torch's default)", ge=0, changes_result=False)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_accelerator(precision: str, seed: int, threads: int = 0) -> Accelerator:
    """Accelerator for fp32 or bf16 autocast; torch threads set when `threads` > 0; all RNGs seeded."""
    if threads > 0:
        torch.set_num_threads(threads)
    # Several recipes may run in one process (the pipeline, notebooks, tests): the accelerator settings are
    # per run, while the process group (PartialState) is kept.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    # cpu=True on a machine without CUDA makes several launched processes a gloo process group (MULTI_CPU).
    acc = Accelerator(mixed_precision="bf16" if precision == "bf16" else "no", cpu=not torch.cuda.is_available())
    seed_everything(seed)
    return acc


def no_sync(acc: Accelerator, model: torch.nn.Module, skip_sync: bool):
    """Skip the gradient all-reduce on accumulation micro-batches (only the last one syncs)."""
    return acc.no_sync(model) if skip_sync and acc.num_processes > 1 else contextlib.nullcontext()


class DataStream:
    """Which units (examples or packed rows) each optimizer step uses: a pure function of (seed, step).

    Epoch e visits the units in a permutation seeded by (seed, e); the stream runs on across epochs.
    Because the order depends on nothing but the seed and the step, a resumed run sees exactly the
    batches an uninterrupted one would, with no sampler state to save.
    """

    def __init__(self, n_units: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n_units, batch_size, seed
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=g).tolist()
        return self._perms[epoch]

    def step_units(self, step: int) -> list[int]:
        """Global batch of optimizer step `step` (0-based)."""
        out = []
        for j in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, i = divmod(j, self.n)
            out.append(self._perm(epoch)[i])
        return out


def shard(units: list[int], rank: int, world: int, micro: int) -> list[list[int]]:
    """This process's contiguous share of the global batch, cut into micro-batches."""
    per = len(units) // world
    mine = units[rank * per : (rank + 1) * per]
    return [mine[i : i + micro] for i in range(0, len(mine), micro)]


def lr_lambda(warmup: int, total: int, schedule: str, min_ratio: float):
    """Multiplier of the peak learning rate at a step: linear warmup, then cosine/linear decay or constant."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
        return min_ratio + (1 - min_ratio) * decay

    return f


class MetricsLog:
    """Appends one JSON object per logged step to metrics.jsonl and mirrors scalars to TensorBoard (rank 0).
    `name` and `tensorboard=False` make the same log for other rows (GRPO's samples.jsonl)."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int = 0, name: str = "metrics.jsonl",
                 tensorboard: bool = True):
        self.enabled = enabled
        self.path = run_dir / name
        self.tb = None
        if not enabled:
            return
        if resume_step and self.path.exists():  # drop lines past the checkpoint: they will be logged again
            keep = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        elif self.path.exists():
            self.path.unlink()
        if not tensorboard:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step + 1 if resume_step else None)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in metrics.items():
            if self.tb is not None and isinstance(v, (int, float)):
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def build_model(model_cfg: ModelConfig, lora: LoraConfig, compile: bool = False):
    """The model to train: loaded in float32, optionally wrapped in LoRA, optionally with gradient checkpointing
    and compiled (in place: parameter names, and so checkpoints and saving, are unchanged)."""
    model = load_model(model_cfg.path)
    model.config.use_cache = False
    if lora.enabled:
        from posttrain.models.lora import apply_lora

        model = apply_lora(model, lora.r, lora.alpha, lora.dropout, lora.target_modules or None)
    if model_cfg.gradient_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    if compile:
        model.compile()
    return model


def save_final(out: Path, model, tok, stop_ids: list[int], lora: LoraConfig) -> Path:
    """model/ (a plain Hugging Face folder); with LoRA also adapter/, and model/ holds the merged weights."""
    model.config.use_cache = True  # training turned the cache off; a saved model generates with it
    if not lora.enabled:
        save_model(model, tok, out / "model", stop_ids)
        return out / "model"
    save_model(model, tok, out / "adapter", stop_ids)
    if not lora.merge:
        return out / "adapter"
    save_model(model.merge_and_unload(), tok, out / "model", stop_ids)
    return out / "model"


def load_split(data, seed: int, kind: type, needs: str) -> tuple[str, list, list]:
    """A recipe's data section read and split: (format, training examples, held-out examples). `data` has
    path, format, limit, eval_path and eval_fraction; every example must be a `kind` (else one line saying the
    recipe `needs` what); the held-out part is `eval_path`, or a seeded `eval_fraction` of the file."""
    if not data.path:
        raise UserError("data: no training data given (set data=FILE or data.path in the config)")
    fmt, examples = load_examples(data.path, data.format, limit=data.limit or None)
    if not all(isinstance(e, kind) for e in examples):
        raise UserError(f"data: '{data.path}' is {fmt} data; {needs}")
    if data.eval_path:
        eval_fmt, held = load_examples(data.eval_path, data.format)
        if not all(isinstance(e, kind) for e in held):
            raise UserError(f"data.eval_path: '{data.eval_path}' is {eval_fmt} data; {needs}")
        return fmt, examples, held
    if data.eval_fraction > 0:
        return fmt, *split_off(examples, data.eval_fraction, seed)
    return fmt, examples, []


def split_off(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """(kept, held out): a seeded random `fraction` of `items` (at least one) held out for evaluation, both in
    their original order."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(items), generator=g).tolist()
    n_eval = max(1, int(len(items) * fraction))
    return [items[i] for i in sorted(order[n_eval:])], [items[i] for i in sorted(order[:n_eval])]


def check_batch(batch_size: int, micro_batch_size: int, world: int) -> None:
    """The global batch must split evenly into micro-batches on every process."""
    if batch_size % (micro_batch_size * world):
        raise UserError(f"batch_size ({batch_size}) must be a multiple of micro_batch_size "
                        f"({micro_batch_size}) x processes ({world})")


def total_steps(cfg: RunConfig, n_units: int, unit: str) -> tuple[int, str]:
    """The run's optimizer steps and how they were chosen: `max_steps`, or as many as `epochs` epochs of
    `n_units` units (examples or packed rows) take at `batch_size` (at least one)."""
    if cfg.max_steps:
        return cfg.max_steps, f"{cfg.max_steps} steps"
    steps = max(1, int(cfg.epochs * n_units // cfg.batch_size))
    return steps, f"{steps} steps ({cfg.epochs:g} epoch{'s' if cfg.epochs != 1 else ''} of {n_units} {unit}, max_steps=0)"


def make_optimizer(params: list[torch.nn.Parameter], o: OptimConfig, max_steps: int):
    """AdamW and its warmup-then-decay schedule (a `LambdaLR` stepped once per optimizer step)."""
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(o.warmup_steps, max_steps, o.schedule, o.min_lr_ratio))
    return optimizer, scheduler


def accumulate(acc: Accelerator, model: torch.nn.Module, micro_batches: list, loss_of) -> torch.Tensor:
    """Forward and backward every micro-batch of one optimizer step; returns the summed (detached) loss.

    `loss_of(micro_batch)` returns this micro-batch's share of the step's loss, already divided by the
    global count (see `losses/sft.py:token_mean`), so the shares add up to the loss of the whole global batch.
    Gradients are all-reduced on the last micro-batch only, and multiplied by the number of processes
    because DDP averages them while the sum is what the global-count loss needs.
    """
    total = torch.zeros((), device=acc.device)
    for i, mb in enumerate(micro_batches):
        with no_sync(acc, model, i < len(micro_batches) - 1), acc.autocast():
            loss = loss_of(mb)
            acc.backward(loss * acc.num_processes)
        total += loss.detach()
    return total


def lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], n_global: int) -> torch.Tensor:
    """Next-token NLL of the trained tokens of `batch` (SFT and pretraining), divided by the step's global
    trained-token count; the output head runs only where a trained token is predicted."""
    logits, targets = response_logits(model, batch)
    s, _ = nll_sum(logits, targets)
    return token_mean(s, n_global)


def optimizer_step(acc: Accelerator, params, optimizer, scheduler, loss_sum: torch.Tensor, max_grad_norm: float,
                   step: int, ckpt_dir: Path) -> dict[str, float]:
    """End an optimizer step: clip, sum the loss over processes, stop on a non-finite value (before the weights
    change), step optimizer and schedule. Returns the step's loss, the learning rate it used and the grad norm."""
    grad_norm = acc.clip_grad_norm_(params, max_grad_norm) if max_grad_norm > 0 else None
    loss = acc.reduce(loss_sum, reduction="sum").item()
    check_finite(loss + (float(grad_norm) if grad_norm is not None else 0.0), step, ckpt_dir)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    out = {"train/loss": loss, "train/lr": lr}
    if grad_norm is not None:
        out["train/grad_norm"] = float(grad_norm)
    return out


def check_finite(value: float, step: int, ckpt_dir: Path) -> None:
    """Stop the run, writing nothing, when the loss or gradient norm is NaN or infinite."""
    if not math.isfinite(value):
        last = latest_checkpoint(ckpt_dir)
        where = f"the last good checkpoint is {last}" if last else "no checkpoint was written"
        raise TrainingDiverged(f"non-finite loss or gradient ({value}) at step {step}; stopped without saving; {where}")


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    done = sorted(p for p in ckpt_dir.glob("step-*") if (p / "state.pt").exists())
    return done[-1] if done else None


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(ckpt_dir: Path, step: int, models: dict[str, torch.nn.Module], optimizers: dict, schedulers: dict,
                    keep: int, extra: dict | None = None) -> Path:
    """Write checkpoints/step-N atomically, keeping the newest `keep`: every named model's trainable weights, every
    named optimizer and schedule (PPO has a policy and a value model), the RNG states and `extra`."""
    path = ckpt_dir / f"step-{step:07d}"
    state = {
        "step": step,
        "models": {name: _trainable_state(m) for name, m in models.items()},
        "optimizers": {name: o.state_dict() for name, o in optimizers.items()},
        "schedulers": {name: s.state_dict() for name, s in schedulers.items()},
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
        "extra": extra or {},
    }
    with atomic_dir(path) as tmp:
        torch.save(state, tmp / "state.pt")
    done = sorted(p for p in ckpt_dir.glob("step-*") if (p / "state.pt").exists())
    for old in done[: max(0, len(done) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint(path: Path, models: dict[str, torch.nn.Module], optimizers: dict, schedulers: dict) -> tuple[int, dict]:
    """Restore a checkpoint written by `save_checkpoint` into the same named models, optimizers and schedules;
    returns its step and `extra`."""
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    with torch.no_grad():
        for name, model in models.items():
            params = dict(model.named_parameters())
            for n, t in state["models"][name].items():
                params[n].copy_(t)
    for name, o in optimizers.items():
        o.load_state_dict(state["optimizers"][name])
    for name, sch in schedulers.items():
        sch.load_state_dict(state["schedulers"][name])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    return int(state["step"]), state["extra"]


# What a run folder holds besides config.yaml; `resume=false` removes them before starting over.
RUN_FILES = ("checkpoints", "metrics.jsonl", "tb", "model", "adapter", "reference", "result.json")


class Run:
    """One training run's folder and bookkeeping, used (never inherited) by every recipe's loop:

        run = common.open_run(cfg, acc, "sft")          # output_dir checked; a saved run's settings compared
        if run.finished: return run.result["metrics"]   # the same run already ended
        ...                                              # data, model, optimizer
        start = run.resume({"model": model}, {"model": optimizer}, {"model": scheduler}, max_steps, what)
        for step in range(start, max_steps):
            ...                                          # accumulate, optimizer_step
            run.step_done(step + 1, metrics, tokens)     # throughput, metrics.jsonl/TensorBoard, bar, checkpoint
        ...                                              # save the model
        return run.finish(metrics)                       # result.json: the steps taken and the final metrics

    A rerun of the same command continues from the newest checkpoint and ends exactly as an uninterrupted run;
    a rerun with other settings (`config.result_diff`) is refused, naming the keys; the config a run trained
    with is written once and never overwritten by a resume.
    """

    def __init__(self, cfg: RunConfig, acc: Accelerator, name: str, resuming: bool):
        self.cfg, self.acc, self.name = cfg, acc, name
        self.out = Path(cfg.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.main = acc.is_main_process
        self.resuming = resuming
        self.result = _read_json(self.out / "result.json") if resuming else None
        self.finished = self.result is not None
        self.models: dict = {}
        self.optimizers: dict = {}
        self.schedulers: dict = {}
        self.max_steps = 0
        self.log: MetricsLog | None = None
        self.bar = None
        self.seen_tokens = 0
        self.t0 = self.c0 = 0.0
        self.extra: dict = {}  # state a recipe keeps besides weights and optimizers (PPO's adaptive beta)

    def resume(self, models: dict, optimizers: dict, schedulers: dict, max_steps: int, what: str) -> int:
        """Restore the newest checkpoint (when resuming), write config.yaml (when not), open metrics and the
        progress bar, print one line (`what`: the data and the steps); returns the first step to run."""
        self.models, self.optimizers, self.schedulers, self.max_steps = models, optimizers, schedulers, max_steps
        last = latest_checkpoint(self.ckpt_dir) if self.resuming else None
        start = 0
        if last is not None:
            start, self.extra = load_checkpoint(last, {k: self.acc.unwrap_model(m) for k, m in models.items()}, optimizers,
                                       schedulers)
        if self.main and not self.resuming:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.out / "config.yaml")
        self.log = MetricsLog(self.out, self.main, resume_step=start)
        if self.main:
            world = self.acc.num_processes
            print(f"{self.name}: {what}, {world} process{'es' if world > 1 else ''}; "
                  f"{f'resumed from {last}' if last else 'starting'}")
        self.bar = tqdm(total=max_steps, initial=start, disable=not self.main, desc=self.name, dynamic_ncols=True)
        self.t0, self.c0 = time.perf_counter(), time.process_time()  # throughput counts the loop, not loading
        return start

    def step_done(self, done: int, metrics: dict, tokens: int, force_log: bool = False) -> None:
        """After optimizer step `done` (1-based): add throughput to `metrics`, log them every `log_every` steps
        (and at the last step, or when `force_log`), move the bar, checkpoint every `save_every` steps."""
        self.seen_tokens += tokens
        elapsed = time.perf_counter() - self.t0
        metrics.update({"train/tokens": tokens, "train/tokens_per_s": self.seen_tokens / max(elapsed, 1e-9),
                        "train/elapsed_s": elapsed, "train/cpu_s": time.process_time() - self.c0})
        if done % self.cfg.log_every == 0 or done == self.max_steps or force_log:
            self.log.log(done, metrics)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{metrics['train/loss']:.4f}", tok_s=f"{metrics['train/tokens_per_s']:.0f}")
        if self.cfg.save_every and done % self.cfg.save_every == 0 and done < self.max_steps and self.main:
            save_checkpoint(self.ckpt_dir, done, {k: self.acc.unwrap_model(m) for k, m in self.models.items()},
                            self.optimizers, self.schedulers, self.cfg.keep_checkpoints, self.extra)
        self.acc.wait_for_everyone()

    def close(self) -> None:
        """End the loop's progress bar (before final evaluation and saving)."""
        if self.bar is not None:
            self.bar.close()

    def finish(self, metrics: dict, **extra: Any) -> dict:
        """Close the metrics log and write result.json (the steps this run took, its final metrics and `extra`),
        the last file a run writes: its presence means the run ended. Returns `metrics`."""
        self.close()
        if self.log is not None:
            self.log.close()
        if self.main:
            atomic_write_json(self.out / "result.json", {"steps": self.max_steps, "metrics": metrics, **extra})
        self.acc.wait_for_everyone()
        return metrics


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def open_run(cfg: RunConfig, acc: Accelerator, name: str) -> Run:
    """Check `output_dir` before any work and decide how this run starts (see `Run`).

    - No earlier run there (no checkpoints, model or result.json): a new run.
    - An earlier run and `resume`: its config.yaml must match `cfg` in every key that changes the result, else
      a one-line `UserError` names the keys that differ; then the run continues (or, when result.json is there,
      is already finished).
    - `resume=false`: the earlier run's files are removed and the run starts over.
    """
    out = Path(cfg.output_dir)
    # Only the main process writes the run folder, so only it probes; the others wait for it.
    if acc.is_main_process:
        check_writable(out, "output_dir", folder=True)
    acc.wait_for_everyone()
    earlier = [f for f in RUN_FILES if (out / f).exists()]
    if earlier and cfg.resume:
        saved = out / "config.yaml"
        if not saved.exists():
            raise UserError(f"output_dir '{out}' holds a run ({', '.join(earlier)}) without its config.yaml; "
                            "use another output_dir, or resume=false to start over")
        diff = result_diff(yaml.safe_load(saved.read_text()) or {}, cfg)
        if diff:
            raise UserError(f"output_dir '{out}' holds a run with other settings ({'; '.join(diff)}); use another "
                            "output_dir, or resume=false to start over")
    acc.wait_for_everyone()
    if earlier and not cfg.resume and acc.is_main_process:
        for f in (*RUN_FILES, "config.yaml"):
            p = out / f
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    acc.wait_for_everyone()
    run = Run(cfg, acc, name, resuming=bool(earlier) and cfg.resume)
    if run.finished and acc.is_main_process:
        print(f"{name}: the run in {out} already finished ({run.result['steps']} steps; result.json); nothing to do "
              "(resume=false trains it again)")
    return run
