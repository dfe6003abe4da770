"""Loop plumbing every recipe calls (never inherits): accelerate setup, seeding, the data stream,
checkpoints that resume exactly, metrics to metrics.jsonl and TensorBoard, and the NaN guard.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from accelerate import Accelerator

from posttrain.config import doc
from posttrain.errors import TrainingDiverged
from posttrain.io import atomic_dir


@dataclass
class OptimConfig:
    lr: float = doc(2e-5, "peak learning rate (AdamW)")
    weight_decay: float = doc(0.0, "AdamW weight decay")
    beta1: float = doc(0.9, "AdamW beta1")
    beta2: float = doc(0.999, "AdamW beta2")
    eps: float = doc(1e-8, "AdamW epsilon")
    warmup_steps: int = doc(0, "linear warmup steps")
    schedule: Literal["cosine", "linear", "constant"] = doc("cosine", "decay after warmup")
    min_lr_ratio: float = doc(0.0, "final learning rate as a fraction of the peak")
    max_grad_norm: float = doc(1.0, "clip the global gradient norm (0: no clipping)")


@dataclass
class RunConfig:
    """The fields every training recipe has; a recipe's config adds its own sections and fields."""

    output_dir: str = doc("runs/run", "run folder: config.yaml, metrics.jsonl, tb/, checkpoints/, model/")
    seed: int = doc(0, "seed for initialisation, data order and dropout")
    max_steps: int = doc(0, "optimizer steps (0: run `epochs` epochs)")
    epochs: float = doc(1.0, "epochs over the training data when max_steps is 0")
    batch_size: int = doc(16, "examples (or packed rows) per optimizer step, over all processes and accumulation")
    micro_batch_size: int = doc(4, "examples (or packed rows) per forward pass on one process")
    precision: Literal["fp32", "bf16"] = doc("fp32", "fp32, or bf16 autocast")
    compile: bool = doc(False, "torch.compile the model: faster steps after a one-off compile (about a minute on CPU)")
    log_every: int = doc(1, "log metrics every N steps")
    save_every: int = doc(0, "checkpoint every N steps (0: no intermediate checkpoints)")
    keep_checkpoints: int = doc(2, "how many checkpoints to keep")
    resume: bool = doc(True, "continue from the newest checkpoint in output_dir when there is one")
    threads: int = doc(0, "torch CPU threads (0: torch's default)")


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
    """Appends one JSON object per logged step to metrics.jsonl and mirrors scalars to TensorBoard (rank 0)."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int = 0):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if resume_step and self.path.exists():  # drop lines past the checkpoint: they will be logged again
            keep = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        elif self.path.exists():
            self.path.unlink()
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step + 1 if resume_step else None)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


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


def save_checkpoint(ckpt_dir: Path, step: int, model: torch.nn.Module, optimizer, scheduler, keep: int,
                    extra: dict | None = None) -> Path:
    """Write checkpoints/step-N atomically (trainable weights, optimizer, scheduler, RNG), keep the newest `keep`."""
    path = ckpt_dir / f"step-{step:07d}"
    state = {
        "step": step,
        "model": _trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
        "extra": extra or {},
    }
    with atomic_dir(path) as tmp:
        torch.save(state, tmp / "state.pt")
    done = sorted(p for p in ckpt_dir.glob("step-*") if (p / "state.pt").exists())
    for old in done[: max(0, len(done) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler) -> int:
    """Restore a checkpoint written by `save_checkpoint`; returns its step."""
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in state["model"].items():
            params[n].copy_(t)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    return int(state["step"])


def save_model(model, tokenizer, out: Path, stop_ids: list[int] | None = None) -> None:
    """Save a plain Hugging Face model folder (weights, config, tokenizer) atomically.

    `stop_ids` go into generation_config.eos_token_id, so plain `generate` stops at the end of a turn.
    """
    if stop_ids:
        model.generation_config.eos_token_id = stop_ids if len(stop_ids) > 1 else stop_ids[0]
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def env_info() -> dict:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "pid": os.getpid()}
