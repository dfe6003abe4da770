"""Pretraining: plain next-token prediction on raw text, for the tiny base models posttrain builds itself.

Choices this recipe makes:
- A byte-level BPE tokenizer is trained on the corpus with the `tokenizers` library (posttrain's chat
  special tokens and chat template included, so the base model is ready for SFT), unless
  `model.tokenizer` names an existing one.
- Every document is `<bos> text <eos>`; documents longer than `data.max_seq_len` are cut into pieces.
  Pieces are packed into rows with position ids restarting per document (no attention across documents),
  and every token is trained.
- A seeded random-init model of `model.arch` (Llama by default) of the configured size, or, with
  `model.init`, an existing model and its tokenizer trained further on the corpus (continued
  pretraining or mid-training). The optimizer state and the schedule start fresh.
- The same loop plumbing as SFT (`recipes/common.py`): global-batch token-mean loss, exact resume,
  NaN guard, metrics.jsonl and TensorBoard. The final model goes to `model/` (in `save_dtype`) with a
  model card.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
from tqdm.auto import tqdm

from posttrain.config import doc, save_config, section
from posttrain.data.collate import pack_rows, packed_batch
from posttrain.data.loading import read_records
from posttrain.data.render import Rendered
from posttrain.errors import UserError
from posttrain.io import atomic_write_text
from posttrain.losses.sft import nll_sum, token_mean
from posttrain.models.forward import response_logits
from posttrain.recipes import common


@dataclass
class PretrainModelConfig:
    arch: Literal["llama", "qwen2", "mistral", "gpt2", "gpt_neox"] = doc("llama", "architecture of the new model")
    hidden: int = doc(256, "hidden size")
    layers: int = doc(4, "transformer blocks")
    heads: int = doc(4, "attention heads")
    vocab_size: int = doc(4096, "BPE vocabulary size (when a tokenizer is trained)")
    tokenizer: str = doc("", "an existing tokenizer folder; empty: train one on the corpus")
    init: str = doc("", "continue training this model folder (its weights and tokenizer; arch, size and "
                        "tokenizer above are then unused): mid-training; empty: a new random-init model")


@dataclass
class PretrainDataConfig:
    PRIMARY: ClassVar[str] = "path"
    path: str = doc("", "corpus: a .jsonl/.json/.parquet file of {\"text\": ...} documents")
    max_seq_len: int = doc(256, "tokens per packed row (longer documents are cut into pieces)")
    limit: int = doc(0, "use only the first N documents (0: all)")


@dataclass
class PretrainConfig(common.RunConfig):
    model: PretrainModelConfig = section(PretrainModelConfig, "the new model and its tokenizer")
    data: PretrainDataConfig = section(PretrainDataConfig, "the corpus")
    optim: common.OptimConfig = section(common.OptimConfig, "optimizer and schedule")
    output_dir: str = doc("runs/pretrain", "run folder: config.yaml, metrics.jsonl, tb/, checkpoints/, model/")
    batch_size: int = doc(32, "packed rows per optimizer step, over all processes and accumulation")
    micro_batch_size: int = doc(8, "packed rows per forward pass on one process")
    log_every: int = doc(10, "log metrics every N steps")
    save_every: int = doc(200, "checkpoint every N steps (0: none)")
    save_dtype: Literal["float32", "float16", "bfloat16"] = doc(
        "float32", "dtype of the saved model/ weights (float16 halves the size of a model you ship)")


def read_texts(cfg: PretrainConfig) -> list[str]:
    if not cfg.data.path:
        raise UserError("data: no corpus given (set data=FILE)")
    records = read_records(cfg.data.path, limit=cfg.data.limit or None)
    texts = []
    for rec, where in records:
        if not isinstance(rec.get("text"), str):
            raise UserError(f"{where}: field 'text' is missing or not a string (pretraining reads {{\"text\": ...}})")
        texts.append(rec["text"])
    return texts


def tokenize_documents(texts: list[str], tok, max_len: int) -> list[Rendered]:
    """`<bos> text <eos>` per document, cut into pieces of at most `max_len` tokens that overlap by one token
    (a piece's first token is only context), so every token after the BOS is a target exactly once."""
    bos, eos = tok.bos_token_id, tok.eos_token_id
    pieces = []
    for ids in tok(texts, add_special_tokens=False).input_ids:
        ids = ([bos] if bos is not None else []) + ids + [eos]
        for i in range(0, len(ids) - 1, max_len - 1):
            chunk = ids[i : i + max_len]
            pieces.append(Rendered(chunk, list(chunk)))
    return pieces


def build_tokenizer(cfg: PretrainConfig, texts: list[str]):
    from posttrain.models.load import load_tokenizer
    from posttrain.models.tokenizer import train_tokenizer

    existing = cfg.model.init or cfg.model.tokenizer
    return load_tokenizer(existing) if existing else train_tokenizer(texts, cfg.model.vocab_size)


def build_model(cfg: PretrainConfig, tok):
    """`model.init` loaded in float32, or a seeded random-init model of the configured size."""
    from posttrain.models.load import load_model
    from posttrain.models.tiny import tiny_model

    if cfg.model.init:
        return load_model(cfg.model.init)
    return tiny_model(cfg.model.arch, tok, seed=cfg.seed, hidden=cfg.model.hidden, layers=cfg.model.layers,
                      heads=cfg.model.heads, max_len=max(512, cfg.data.max_seq_len))


def model_card(cfg: PretrainConfig, arch: str, n_params: int, wall_s: float, final_loss: float, tokens: int) -> str:
    """The model's README: how it was made; with `model.init`, the card of the model it continued follows."""
    before = Path(cfg.model.init, "README.md") if cfg.model.init else None
    earlier = ("\n## Before: the model it continued\n\n" + before.read_text().split("\n", 1)[1].lstrip()
               if before and before.exists() else "")
    how = "Trained further" if cfg.model.init else "Pretrained from scratch"
    return (f"# posttrain base model ({arch}, {n_params / 1e6:.2f}M parameters)\n\n"
            f"{how} by posttrain on plain text (posttrain's own corpus: the assistant world's knowledge and\n"
            "skills, but not the assistant format; the model continues text, and SFT teaches it to answer).\n\n"
            f"- command: `posttrain pretrain --config <config.yaml>` (the resolved config is below)\n"
            + (f"- continued from: {cfg.model.init} (its own card is below)\n" if cfg.model.init else "") +
            f"- seed: {cfg.seed}\n- tokens trained: {tokens}\n- wall time: {wall_s / 60:.1f} min\n"
            f"- final training loss: {final_loss:.4f}\n\n```yaml\n{_yaml(cfg)}```\n" + earlier)


def _yaml(cfg) -> str:
    import yaml

    from posttrain.config import to_dict

    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def main(cfg: PretrainConfig) -> dict:
    """Pretrain; returns the final metrics (also in metrics.jsonl)."""
    acc = common.make_accelerator(cfg.precision, cfg.seed, cfg.threads)
    out, world, rank = Path(cfg.output_dir), acc.num_processes, acc.process_index
    ckpt_dir = out / "checkpoints"
    if cfg.batch_size % (cfg.micro_batch_size * world):
        raise UserError(f"batch_size ({cfg.batch_size}) must be a multiple of micro_batch_size "
                        f"({cfg.micro_batch_size}) x processes ({world})")

    # Data: tokenizer, documents, packed rows.
    texts = read_texts(cfg)
    tok = build_tokenizer(cfg, texts)
    docs = tokenize_documents(texts, tok, cfg.data.max_seq_len)
    units = pack_rows(docs, cfg.data.max_seq_len)
    tokens_per_unit = [sum(docs[i].n_trained for i in u) for u in units]
    stream = common.DataStream(len(units), cfg.batch_size, cfg.seed)
    max_steps = cfg.max_steps or max(1, int(cfg.epochs * len(units) // cfg.batch_size))

    # Model, optimizer, schedule.
    model = build_model(cfg, tok)
    model.config.use_cache = False
    if cfg.compile:
        model.compile()
    params = list(model.parameters())
    n_params = sum(p.numel() for p in params)
    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                                  weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, common.lr_lambda(o.warmup_steps, max_steps, o.schedule, o.min_lr_ratio))
    model, optimizer = acc.prepare(model, optimizer)
    last = common.latest_checkpoint(ckpt_dir) if cfg.resume else None
    start = common.load_checkpoint(last, acc.unwrap_model(model), optimizer, scheduler) if last else 0
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        print(f"pretrain: {len(texts)} documents, {sum(tokens_per_unit)} tokens in {len(units)} rows, "
              f"{n_params / 1e6:.2f}M parameters, {max_steps} steps; {f'resumed from {last}' if last else 'starting'}")
    log = common.MetricsLog(out, acc.is_main_process, resume_step=start)

    # The loop.
    model.train()
    bar = tqdm(total=max_steps, initial=start, disable=not acc.is_main_process, desc="pretrain", dynamic_ncols=True)
    t0, seen, metrics = time.perf_counter(), 0, {}
    pad_to = cfg.data.max_seq_len if cfg.compile else 0
    for step in range(start, max_steps):
        step_units = stream.step_units(step)
        n_global = sum(tokens_per_unit[u] for u in step_units)
        micro = common.shard(step_units, rank, world, cfg.micro_batch_size)
        loss_sum = torch.zeros((), device=acc.device)
        for i, chunk in enumerate(micro):
            batch = packed_batch([[docs[j] for j in units[u]] for u in chunk], tok.pad_token_id, pad_to)
            batch = {k: v.to(acc.device) for k, v in batch.items()}
            with common.no_sync(acc, model, i < len(micro) - 1), acc.autocast():
                logits, targets = response_logits(model, batch)
                s, _ = nll_sum(logits, targets)
                loss = token_mean(s, n_global)
                acc.backward(loss * world)
            loss_sum += loss.detach()
        metrics = common.optimizer_step(acc, params, optimizer, scheduler, loss_sum, o.max_grad_norm, step + 1, ckpt_dir)

        done, seen = step + 1, seen + n_global
        elapsed = time.perf_counter() - t0
        metrics.update({"train/tokens": n_global, "train/tokens_per_s": seen / max(elapsed, 1e-9),
                        "train/elapsed_s": elapsed})
        if done % cfg.log_every == 0 or done == max_steps:
            log.log(done, metrics)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['train/loss']:.4f}", tok_s=f"{metrics['train/tokens_per_s']:.0f}")
        if cfg.save_every and done % cfg.save_every == 0 and done < max_steps and acc.is_main_process:
            common.save_checkpoint(ckpt_dir, done, acc.unwrap_model(model), optimizer, scheduler, cfg.keep_checkpoints)
        acc.wait_for_everyone()
    bar.close()
    log.close()

    if acc.is_main_process:
        final = acc.unwrap_model(model)
        final.config.use_cache = True
        final.to(getattr(torch, cfg.save_dtype))
        common.save_model(final, tok, out / "model", [tok.eos_token_id])
        card = model_card(cfg, final.config.model_type, n_params, time.perf_counter() - t0,
                          metrics.get("train/loss", float("nan")), seen)
        atomic_write_text(out / "model" / "README.md", card)
        print(f"pretrain: done; model saved to {out / 'model'}")
    acc.wait_for_everyone()
    return metrics
