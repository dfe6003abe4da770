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
- The same loop as SFT, through the same plumbing (`recipes/common.py`): global-batch token-mean loss,
  accumulation, exact resume, NaN guard, metrics.jsonl and TensorBoard, result.json. The final model goes to `model/` (in `save_dtype`) with a
  model card.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch

from posttrain.config import doc, section
from posttrain.data.collate import pack_rows, packed_batch
from posttrain.data.loading import read_records
from posttrain.data.render import Rendered
from posttrain.errors import UserError
from posttrain.io import atomic_write_text
from posttrain.models.load import save_model
from posttrain.recipes import common


@dataclass
class PretrainModelConfig:
    arch: Literal["llama", "qwen2", "mistral", "gpt2", "gpt_neox"] = doc("llama", "architecture of the new model")
    hidden: int = doc(256, "hidden size", ge=1)
    layers: int = doc(4, "transformer blocks", ge=1)
    heads: int = doc(4, "attention heads", ge=1)
    vocab_size: int = doc(4096, "BPE vocabulary size (when a tokenizer is trained; 256 bytes and 7 special tokens at least)",
                          ge=263)
    tokenizer: str = doc("", "an existing tokenizer folder; empty: train one on the corpus")
    init: str = doc("", "continue training this model folder (its weights and tokenizer; arch, size and "
                        "tokenizer above are then unused): mid-training; empty: a new random-init model")


@dataclass
class PretrainDataConfig:
    PRIMARY: ClassVar[str] = "path"
    path: str = doc("", "corpus: a .jsonl/.json/.parquet file of {\"text\": ...} documents")
    max_seq_len: int = doc(256, "tokens per packed row (longer documents are cut into pieces)", ge=2)
    limit: int = doc(0, "use only the first N documents (0: all)", ge=0)


@dataclass
class PretrainConfig(common.RunConfig):
    model: PretrainModelConfig = section(PretrainModelConfig, "the new model and its tokenizer")
    data: PretrainDataConfig = section(PretrainDataConfig, "the corpus")
    optim: common.OptimConfig = section(common.OptimConfig, "optimizer and schedule")
    output_dir: str = doc("runs/pretrain", "run folder: config.yaml, metrics.jsonl, tb/, checkpoints/, model/, "
                                           "result.json", changes_result=False)
    batch_size: int = doc(32, "packed rows per optimizer step, over all processes and accumulation", ge=1)
    micro_batch_size: int = doc(8, "packed rows per forward pass on one process", ge=1,
                                changes_result=False)
    log_every: int = doc(10, "log metrics every N steps", ge=1, changes_result=False)
    save_every: int = doc(200, "checkpoint every N steps (0: none)", ge=0, changes_result=False)
    save_dtype: Literal["float32", "float16", "bfloat16"] = doc(
        "float32", "dtype of the saved model/ weights (float16 halves the size of a model you ship)",
        changes_result=False)


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
    """Pretrain; returns the final metrics (also in metrics.jsonl and result.json)."""
    acc = common.make_accelerator(cfg.precision, cfg.seed, cfg.threads)
    common.check_batch(cfg.batch_size, cfg.micro_batch_size, acc.num_processes)
    if not cfg.model.init and cfg.model.hidden % cfg.model.heads:
        raise UserError(f"model.hidden ({cfg.model.hidden}) must be a multiple of model.heads ({cfg.model.heads})")
    run = common.open_run(cfg, acc, "pretrain")
    if run.finished:
        return run.result["metrics"]

    # Data: tokenizer, documents, packed rows.
    texts = read_texts(cfg)
    tok = build_tokenizer(cfg, texts)
    docs = tokenize_documents(texts, tok, cfg.data.max_seq_len)
    units = pack_rows(docs, cfg.data.max_seq_len)
    tokens_per_unit = [sum(docs[i].n_trained for i in u) for u in units]
    stream = common.DataStream(len(units), cfg.batch_size, cfg.seed)
    max_steps, steps_text = common.total_steps(cfg, len(units), "packed rows")

    # Model, optimizer, schedule.
    model = build_model(cfg, tok)
    model.config.use_cache = False
    if cfg.compile:
        model.compile()
    params = list(model.parameters())
    n_params = sum(p.numel() for p in params)
    optimizer, scheduler = common.make_optimizer(params, cfg.optim, max_steps)
    model, optimizer = acc.prepare(model, optimizer)
    start = run.resume({"model": model}, {"model": optimizer}, {"model": scheduler}, max_steps,
                       f"{len(texts)} documents, {sum(tokens_per_unit)} tokens in {len(units)} rows, "
                       f"{n_params / 1e6:.2f}M parameters, {steps_text}")

    # The loop.
    model.train()
    metrics: dict = {}
    pad_to = cfg.data.max_seq_len if cfg.compile else 0
    for step in range(start, max_steps):
        step_units = stream.step_units(step)
        n_global = sum(tokens_per_unit[u] for u in step_units)
        micro = common.shard(step_units, acc.process_index, acc.num_processes, cfg.micro_batch_size)

        def loss_of(chunk, n_global=n_global):
            batch = packed_batch([[docs[j] for j in units[u]] for u in chunk], tok.pad_token_id, pad_to)
            return common.lm_loss(model, {k: v.to(acc.device) for k, v in batch.items()}, n_global)

        loss_sum = common.accumulate(acc, model, micro, loss_of)
        metrics = common.optimizer_step(acc, params, optimizer, scheduler, loss_sum, cfg.optim.max_grad_norm,
                                        step + 1, run.ckpt_dir)
        run.step_done(step + 1, metrics, n_global)
    run.close()

    if acc.is_main_process:
        final = acc.unwrap_model(model)
        final.config.use_cache = True
        final.to(getattr(torch, cfg.save_dtype))
        save_model(final, tok, run.out / "model", [tok.eos_token_id])
        card = model_card(cfg, final.config.model_type, n_params, time.perf_counter() - run.t0,
                          metrics.get("train/loss", float("nan")), run.seen_tokens)
        atomic_write_text(run.out / "model" / "README.md", card)
        print(f"pretrain: done; model saved to {run.out / 'model'}")
    acc.wait_for_everyone()
    return run.finish(metrics)
