"""Supervised fine-tuning (SFT): next-token cross-entropy on assistant tokens only.

Choices this recipe makes:
- The loss mask comes from the data stage (`Renderer`): every assistant turn and its stop token is
  trained, nothing else.
- The loss of a step is the NLL summed over the whole global batch divided by its trained-token count
  (computed up front, on every process, from the batch itself), so `batch_size` x accumulation x
  processes in any split gives the same loss and gradients.
- `batch_size` is global: examples (or packed rows) per optimizer step across all processes and
  accumulation; `micro_batch_size` is what one process runs in one forward pass.
- Packing puts whole documents into rows of `data.max_seq_len` with position ids that restart per
  document (no attention across documents); the output head runs only where a trained token is predicted.
- Data order is a pure function of (seed, step), so resuming from a checkpoint continues exactly.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from tqdm.auto import tqdm

from posttrain.config import doc, save_config, section
from posttrain.data.collate import pack_rows, packed_batch, pad_batch
from posttrain.data.formats import load_examples
from posttrain.data.render import Renderer, render_all
from posttrain.data.types import Conversation
from posttrain.errors import UserError
from posttrain.losses.sft import nll_sum, token_mean
from posttrain.models.forward import response_logits
from posttrain.models.load import load_model, load_tokenizer
from posttrain.recipes import common


@dataclass
class ModelConfig:
    PRIMARY: ClassVar[str] = "path"
    path: str = doc("", "Hugging Face model folder or hub id to fine-tune")
    gradient_checkpointing: bool = doc(False, "recompute activations in the backward pass to save memory")


@dataclass
class DataConfig:
    PRIMARY: ClassVar[str] = "path"
    path: str = doc("", "training data: a .jsonl/.json/.parquet file or a Hugging Face dataset name")
    format: str = doc("auto", "auto, messages, sharegpt, alpaca, prompt_completion or text")
    max_seq_len: int = doc(1024, "tokens per example (longer ones are truncated) and per packed row")
    packing: bool = doc(True, "pack whole examples into rows of max_seq_len (no attention across them)")
    eval_path: str = doc("", "held-out data file; empty: split eval_fraction off the training data")
    eval_fraction: float = doc(0.0, "fraction of the training examples held out for eval (when no eval_path)")
    limit: int = doc(0, "use only the first N examples (0: all)")


@dataclass
class LoraConfig:
    enabled: bool = doc(False, "train LoRA adapters instead of all weights")
    r: int = doc(16, "LoRA rank")
    alpha: int = doc(32, "LoRA alpha (scale = alpha / r)")
    dropout: float = doc(0.0, "dropout on the LoRA input")
    target_modules: list[str] = doc([], "module names to adapt; empty: every linear layer in the blocks")
    merge: bool = doc(True, "also write the merged full model to model/ (the adapter goes to adapter/)")


@dataclass
class SFTConfig(common.RunConfig):
    model: ModelConfig = section(ModelConfig, "the model to fine-tune")
    data: DataConfig = section(DataConfig, "training data")
    optim: common.OptimConfig = section(common.OptimConfig, "optimizer and schedule")
    lora: LoraConfig = section(LoraConfig, "LoRA (through peft)")
    output_dir: str = doc("runs/sft", "run folder: config.yaml, metrics.jsonl, tb/, checkpoints/, model/")
    eval_every: int = doc(0, "evaluate every N steps (0: only at the end)")


def build_data(cfg: SFTConfig, tok, log=print):
    """Load, split, render and (optionally) pack the data. Returns (train rows, units, eval rows, eval units, stats)."""
    if not cfg.data.path:
        raise UserError("data: no training data given (set data=FILE or data.path in the config)")
    fmt, examples = load_examples(cfg.data.path, cfg.data.format, limit=cfg.data.limit or None)
    if not all(isinstance(e, Conversation) for e in examples):
        raise UserError(f"data: '{cfg.data.path}' is {fmt} data; SFT needs conversations "
                        "(messages, sharegpt, alpaca, prompt_completion or text)")
    eval_examples: list = []
    if cfg.data.eval_path:
        _, eval_examples = load_examples(cfg.data.eval_path, cfg.data.format)
    elif cfg.data.eval_fraction > 0:
        g = torch.Generator().manual_seed(cfg.seed)
        order = torch.randperm(len(examples), generator=g).tolist()
        n_eval = max(1, int(len(examples) * cfg.data.eval_fraction))
        eval_examples = [examples[i] for i in sorted(order[:n_eval])]
        examples = [examples[i] for i in sorted(order[n_eval:])]
    renderer = Renderer(tok, cfg.data.max_seq_len)
    rows, stats = render_all(examples, renderer)
    if not rows:
        reasons = ", ".join(f"{n} {r}" for r, n in stats.dropped.items())
        raise UserError(f"data: no training examples left after filtering '{cfg.data.path}' ({reasons})")
    eval_rows, _ = render_all(eval_examples, renderer)

    def units(rs):
        return pack_rows(rs, cfg.data.max_seq_len) if cfg.data.packing else [[i] for i in range(len(rs))]

    return rows, units(rows), eval_rows, units(eval_rows), stats, renderer


def collate(rows, unit_ids, units, packing: bool, pad_id: int, pad_to: int = 0) -> dict[str, torch.Tensor]:
    groups = [[rows[i] for i in units[u]] for u in unit_ids]
    if packing:
        return packed_batch(groups, pad_id, pad_to)
    return pad_batch([g[0] for g in groups], pad_id)


def unit_tokens(rows, units) -> list[int]:
    """Trained targets in each unit (an example or a packed row)."""
    return [sum(rows[i].n_trained for i in u) for u in units]


@torch.no_grad()
def evaluate(model, acc, rows, units, cfg: SFTConfig, pad_id: int) -> dict[str, float]:
    """Token-weighted mean loss and perplexity over the eval units (split over processes)."""
    model.eval()
    ids = list(range(len(units)))
    total = torch.zeros(2, dtype=torch.float64, device=acc.device)
    for chunk in common.shard(ids, acc.process_index, acc.num_processes, cfg.micro_batch_size):
        batch = {k: v.to(acc.device) for k, v in collate(rows, chunk, units, cfg.data.packing, pad_id).items()}
        with acc.autocast():
            logits, targets = response_logits(model, batch)
        s, n = nll_sum(logits, targets)
        total += torch.stack([s.sum().double(), n.sum().double()])
    rest = ids[len(ids) // acc.num_processes * acc.num_processes:]  # leftovers: rank 0 alone
    if rest and acc.is_main_process:
        batch = {k: v.to(acc.device) for k, v in collate(rows, rest, units, cfg.data.packing, pad_id).items()}
        with acc.autocast():
            logits, targets = response_logits(model, batch)
        s, n = nll_sum(logits, targets)
        total += torch.stack([s.sum().double(), n.sum().double()])
    total = acc.reduce(total, reduction="sum")
    model.train()
    loss = (total[0] / total[1].clamp(min=1)).item()
    return {"eval/loss": loss, "eval/ppl": math.exp(min(loss, 50.0))}


def build_model(cfg: SFTConfig):
    """The model to train: loaded, optionally wrapped in LoRA, optionally with gradient checkpointing."""
    model = load_model(cfg.model.path)
    model.config.use_cache = False
    if cfg.lora.enabled:
        from posttrain.models.lora import apply_lora

        model = apply_lora(model, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules or None)
    if cfg.model.gradient_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    if cfg.compile:
        model.compile()  # in place: parameter names (checkpoints, saving) are unchanged
    return model


def save_final(cfg: SFTConfig, model, tok, stop_ids: list[int]) -> Path:
    """model/ (a plain Hugging Face folder); with LoRA also adapter/, and model/ holds the merged weights."""
    out = Path(cfg.output_dir)
    model.config.use_cache = True  # training turned the cache off; a saved model generates with it
    if not cfg.lora.enabled:
        common.save_model(model, tok, out / "model", stop_ids)
        return out / "model"
    common.save_model(model, tok, out / "adapter", stop_ids)
    if not cfg.lora.merge:
        return out / "adapter"
    common.save_model(model.merge_and_unload(), tok, out / "model", stop_ids)
    return out / "model"


def main(cfg: SFTConfig) -> dict:
    """Run SFT; returns the final metrics (also in metrics.jsonl)."""
    acc = common.make_accelerator(cfg.precision, cfg.seed, cfg.threads)
    out = Path(cfg.output_dir)
    ckpt_dir = out / "checkpoints"
    world, rank = acc.num_processes, acc.process_index
    if cfg.batch_size % (cfg.micro_batch_size * world):
        raise UserError(f"batch_size ({cfg.batch_size}) must be a multiple of micro_batch_size "
                        f"({cfg.micro_batch_size}) x processes ({world})")

    # Data: rendered once; the loss mask comes from here.
    tok = load_tokenizer(cfg.model.path)
    rows, units, eval_rows, eval_units, stats, renderer = build_data(cfg, tok)
    tokens_per_unit = unit_tokens(rows, units)
    length_per_unit = [sum(len(rows[i].input_ids) for i in u) for u in units]
    stream = common.DataStream(len(units), cfg.batch_size, cfg.seed)
    max_steps = cfg.max_steps or max(1, int(cfg.epochs * len(units) // cfg.batch_size))

    # Model, optimizer, schedule.
    model = build_model(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                                  eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, common.lr_lambda(cfg.optim.warmup_steps, max_steps, cfg.optim.schedule, cfg.optim.min_lr_ratio))
    model, optimizer = acc.prepare(model, optimizer)

    start = 0
    last = common.latest_checkpoint(ckpt_dir) if cfg.resume else None
    if last is not None:
        start = common.load_checkpoint(last, acc.unwrap_model(model), optimizer, scheduler)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    log = common.MetricsLog(out, acc.is_main_process, resume_step=start)
    if acc.is_main_process:
        msg = f"resumed from {last}" if last else "starting"
        print(f"sft: {len(rows)} examples ({sum(stats.dropped.values())} dropped, {stats.truncated} truncated), "
              f"{len(units)} {'packed rows' if cfg.data.packing else 'examples'}, {max_steps} steps, "
              f"{world} process{'es' if world > 1 else ''}; {msg}")

    # The loop.
    pad_to = cfg.data.max_seq_len if cfg.compile and cfg.data.packing else 0  # static shapes for the compiler
    model.train()
    bar = tqdm(total=max_steps, initial=start, disable=not acc.is_main_process, desc="sft", dynamic_ncols=True)
    metrics: dict = {}
    seen_tokens, t0, c0 = 0, time.perf_counter(), time.process_time()
    for step in range(start, max_steps):
        step_units = stream.step_units(step)
        n_global = sum(tokens_per_unit[u] for u in step_units)
        micro = common.shard(step_units, rank, world, cfg.micro_batch_size)
        loss_sum = torch.zeros((), device=acc.device)
        for i, chunk in enumerate(micro):
            batch = collate(rows, chunk, units, cfg.data.packing, tok.pad_token_id, pad_to)
            batch = {k: v.to(acc.device) for k, v in batch.items()}
            with common.no_sync(acc, model, i < len(micro) - 1), acc.autocast():
                logits, targets = response_logits(model, batch)
                s, _ = nll_sum(logits, targets)
                loss = token_mean(s, n_global)
                acc.backward(loss * world)  # DDP averages gradients over processes; the sum is what we want
            loss_sum += loss.detach()
        metrics = common.optimizer_step(acc, params, optimizer, scheduler, loss_sum, cfg.optim.max_grad_norm,
                                        step + 1, ckpt_dir)

        seen_tokens += n_global
        done = step + 1
        elapsed = time.perf_counter() - t0
        metrics.update({"train/tokens": n_global, "train/seq_tokens": sum(length_per_unit[u] for u in step_units),
                        "train/tokens_per_s": seen_tokens / max(elapsed, 1e-9), "train/elapsed_s": elapsed,
                        "train/cpu_s": time.process_time() - c0})
        if eval_units and cfg.eval_every and done % cfg.eval_every == 0 and done < max_steps:
            metrics.update(evaluate(model, acc, eval_rows, eval_units, cfg, tok.pad_token_id))
        if done % cfg.log_every == 0 or done == max_steps or "eval/loss" in metrics:
            log.log(done, metrics)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['train/loss']:.4f}", tok_s=f"{metrics['train/tokens_per_s']:.0f}")
        if cfg.save_every and done % cfg.save_every == 0 and done < max_steps and acc.is_main_process:
            common.save_checkpoint(ckpt_dir, done, acc.unwrap_model(model), optimizer, scheduler, cfg.keep_checkpoints)
        acc.wait_for_everyone()
    bar.close()

    if eval_units:
        metrics.update(evaluate(model, acc, eval_rows, eval_units, cfg, tok.pad_token_id))
        log.log(max_steps, {k: v for k, v in metrics.items() if k.startswith("eval/")})
    log.close()
    if acc.is_main_process:
        where = save_final(cfg, acc.unwrap_model(model), tok, renderer.stop_token_ids())
        print(f"sft: done; model saved to {where}")
    acc.wait_for_everyone()
    return metrics
