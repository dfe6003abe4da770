"""Reward modeling from pairwise preferences: a scalar head on a causal LM, trained with the Bradley-Terry loss.

    posttrain rm model=SFT_MODEL data=prefs.jsonl output_dir=runs/rm
    posttrain rm score --model runs/rm/model --data FILE [--json] [--batch-size 16] [--out FILE]

Choices this recipe makes:
- The model is `AutoModelForSequenceClassification.from_pretrained(model.path, num_labels=1)`: the body's weights
  come from the given causal LM (the SFT model, usually), the head (`score`, hidden -> 1) is new, initialised after
  seeding with `seed`. A model that is already a reward model keeps its head and trains further.
- The reward of a response is read at its last content token. Prompt + response are rendered by the SFT
  `Renderer` (the chat template, turn by turn), cut after the response: the stop token(s) that close the turn and
  what the template writes after them are removed (`scored`). Batches are right-padded with the tokenizer's pad
  id, so Hugging Face's sequence-classification head, which pools the last token that is not `config.pad_token_id`,
  pools exactly there, even when pad == EOS and EOS closes earlier turns (tested against plain
  `AutoModelForSequenceClassification` on a padded batch, to 1e-5). `config.pad_token_id` is saved with the model.
  (TRL pools the last token of the whole template render instead: the stop token, or the text after it.)
- Both sides of a pair in one row, their common start (the prompt) computed once: the rows of
  `data.collate.shared_prompt_batch` (as DPO's), with a 4-D mask so that each side attends to the shared start and
  itself only, the head read at each side's last token; rows as wide as the micro-batch's longest pair. For
  attention that takes no custom mask (flash, flex), 2n right-padded rows (the n pairs' chosen, then their
  rejected). Either way one forward pass per micro-batch, equal to scoring each side alone (tested), and the
  step's pairs are sorted by length before they are cut into micro-batches.
- `batch_size` counts pairs; the loss of a step is the mean over its pairs (`example_mean` with the global pair
  count), so any split over accumulation and processes gives the same gradients.
- Loss: `losses.reward.bradley_terry_loss`. `margin_scale` > 0 (off by default) subtracts a margin from each pair's
  reward gap: margin_scale x the row's `margin` (TRL's column) or, without one, x (score_chosen - score_rejected)
  (UltraFeedback's scores); `center_coef` adds TRL's reward centring, center_coef x (r_chosen + r_rejected)^2.
- Metrics with TRL's names over the step's pairs (accuracy, margin, mean_reward, min_reward, max_reward); on
  held-out pairs eval/accuracy (against the labels) and, when the rows carry the world's gold scores
  (`world.gold_chosen` / `world.gold_rejected`), eval/gold_accuracy (the reward's ordering against the gold
  ordering, on pairs whose gold differs) next to eval/label_gold_accuracy (the labels' own agreement with gold on
  those pairs: the ceiling the annotator's noise allows for eval/accuracy).
- `lora.enabled=true` (the `lora` section, as SFT and DPO have): peft LoRA with task_type "SEQ_CLS" on the body's
  linear layers (auto-detected targets leave the head out), the head `score` trained in full
  (`modules_to_save`; a new head has nothing to adapt from). Checkpoints hold the adapter and the head, so resume
  stays exact. The run saves adapter/ (loads with peft on the base as a sequence classifier, num_labels=1) and,
  with `lora.merge` (default), the merged reward model in model/, which plain
  `AutoModelForSequenceClassification` loads and `rm score` reads (`common.save_final`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from posttrain.config import check_flags, doc, section
from posttrain.data.collate import pack_pairs
from posttrain.data.formats import load_examples
from posttrain.data.loading import read_records, short_reason
from posttrain.data.render import IGNORE, Rendered, Renderer
from posttrain.data.types import Conversation, Preference
from posttrain.errors import UserError
from posttrain.io import atomic_write_text, check_writable
from posttrain.losses.preference import example_mean
from posttrain.losses.reward import bradley_terry_loss
from posttrain.models.forward import model_inputs, takes_custom_mask
from posttrain.models.load import check_model_folder, load_tokenizer
from posttrain.recipes import common
from posttrain.recipes.dpo import PrefDataConfig, render_pairs


@dataclass
class RMConfig(common.RunConfig):
    model: common.ModelConfig = section(common.ModelConfig, "the model to start from (usually the SFT model): its "
                                                            "body, and a new scalar head")
    data: PrefDataConfig = section(PrefDataConfig, "preference pairs")
    optim: common.OptimConfig = section(common.OptimConfig, "optimizer and schedule")
    lora: common.LoraConfig = section(common.LoraConfig, "LoRA (through peft, task SEQ_CLS) on the body; the head "
                                                         "`score` is trained in full")
    output_dir: str = doc("runs/rm", "run folder: config.yaml, metrics.jsonl, tb/, checkpoints/, model/ (the reward "
                                     "model), adapter/ (with LoRA), result.json", changes_result=False)
    batch_size: int = doc(16, "preference pairs per optimizer step, over all processes and accumulation", ge=1)
    micro_batch_size: int = doc(8, "pairs per forward pass on one process (2 right-padded rows each)", ge=1,
                                changes_result=False)
    margin_scale: float = doc(0.0, "margin = this x the row's `margin`, or x (score_chosen - score_rejected); "
                                   "0: no margin", ge=0)
    center_coef: float = doc(0.0, "reward centring: + this x (r_chosen + r_rejected)^2 per pair (TRL's "
                                  "center_rewards_coefficient; 0.01 is TRL's suggestion)", ge=0)
    eval_every: int = doc(0, "evaluate every N steps (0: only at the end)", ge=0, changes_result=False)


Seqs = tuple[list[int], list[int]]


@dataclass
class Pairs:
    """Rendered pairs: the tokens the reward reads of each side (`scored`), each pair's margin, gold scores."""

    seqs: list[Seqs] = field(default_factory=list)
    margin: list[float] = field(default_factory=list)  # margin_scale x the row's score gap (0 when off)
    gold: list[tuple[float, float] | None] = field(default_factory=list)  # (gold chosen, gold rejected)

    def __len__(self) -> int:
        return len(self.seqs)


def scored(r: Rendered, stop_ids: set[int], pad_id: int) -> list[int] | str:
    """The tokens a reward is read from: `r` up to its response's last content token (the reward is the head's
    output there). Cut after the last trained token, then the trailing stop token(s) removed; a token equal to the
    pad id is removed too, so that HF's "last non-pad token" is this last token. Returns a reason when nothing of
    the response is left."""
    last = max(t for t, y in enumerate(r.labels) if y != IGNORE)
    ids = r.input_ids[: last + 1]
    while ids and r.labels[len(ids) - 1] != IGNORE and (ids[-1] in stop_ids or ids[-1] == pad_id):
        ids.pop()
    if not ids or r.labels[len(ids) - 1] == IGNORE:
        return "response of stop tokens only"
    return ids


def _margin(record: dict, where: str, scale: float) -> float:
    if not scale:
        return 0.0
    value = record.get("margin")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return scale * float(value)
    sc, sr = record.get("score_chosen"), record.get("score_rejected")
    if all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in (sc, sr)):
        return scale * (float(sc) - float(sr))
    raise UserError(f"{where}: margin_scale={scale:g} needs a number in 'margin', or in 'score_chosen' and "
                    "'score_rejected'; this row has neither (margin_scale=0 trains without a margin)")


def _gold(record: dict) -> tuple[float, float] | None:
    world = record.get("world")
    if not isinstance(world, dict):
        return None
    g = world.get("gold_chosen"), world.get("gold_rejected")
    return (float(g[0]), float(g[1])) if all(isinstance(x, (int, float)) for x in g) else None


def build_pairs(rows: list[tuple[Preference, dict]], renderer: Renderer, margin_scale: float) -> tuple[Pairs, Counter]:
    """Render (example, raw record) rows into `Pairs`; dropped pairs counted by reason."""
    stop, pad = set(renderer.stop_token_ids()), renderer.tok.pad_token_id
    out, dropped = Pairs(), Counter()
    for ex, record in rows:
        got, why = render_pairs([ex], renderer)
        dropped.update(why)
        if not got:
            continue
        c, r = scored(got[0][0], stop, pad), scored(got[0][1], stop, pad)
        if isinstance(c, str) or isinstance(r, str):
            dropped[f"chosen: {c}" if isinstance(c, str) else f"rejected: {r}"] += 1
        elif c == r:
            dropped["chosen and rejected identical after truncation"] += 1
        else:
            out.seqs.append((c, r))
            out.margin.append(_margin(record, ex.where, margin_scale))
            out.gold.append(_gold(record))
    return out, dropped


def _load_rows(path: str, fmt: str, limit: int | None, what: str) -> list[tuple[Preference, dict]]:
    """Preference examples with their raw records (which keep the margin, scores and gold), by position."""
    found, examples = load_examples(path, fmt, limit=limit)
    if not all(isinstance(e, Preference) for e in examples):
        raise UserError(f"{what}: '{path}' is {found} data; a reward model trains on preference pairs "
                        "(prompt/chosen/rejected)")
    return list(zip(examples, [rec for rec, _ in read_records(path, limit=limit)]))


def build_data(cfg: RMConfig, tok) -> tuple[Pairs, Pairs, Counter]:
    """Load, split and render the pairs. Returns (train pairs, eval pairs, dropped reasons)."""
    if not cfg.data.path:
        raise UserError("data: no preference data given (set data=FILE or data.path in the config)")
    rows = _load_rows(cfg.data.path, cfg.data.format, cfg.data.limit or None, "data")
    held: list = []
    if cfg.data.eval_path:
        held = _load_rows(cfg.data.eval_path, cfg.data.format, None, "data.eval_path")
    elif cfg.data.eval_fraction > 0:
        rows, held = common.split_off(rows, cfg.data.eval_fraction, cfg.seed)
    renderer = Renderer(tok, cfg.data.max_seq_len)
    pairs, dropped = build_pairs(rows, renderer, cfg.margin_scale)
    if not pairs:
        reasons = ", ".join(f"{n} {r}" for r, n in dropped.items())
        raise UserError(f"data: no preference pairs left after filtering '{cfg.data.path}' ({reasons})")
    eval_pairs, _ = build_pairs(held, renderer, cfg.margin_scale)
    return pairs, eval_pairs, dropped


def rewards(model, seqs: list[list[int]], pad_id: int, device) -> torch.Tensor:
    """(n,) float32 rewards of `seqs`: one forward pass over the right-padded (n, T) batch, the head's output read at
    each row's last token (by its length, never by the pad id). HF's own pooling (the last token that is not
    `config.pad_token_id`) lands on the same position because `scored` never ends a row with the pad id (tested
    against plain HF). The forward goes through `model` itself (a DDP wrapper syncs gradients only then); the
    head's per-position output is taken with a hook."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
    out = _head_outputs(model, {"input_ids": ids.to(device), "attention_mask": mask.to(device)})
    last = torch.tensor([len(s) - 1 for s in seqs], device=out.device)
    return out[torch.arange(len(seqs), device=last.device), last].float()


def _head_outputs(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The head's output at every position (B, T) of one forward pass through `model` itself (a DDP wrapper syncs
    gradients only then), taken with a hook on `score`."""
    per_position: list[torch.Tensor] = []
    hook = getattr(model, "module", model).score.register_forward_hook(lambda _m, _x, y: per_position.append(y))
    try:
        model(**inputs, use_cache=False)
    finally:
        hook.remove()
    return per_position[0][..., 0]


def shared_pair_rewards(model, pairs: Pairs, chunk: list[int], pad_id: int, device) -> torch.Tensor:
    """(n, 2) rewards of the chunk's pairs with each pair's common start computed once: the rows of
    `data.collate.shared_prompt_batch` (both sides of a pair in one row, a 4-D mask), the head read at the last
    token of each side's segment. Equal to scoring each side alone (tested)."""
    batch, order = pack_pairs([tuple(Rendered(list(s), [IGNORE] * len(s)) for s in pairs.seqs[i]) for i in chunk],
                              pad_id)
    docs = batch.pop("doc_ids")
    del batch["labels"]
    out = _head_outputs(model, model_inputs(model, {k: v.to(device) for k, v in batch.items()}))
    # the last position of each document (a side's segment): its reward
    n_docs = 2 * len(chunk)
    where = torch.arange(docs.numel()).view(docs.shape)
    last = torch.full((n_docs,), -1, dtype=torch.long).scatter_reduce(
        0, docs[docs >= 0], where[docs >= 0], reduce="amax")
    r = out.flatten()[last.to(out.device)].float().view(-1, 2)
    back = torch.empty(len(chunk), dtype=torch.long)
    back[torch.tensor(order)] = torch.arange(len(chunk))
    return r[back.to(r.device)]


def pair_rewards(model, pairs: Pairs, chunk: list[int], pad_id: int, device) -> torch.Tensor:
    """(n, 2) rewards of the chunk's chosen and rejected sides, from one forward pass: shared-prompt rows
    (`shared_pair_rewards`) where the model's attention takes a custom mask, else 2n right-padded rows."""
    if takes_custom_mask(model):
        return shared_pair_rewards(model, pairs, chunk, pad_id, device)
    seqs = [pairs.seqs[i][0] for i in chunk] + [pairs.seqs[i][1] for i in chunk]
    r = rewards(model, seqs, pad_id, device)
    return torch.stack([r[: len(chunk)], r[len(chunk):]], dim=1)


def by_length(pairs: Pairs, idx: list[int]) -> list[int]:
    """`idx` longest pair first (ties keep their order), so micro-batches hold pairs of similar length."""
    return sorted(idx, key=lambda i: -max(len(pairs.seqs[i][0]), len(pairs.seqs[i][1])))


def gold_accuracy(r: torch.Tensor, gold: list[tuple[float, float] | None]) -> dict[str, float]:
    """Agreement with the gold ordering on the pairs whose gold differs, of the rewards `r` (n, 2) (ties in `r`
    count as wrong) and of the labels (chosen has the higher gold). {} when no pair has gold that differs."""
    idx = [i for i, g in enumerate(gold) if g is not None and g[0] != g[1]]
    if not idx:
        return {}
    g = torch.tensor([gold[i] for i in idx], dtype=torch.float64)
    gap = g[:, 0] - g[:, 1]
    agree = (r[idx, 0] - r[idx, 1]).double() * gap > 0
    return {"gold_accuracy": agree.double().mean().item(), "label_gold_accuracy": (gap > 0).double().mean().item(),
            "gold_pairs": len(idx)}


def pair_metrics(r: torch.Tensor, margin: list[float], center_coef: float, prefix: str = "") -> dict[str, float]:
    """The loss (mean over the pairs) and TRL's metrics of the rewards `r` (n, 2) of n pairs."""
    losses, m = bradley_terry_loss(r[:, 0], r[:, 1], torch.tensor(margin), center_coef)
    out = {"loss": losses.mean().item(), **{k: v.item() for k, v in m.items()}}
    return {f"{prefix}{k}": v for k, v in out.items()}


@torch.no_grad()
def evaluate(model, acc, pairs: Pairs, cfg: RMConfig, pad_id: int) -> dict[str, float]:
    """Loss, TRL's metrics and the gold accuracy over the held-out pairs (split over processes)."""
    model.eval()
    r = torch.zeros(len(pairs), 2, dtype=torch.float32, device=acc.device)
    mine = by_length(pairs, list(range(acc.process_index, len(pairs), acc.num_processes)))
    for start in range(0, len(mine), cfg.micro_batch_size):
        chunk = mine[start:start + cfg.micro_batch_size]
        with acc.autocast():
            r[chunk] = pair_rewards(model, pairs, chunk, pad_id, acc.device)
    model.train()
    r = acc.reduce(r, reduction="sum").cpu()
    out = pair_metrics(r, pairs.margin, cfg.center_coef, "eval/")
    return {**out, **{f"eval/{k}": v for k, v in gold_accuracy(r, pairs.gold).items()}}


def _check_head(model, path: str, what: str) -> None:
    if not isinstance(getattr(model, "score", None), torch.nn.Module):
        raise UserError(f"{what}: {type(model).__name__} ('{path}') has no head named `score`; posttrain reads the "
                        "reward from that head (as every *ForSequenceClassification of llama, qwen2, mistral, gpt2 "
                        "and gpt_neox has)")


@contextlib.contextmanager
def _quiet_hf():
    """Silence transformers' load report: loading a causal LM as a sequence classifier always reports the LM head as
    unexpected and `score` as missing (new); any other missing weight is checked and refused here."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


HEAD = "score"  # the scalar head of every *ForSequenceClassification posttrain reads (`_check_head`)


def load_reward_model(cfg: RMConfig, tok):
    """The model to train: the body from `model.path`, the head new (seeded with `seed`) unless it is there too;
    with `lora.enabled`, LoRA on the body (peft SEQ_CLS) and the head trained in full."""
    from transformers import AutoModelForSequenceClassification

    path = check_model_folder(cfg.model.path, "model")
    common.seed_everything(cfg.seed)  # the new head's initialisation
    try:
        with _quiet_hf():
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=1, dtype=torch.float32, output_loading_info=True)
    except (OSError, ValueError) as e:
        raise UserError(f"model: cannot load '{path}' with a scalar head: {short_reason(e)}") from None
    body = [k for k in info["missing_keys"] if not k.startswith("score.")]
    if body:
        raise UserError(f"model: '{path}' lacks {len(body)} weights of the body (e.g. {body[0]}); give a causal LM "
                        "or a reward model")
    _check_head(model, path, "model")
    model.config.pad_token_id = tok.pad_token_id  # the head finds the last non-pad token with it
    model.config.use_cache = False
    if cfg.lora.enabled:
        from posttrain.models.lora import apply_lora

        model = apply_lora(model, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules or None,
                           task_type="SEQ_CLS", modules_to_save=[HEAD])
    if cfg.model.gradient_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    if cfg.compile:
        model.compile()
    return model, "new" if info["missing_keys"] else "loaded"


def main(cfg: RMConfig) -> dict:
    """Train a reward model; returns the final metrics (also in metrics.jsonl and result.json)."""
    acc = common.make_accelerator(cfg.precision, cfg.seed, cfg.threads)
    common.check_batch(cfg.batch_size, cfg.micro_batch_size, acc.num_processes)
    if HEAD in cfg.lora.target_modules:
        raise UserError(f"lora.target_modules: '{HEAD}' is the reward head, which LoRA trains in full; leave it out")
    run = common.open_run(cfg, acc, "rm")
    if run.finished:
        return run.result["metrics"]

    # Data: pairs rendered once, each side cut after its response's last content token.
    tok = load_tokenizer(cfg.model.path)
    pairs, eval_pairs, dropped = build_data(cfg, tok)
    pad = tok.pad_token_id
    stream = common.DataStream(len(pairs), cfg.batch_size, cfg.seed)
    max_steps, steps_text = common.total_steps(cfg, len(pairs), "pairs")

    # Model (body loaded, head new and seeded), optimizer, schedule.
    model, head = load_reward_model(cfg, tok)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = common.make_optimizer(params, cfg.optim, max_steps)
    model, optimizer = acc.prepare(model, optimizer)
    reasons = ", ".join(f"{n} {r}" for r, n in dropped.items()) or "none"
    start = run.resume({"model": model}, {"model": optimizer}, {"model": scheduler}, max_steps,
                       f"{len(pairs)} pairs ({sum(dropped.values())} dropped: {reasons}), {len(eval_pairs)} held out, "
                       f"head {head}, {steps_text}")

    # The loop.
    model.train()
    metrics: dict = {}
    for step in range(start, max_steps):
        step_pairs = by_length(pairs, stream.step_units(step))
        micro = common.shard(step_pairs, acc.process_index, acc.num_processes, cfg.micro_batch_size)
        seen: list = []

        def loss_of(chunk, seen=seen):  # every step has batch_size pairs: the loss is their mean
            r = pair_rewards(model, pairs, chunk, pad, acc.device)
            margin = torch.tensor([pairs.margin[i] for i in chunk], device=r.device) if cfg.margin_scale else None
            losses, _ = bradley_terry_loss(r[:, 0], r[:, 1], margin, cfg.center_coef)
            seen.append(r.detach())
            return example_mean(losses, cfg.batch_size)

        loss_sum = common.accumulate(acc, model, micro, loss_of)
        metrics = common.optimizer_step(acc, params, optimizer, scheduler, loss_sum, cfg.optim.max_grad_norm,
                                        step + 1, run.ckpt_dir)
        r = acc.gather(torch.cat(seen)).cpu()  # the step's rewards, (batch_size, 2)
        metrics.update({k: v for k, v in pair_metrics(r, [0.0] * len(r), 0.0).items() if k != "loss"})
        done = step + 1
        metrics["train/pairs_per_s"] = (done - start) * cfg.batch_size / max(time.perf_counter() - run.t0, 1e-9)
        if eval_pairs and cfg.eval_every and done % cfg.eval_every == 0 and done < max_steps:
            metrics.update(evaluate(model, acc, eval_pairs, cfg, pad))
        tokens = sum(len(pairs.seqs[i][0]) + len(pairs.seqs[i][1]) for i in step_pairs)
        run.step_done(done, metrics, tokens, force_log="eval/loss" in metrics)
    run.close()

    if eval_pairs:
        metrics.update(evaluate(model, acc, eval_pairs, cfg, pad))
        run.log.log(max_steps, {k: v for k, v in metrics.items() if k.startswith("eval/")})
        if acc.is_main_process:
            print(f"rm: {eval_summary(metrics, len(eval_pairs))}")
    if acc.is_main_process:  # model/ (with LoRA: adapter/, and model/ merged)
        where = common.save_final(run.out, acc.unwrap_model(model), tok, [], cfg.lora)
        print(f"rm: done; reward model saved to {where}")
    acc.wait_for_everyone()
    return run.finish(metrics)


def eval_summary(m: dict, n: int) -> str:
    text = f"held-out accuracy {m['eval/accuracy']:.3f} against the labels ({n} pairs)"
    if "eval/gold_accuracy" in m:
        text += (f"; gold accuracy {m['eval/gold_accuracy']:.3f} against the gold ordering "
                 f"({m['eval/gold_pairs']} pairs whose gold differs; the labels agree with gold on "
                 f"{m['eval/label_gold_accuracy']:.3f} of them)")
    return text


# `posttrain rm score`: rewards of (prompt, response) rows or of both sides of preference rows.


def load_scorer(path: str):
    """A saved reward model, its tokenizer and the pad id its head pools by; refused when `path` is not a reward
    model (a causal LM would get a random head)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    tok = load_tokenizer(path)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(f"--model: cannot read the config of '{path}': {short_reason(e)}") from None
    archs = config.architectures or []
    if getattr(config, "num_labels", 0) != 1 or not any(a.endswith("ForSequenceClassification") for a in archs):
        raise UserError(f"--model: '{path}' is not a reward model (config.json: {', '.join(archs) or 'no architectures'}, "
                        f"{getattr(config, 'num_labels', 0)} labels); train one with posttrain rm")
    with _quiet_hf():
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
    _check_head(model, path, "--model")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    return model.eval(), tok, model.config.pad_token_id


def _sides(ex) -> dict[str, Conversation]:
    if isinstance(ex, Preference):
        return {"chosen": Conversation(ex.prompt + ex.chosen, ex.where),
                "rejected": Conversation(ex.prompt + ex.rejected, ex.where)}
    return {"score": Conversation(ex.messages, ex.where)}


def _scored_conversation(renderer: Renderer, conv: Conversation, stop: set[int], pad_id: int) -> list[int] | str:
    if not conv.messages or conv.messages[-1].role != "assistant":
        return "no assistant turn at the end"
    r = renderer.render(conv)
    return r if isinstance(r, str) else scored(r, stop, pad_id)


@torch.no_grad()
def score_examples(model, tok, examples: list, pad_id: int, max_seq_len: int = 1024, batch_size: int = 16,
                   device: str = "cpu") -> list[dict]:
    """One dict per example: `where` and its reward (`score`), or both sides' (`chosen`, `rejected`); a side the
    renderer drops is None, with the reason in `skipped`. Rows are batched longest first."""
    renderer = Renderer(tok, max_seq_len)
    stop = set(renderer.stop_token_ids())
    rows, items = [], []  # items: (row, side, ids)
    for i, ex in enumerate(examples):
        row: dict = {"where": ex.where}
        for side, conv in _sides(ex).items():
            got = _scored_conversation(renderer, conv, stop, pad_id)
            row[side] = None
            if isinstance(got, str):
                row.setdefault("skipped", f"{side}: {got}")
            else:
                items.append((i, side, got))
        rows.append(row)
    order = sorted(range(len(items)), key=lambda k: -len(items[k][2]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        r = rewards(model, [items[k][2] for k in chunk], pad_id, device).tolist()
        for k, v in zip(chunk, r):
            if v != v or abs(v) == float("inf"):
                raise UserError(f"--model: the reward model gives a non-finite score ({v}) for {rows[items[k][0]]['where']}")
            rows[items[k][0]][items[k][1]] = v
    return rows


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def score_table(rows: list[dict], examples: list) -> str:
    """A table of the scores (preference rows: both sides and their difference), and a summary line."""
    w = max(5, *(len(r["where"]) for r in rows))
    if "chosen" in rows[0]:
        lines = [f"{'row':<{w}}  {'chosen':>9}  {'rejected':>9}  {'c - r':>9}"]
        gaps = [None if "skipped" in r else r["chosen"] - r["rejected"] for r in rows]
        for r, gap in zip(rows, gaps):
            lines.append(f"{r['where']:<{w}}  {_f(r['chosen']):>9}  {_f(r['rejected']):>9}  {_f(gap):>9}"
                         + (f"  ({r['skipped']})" if "skipped" in r else ""))
        done = [g for g in gaps if g is not None]
        wins = sum(g > 0 for g in done)
        lines.append(f"chosen scored higher on {wins} of {len(done)} pairs" + (f" ({wins / len(done):.3f})" if done else ""))
        return "\n".join(lines)
    lines = [f"{'row':<{w}}  {'score':>9}  response"]
    for r, ex in zip(rows, examples):
        text = ex.messages[-1].content.replace("\n", " ") if ex.messages else ""
        lines.append(f"{r['where']:<{w}}  {_f(r['score']):>9}  " + (f"({r['skipped']})" if "skipped" in r
                                                                      else text[:60] + ("..." if len(text) > 60 else "")))
    return "\n".join(lines)


def score_cli(argv: list[str]) -> int:
    """`posttrain rm score`: every check (numbers, the output path, the model folder, the data) before the model
    loads."""
    p = argparse.ArgumentParser(prog="posttrain rm score",
                                description="Score (prompt, response) rows, or both sides of preference rows, with a "
                                            "reward model.")
    p.add_argument("--model", required=True, help="a reward model folder (posttrain rm's model/)")
    p.add_argument("--data", required=True, help="prompt/completion (or messages) rows, or preference rows")
    p.add_argument("--format", default="auto")
    p.add_argument("--max-seq-len", type=int, default=1024, help="tokens per sequence (longer ones keep their first)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass")
    p.add_argument("--json", action="store_true", help="print a JSON list: one object per row with its score(s)")
    p.add_argument("--out", help="also write the objects to FILE, one JSON line per row")
    args = p.parse_args(argv)
    check_flags(args, max_seq_len={"ge": 2}, batch_size={"ge": 1})
    if args.out:
        check_writable(args.out, "--out")
    if (Path(args.model) / "adapter_config.json").exists() and not (Path(args.model) / "config.json").exists():
        raise UserError(f"--model: '{args.model}' is a LoRA adapter; score with the merged reward model (the run's "
                        "model/)")
    check_model_folder(args.model, "--model")
    fmt, examples = load_examples(args.data, args.format)
    if not all(isinstance(e, Preference) or (isinstance(e, Conversation) and not e.document) for e in examples):
        raise UserError(f"--data: '{args.data}' is {fmt} data; rm score reads (prompt, response) rows "
                        "(prompt_completion, messages, ...) or preference rows")
    model, tok, pad_id = load_scorer(args.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = score_examples(model.to(device), tok, examples, pad_id, args.max_seq_len, args.batch_size, device)
    if args.out:
        atomic_write_text(args.out, "".join(json.dumps(r) + "\n" for r in rows))
    if args.json:
        print("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]")
    else:
        print(score_table(rows, examples))
    return 0
