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
from dataclasses import dataclass
from typing import ClassVar

import torch

from posttrain.config import doc, section
from posttrain.data.collate import pack_rows, packed_batch, pad_batch
from posttrain.data.render import Renderer, render_all
from posttrain.data.types import Conversation
from posttrain.errors import UserError
from posttrain.losses.sft import nll_sum
from posttrain.models.forward import response_logits
from posttrain.models.load import load_tokenizer
from posttrain.recipes import common


@dataclass
class DataConfig:
    PRIMARY: ClassVar[str] = "path"
    path: str = doc("", "training data: a .jsonl/.json/.parquet file or a Hugging Face dataset name")
    format: str = doc("auto", "auto, messages, sharegpt, alpaca, prompt_completion or text")
    max_seq_len: int = doc(1024, "tokens per example (longer ones are truncated) and per packed row", ge=2)
    packing: bool = doc(True, "pack whole examples into rows of max_seq_len (no attention across them)")
    eval_path: str = doc("", "held-out data file; empty: split eval_fraction off the training data")
    eval_fraction: float = doc(0.0, "fraction of the training examples held out for eval (when no eval_path)",
                               ge=0, lt=1)
    limit: int = doc(0, "use only the first N examples (0: all)", ge=0)


@dataclass
class SFTConfig(common.RunConfig):
    model: common.ModelConfig = section(common.ModelConfig, "the model to fine-tune")
    data: DataConfig = section(DataConfig, "training data")
    optim: common.OptimConfig = section(common.OptimConfig, "optimizer and schedule")
    lora: common.LoraConfig = section(common.LoraConfig, "LoRA (through peft)")
    output_dir: str = doc("runs/sft", "run folder: config.yaml, metrics.jsonl, tb/, checkpoints/, model/, result.json",
                          changes_result=False)
    eval_every: int = doc(0, "evaluate every N steps (0: only at the end)", ge=0, changes_result=False)


def build_data(cfg: SFTConfig, tok, log=print):
    """Load, split, render and (optionally) pack the data. Returns (train rows, units, eval rows, eval units, stats)."""
    _, examples, eval_examples = common.load_split(
        cfg.data, cfg.seed, Conversation, "SFT needs conversations (messages, sharegpt, alpaca, prompt_completion or text)")
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


def main(cfg: SFTConfig) -> dict:
    """Run SFT; returns the final metrics (also in metrics.jsonl and result.json)."""
    acc = common.make_accelerator(cfg.precision, cfg.seed, cfg.threads)
    common.check_batch(cfg.batch_size, cfg.micro_batch_size, acc.num_processes)
    run = common.open_run(cfg, acc, "sft")
    if run.finished:
        return run.result["metrics"]

    # Data: rendered once; the loss mask comes from here.
    tok = load_tokenizer(cfg.model.path)
    rows, units, eval_rows, eval_units, stats, renderer = build_data(cfg, tok)
    tokens_per_unit = unit_tokens(rows, units)
    length_per_unit = [sum(len(rows[i].input_ids) for i in u) for u in units]
    stream = common.DataStream(len(units), cfg.batch_size, cfg.seed)
    unit = "packed rows" if cfg.data.packing else "examples"
    max_steps, steps_text = common.total_steps(cfg, len(units), unit)

    # Model, optimizer, schedule.
    model = common.build_model(cfg.model, cfg.lora, cfg.compile)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = common.make_optimizer(params, cfg.optim, max_steps)
    model, optimizer = acc.prepare(model, optimizer)
    start = run.resume({"model": model}, {"model": optimizer}, {"model": scheduler}, max_steps,
                       f"{len(rows)} examples ({sum(stats.dropped.values())} dropped, {stats.truncated} truncated), "
                       f"{len(units)} {unit}, {steps_text}")

    # The loop.
    pad_to = cfg.data.max_seq_len if cfg.compile and cfg.data.packing else 0  # static shapes for the compiler
    model.train()
    metrics: dict = {}
    for step in range(start, max_steps):
        step_units = stream.step_units(step)
        n_global = sum(tokens_per_unit[u] for u in step_units)
        micro = common.shard(step_units, acc.process_index, acc.num_processes, cfg.micro_batch_size)

        def loss_of(chunk, n_global=n_global):
            batch = collate(rows, chunk, units, cfg.data.packing, tok.pad_token_id, pad_to)
            return common.lm_loss(model, {k: v.to(acc.device) for k, v in batch.items()}, n_global)

        loss_sum = common.accumulate(acc, model, micro, loss_of)
        metrics = common.optimizer_step(acc, params, optimizer, scheduler, loss_sum, cfg.optim.max_grad_norm,
                                        step + 1, run.ckpt_dir)
        metrics["train/seq_tokens"] = sum(length_per_unit[u] for u in step_units)
        done = step + 1
        if eval_units and cfg.eval_every and done % cfg.eval_every == 0 and done < max_steps:
            metrics.update(evaluate(model, acc, eval_rows, eval_units, cfg, tok.pad_token_id))
        run.step_done(done, metrics, n_global, force_log="eval/loss" in metrics)
    run.close()

    if eval_units:
        metrics.update(evaluate(model, acc, eval_rows, eval_units, cfg, tok.pad_token_id))
        run.log.log(max_steps, {k: v for k, v in metrics.items() if k.startswith("eval/")})
    if acc.is_main_process:
        where = common.save_final(run.out, acc.unwrap_model(model), tok, renderer.stop_token_ids(), cfg.lora)
        print(f"sft: done; model saved to {where}")
    acc.wait_for_everyone()
    return run.finish(metrics)
