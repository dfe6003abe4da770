"""Offline preference optimisation: DPO and its family (cDPO, IPO, hinge, SimPO, ORPO) on preference pairs.

    posttrain dpo model=SFT_MODEL data=prefs.jsonl loss=dpo beta=0.1 output_dir=runs/dpo

Choices this recipe makes:
- Data: preference rows (`prompt`/`chosen`/`rejected`, HH-RLHF transcripts, UltraFeedback-binarized message
  lists: `data.formats`) rendered by the same `Renderer` as SFT, as prompt + chosen and prompt + rejected with
  the loss mask on the response. A pair whose two responses are identical, or one of whose sides the renderer
  drops (an empty response, a response truncation removed), is dropped and counted, never trained on.
- `batch_size` counts pairs (global, over processes and accumulation), `micro_batch_size` pairs per forward.
  A micro-batch's pairs are packed into rows, both sides of a pair in one row: chosen and rejected in one
  forward pass, the prompt computed once for both (its tokens written once, each response attending to it
  through a 4-D mask; `data.collate.shared_prompt_batch`; with flash or flex attention, which take no custom
  mask, the two sequences follow each other whole, position ids restarting), no padding between sequences,
  and the output head only at positions that predict a response token (`models.forward.sequence_logps`).
- The reference-based losses (dpo, cdpo, ipo, hinge) take the reference log-probabilities from a cache computed
  once, before the first step, with the starting model (`reference/logps.pt` in the run folder): one model in
  memory while the policy trains. With LoRA the starting model is the base with zero-initialised adapters,
  which is the reference with its adapters off. SimPO and ORPO need no reference.
- The loss of a step is the mean over its pairs (`losses.preference.example_mean` with the global pair count),
  so any split over accumulation and processes gives the same gradients. The losses are the pure functions of
  `losses/preference.py`; `docs/preference-losses.md` states each formula and its token reduction.
- Metrics with TRL's names (rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen,
  logps/rejected), means over the step's pairs; the same on held-out pairs as eval/...
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from posttrain.config import doc, section
from posttrain.data.collate import pack_lengths, pack_pairs, packed_batch
from posttrain.data.render import Rendered, Renderer, render_pairs
from posttrain.data.types import Preference
from posttrain.errors import UserError
from posttrain.io import atomic_dir
from posttrain.losses.preference import LOSSES, example_mean, needs_reference, preference_loss, with_nll
from posttrain.models.forward import sequence_logps, takes_custom_mask
from posttrain.models.load import load_tokenizer
from posttrain.recipes import common

Pair = tuple[Rendered, Rendered]


@dataclass
class PrefDataConfig:
    PRIMARY: ClassVar[str] = "path"
    path: str = doc("", "preference data: a .jsonl/.json/.parquet file or a Hugging Face dataset name")
    format: Literal["auto", "preference"] = doc("auto", "auto or preference (prompt/chosen/rejected, HH-RLHF, "
                                                        "UltraFeedback-binarized)")
    max_seq_len: int = doc(1024, "tokens per sequence, prompt + response (longer ones keep their first tokens)",
                           ge=2)
    eval_path: str = doc("", "held-out preference file; empty: split eval_fraction off the training pairs")
    eval_fraction: float = doc(0.0, "fraction of the training pairs held out for eval (when no eval_path)",
                               ge=0, lt=1)
    limit: int = doc(0, "use only the first N rows (0: all)", ge=0)


@dataclass
class DPOConfig(common.RunConfig):
    model: common.ModelConfig = section(common.ModelConfig, "the policy to train (usually the SFT model)")
    data: PrefDataConfig = section(PrefDataConfig, "preference pairs")
    optim: common.OptimConfig = section(common.OptimConfig, "optimizer and schedule")
    lora: common.LoraConfig = section(common.LoraConfig, "LoRA (through peft); the reference is the base")
    output_dir: str = doc("runs/dpo", "run folder: config.yaml, metrics.jsonl, tb/, checkpoints/, "
                                      "reference/ (the cached reference log-probs), model/, result.json", changes_result=False)
    batch_size: int = doc(16, "preference pairs per optimizer step, over all processes and accumulation", ge=1)
    micro_batch_size: int = doc(8, "pairs per forward pass on one process (packed into rows)", ge=1,
                                changes_result=False)
    loss: Literal["dpo", "cdpo", "ipo", "hinge", "simpo", "orpo"] = doc(
        "dpo", "dpo (sigmoid), cdpo (label smoothing), ipo, hinge, simpo (no reference), orpo (no reference)")
    beta: float = doc(0.1, "beta: the strength of the KL leash (dpo, cdpo, ipo, hinge) or SimPO's reward scale",
                      gt=0)
    label_smoothing: float = doc(0.0, "cdpo's eps: the assumed fraction of flipped labels (cdpo only)", ge=0, lt=0.5)
    simpo_gamma: float = doc(0.5, "SimPO's target margin gamma (simpo only)", ge=0)
    orpo_lambda: float = doc(0.1, "ORPO's weight of the odds-ratio term on top of the NLL (orpo only)", ge=0)
    rpo_alpha: float = doc(0.0, "weight of the chosen response's NLL (mean per response token) added to each "
                                "pair's loss: RPO, TRL's loss_type=[sigmoid, sft] (0: off; not with orpo, which "
                                "has its own)", ge=0)
    eval_every: int = doc(0, "evaluate every N steps (0: only at the end)", ge=0, changes_result=False)


def check_loss_settings(cfg: DPOConfig) -> None:
    """Settings a loss would ignore are refused, never silently dropped."""
    if cfg.loss == "cdpo" and not cfg.label_smoothing:
        raise UserError("loss=cdpo needs label_smoothing > 0 (e.g. label_smoothing=0.1)")
    if cfg.loss != "cdpo" and cfg.label_smoothing:
        raise UserError(f"label_smoothing is cDPO's; loss={cfg.loss} does not use it (set loss=cdpo)")
    if cfg.loss == "orpo" and cfg.rpo_alpha:
        raise UserError("rpo_alpha adds an NLL term, and loss=orpo has one already (its weight is 1); set rpo_alpha=0")


def loss_kwargs(cfg: DPOConfig) -> dict:
    """The loss's own settings, by name (`losses.preference.preference_loss` refuses any it does not take)."""
    match cfg.loss:
        case "dpo" | "hinge" | "ipo":
            return {"beta": cfg.beta}
        case "cdpo":
            return {"beta": cfg.beta, "label_smoothing": cfg.label_smoothing}
        case "simpo":
            return {"beta": cfg.beta, "gamma": cfg.simpo_gamma}
        case "orpo":
            return {"lam": cfg.orpo_lambda}
    raise UserError(f"unknown loss '{cfg.loss}'; choose one of {', '.join(LOSSES)}")


def build_data(cfg: DPOConfig, tok) -> tuple[list[Pair], list[Pair], Counter]:
    """Load, split and render the pairs. Returns (train pairs, eval pairs, dropped reasons)."""
    _, examples, eval_examples = common.load_split(
        cfg.data, cfg.seed, Preference, f"{cfg.loss} needs preference pairs (prompt/chosen/rejected)")
    renderer = Renderer(tok, cfg.data.max_seq_len)
    pairs, dropped = render_pairs(examples, renderer)
    if not pairs:
        reasons = ", ".join(f"{n} {r}" for r, n in dropped.items())
        raise UserError(f"data: no preference pairs left after filtering '{cfg.data.path}' ({reasons})")
    eval_pairs, _ = render_pairs(eval_examples, renderer)
    return pairs, eval_pairs, dropped


def pair_batch(pairs: list[Pair], chunk: list[int], pad_id: int, share_prompt: bool = True) -> tuple[dict, list[int]]:
    """The chunk's pairs packed into rows as wide as its longest pair (a pair's two sequences share a row; rows
    no wider than that keep attention, which a CPU computes over the whole row, close to the work needed).
    With `share_prompt` each pair's prompt is written, and computed, once for both responses
    (`data.collate.pack_pairs`, a 4-D mask); without, the two sequences follow each other whole
    (`packed_batch`, position ids only: for attention that takes no custom mask). Returns the batch (with
    doc_ids: chosen of the k-th pair is document 2k, its rejected 2k + 1) and the pairs' order."""
    if share_prompt:
        batch, order = pack_pairs([pairs[i] for i in chunk], pad_id)
        return batch, [chunk[j] for j in order]
    lengths = [len(pairs[i][0].input_ids) + len(pairs[i][1].input_ids) for i in chunk]
    groups = pack_lengths(lengths, max(lengths))
    order = [chunk[j] for g in groups for j in g]
    rows = [[seq for j in g for seq in pairs[chunk[j]]] for g in groups]
    return packed_batch(rows, pad_id, doc_ids=True), order


def pair_logps(model, acc, pairs: list[Pair], chunk: list[int], pad_id: int):
    """Summed log-probs and token counts of each pair's chosen and rejected response, (n, 2) each, in the
    order of `chunk`; the prompt computed once per pair where the model's attention takes a custom mask."""
    batch, order = pair_batch(pairs, chunk, pad_id, share_prompt=takes_custom_mask(model))
    batch = {k: v.to(acc.device) for k, v in batch.items()}
    with acc.autocast():
        sums, counts = sequence_logps(model, batch, 2 * len(order))
    where = {p: k for k, p in enumerate(order)}
    idx = torch.tensor([where[p] for p in chunk], device=sums.device)
    return sums.view(-1, 2)[idx], counts.view(-1, 2)[idx]


@torch.no_grad()
def reference_logps(model, acc, pairs: list[Pair], micro: int, pad_id: int) -> torch.Tensor:
    """(n, 2) summed log-probs of every pair's chosen and rejected response under `model` (the reference),
    computed once: each process takes its share and the shares are summed."""
    model.eval()
    out = torch.zeros(len(pairs), 2, dtype=torch.float32, device=acc.device)
    mine = list(range(acc.process_index, len(pairs), acc.num_processes))
    for start in range(0, len(mine), micro):
        chunk = mine[start:start + micro]
        out[chunk] = pair_logps(model, acc, pairs, chunk, pad_id)[0].float()
    model.train()
    return acc.reduce(out, reduction="sum").cpu()


def step_loss(cfg: DPOConfig, logps: torch.Tensor, counts: torch.Tensor, ref: torch.Tensor | None, n_global: int):
    """This micro-batch's share of the step's loss, and its metrics as sums over its pairs."""
    tensors = {"policy_chosen_logps": logps[:, 0], "policy_rejected_logps": logps[:, 1],
               "chosen_tokens": counts[:, 0], "rejected_tokens": counts[:, 1]}
    if ref is not None:
        tensors.update(reference_chosen_logps=ref[:, 0], reference_rejected_logps=ref[:, 1])
    losses, metrics = preference_loss(cfg.loss, **tensors, **loss_kwargs(cfg))
    if cfg.rpo_alpha:
        losses, metrics = with_nll(losses, metrics, logps[:, 0], counts[:, 0], alpha=cfg.rpo_alpha)
    sums = {k: v.item() * len(losses) for k, v in metrics.items()}
    sums["loss"] = losses.detach().sum().item()
    sums["tokens"] = counts.sum().item()
    return example_mean(losses, n_global), sums


def _reduced(acc, sums: dict[str, float], n: int, prefix: str = "") -> dict[str, float]:
    """Metric sums over this process's pairs -> means over all processes' `n` pairs, named `prefix + key`."""
    keys = sorted(sums)
    total = acc.reduce(torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=acc.device), reduction="sum")
    return {f"{prefix}{k}": (v / n).item() for k, v in zip(keys, total)}


@torch.no_grad()
def evaluate(cfg: DPOConfig, model, acc, pairs: list[Pair], ref: torch.Tensor | None, pad_id: int):
    """The loss and metrics over the held-out pairs (split over processes)."""
    model.eval()
    sums: Counter = Counter()
    mine = list(range(acc.process_index, len(pairs), acc.num_processes))
    for start in range(0, len(mine), cfg.micro_batch_size):
        chunk = mine[start:start + cfg.micro_batch_size]
        logps, counts = pair_logps(model, acc, pairs, chunk, pad_id)
        _, s = step_loss(cfg, logps, counts, None if ref is None else ref[chunk].to(logps.device), len(pairs))
        sums.update(s)
    model.train()
    return _reduced(acc, {k: sums.get(k, 0.0) for k in _metric_keys(cfg)}, len(pairs), "eval/")


def _metric_keys(cfg: DPOConfig) -> list[str]:
    """The metric names the configured loss reports (and `loss`)."""
    one = torch.zeros(1)
    ref = {"reference_chosen_logps": one, "reference_rejected_logps": one} if needs_reference(cfg.loss) else {}
    _, metrics = preference_loss(cfg.loss, policy_chosen_logps=one, policy_rejected_logps=one, chosen_tokens=one,
                                 rejected_tokens=one, **ref, **loss_kwargs(cfg))
    return ["loss", *metrics, *(["nll_loss"] if cfg.rpo_alpha else [])]


def load_or_compute_reference(cfg: DPOConfig, run: common.Run, model, acc, pairs, eval_pairs, pad_id):
    """The cached reference log-probs of the train and eval pairs: computed with the starting model on the first
    run, read back on a resume. Called before a resume loads a checkpoint, so a missing cache is recomputed from
    the starting model, never from trained weights."""
    path = run.out / "reference"
    if (path / "logps.pt").exists():
        cached = torch.load(path / "logps.pt", map_location="cpu")
        if cached["train"].shape[0] == len(pairs) and cached["eval"].shape[0] == len(eval_pairs):
            return cached["train"], cached["eval"]
    if acc.is_main_process:
        print(f"{run.name}: computing the reference log-probs of {len(pairs)} + {len(eval_pairs)} pairs once")
    train = reference_logps(model, acc, pairs, cfg.micro_batch_size, pad_id)
    held = reference_logps(model, acc, eval_pairs, cfg.micro_batch_size, pad_id)
    if acc.is_main_process:
        with atomic_dir(path) as tmp:
            torch.save({"train": train, "eval": held}, tmp / "logps.pt")
    acc.wait_for_everyone()
    return train, held


def main(cfg: DPOConfig) -> dict:
    """Run DPO (or a variant); returns the final metrics (also in metrics.jsonl and result.json)."""
    acc = common.make_accelerator(cfg.precision, cfg.seed, cfg.threads)
    common.check_batch(cfg.batch_size, cfg.micro_batch_size, acc.num_processes)
    check_loss_settings(cfg)
    run = common.open_run(cfg, acc, cfg.loss)
    if run.finished:
        return run.result["metrics"]

    # Data: pairs rendered once; the loss mask comes from the renderer.
    tok = load_tokenizer(cfg.model.path)
    pairs, eval_pairs, dropped = build_data(cfg, tok)
    stream = common.DataStream(len(pairs), cfg.batch_size, cfg.seed)
    max_steps, steps_text = common.total_steps(cfg, len(pairs), "pairs")

    # Model, reference log-probs (once, with the starting model), optimizer, schedule.
    model = common.build_model(cfg.model, cfg.lora, cfg.compile)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = common.make_optimizer(params, cfg.optim, max_steps)
    model, optimizer = acc.prepare(model, optimizer)
    reasons = ", ".join(f"{n} {r}" for r, n in dropped.items()) or "none"
    ref = ref_eval = None
    if needs_reference(cfg.loss):  # before a resume loads trained weights: the reference is the starting model
        ref, ref_eval = load_or_compute_reference(cfg, run, model, acc, pairs, eval_pairs, tok.pad_token_id)
    start = run.resume({"model": model}, {"model": optimizer}, {"model": scheduler}, max_steps,
                       f"{len(pairs)} pairs ({sum(dropped.values())} dropped: {reasons}), {len(eval_pairs)} held out, "
                       f"loss {cfg.loss}, {steps_text}")

    # The loop.
    model.train()
    metrics: dict = {}
    keys = [k for k in _metric_keys(cfg) if k != "loss"]  # train/loss comes from optimizer_step
    for step in range(start, max_steps):
        step_pairs = stream.step_units(step)
        micro = common.shard(step_pairs, acc.process_index, acc.num_processes, cfg.micro_batch_size)
        sums: Counter = Counter()

        def loss_of(chunk, sums=sums):  # every step has batch_size pairs: the loss is their mean
            logps, counts = pair_logps(model, acc, pairs, chunk, tok.pad_token_id)
            loss, s = step_loss(cfg, logps, counts, None if ref is None else ref[chunk].to(logps.device),
                                cfg.batch_size)
            sums.update(s)
            return loss

        loss_sum = common.accumulate(acc, model, micro, loss_of)
        metrics = common.optimizer_step(acc, params, optimizer, scheduler, loss_sum, cfg.optim.max_grad_norm,
                                        step + 1, run.ckpt_dir)
        metrics.update(_reduced(acc, {k: sums.get(k, 0.0) for k in keys}, cfg.batch_size))
        done = step + 1
        pairs_seen = (done - start) * cfg.batch_size
        metrics["train/pairs_per_s"] = pairs_seen / max(time.perf_counter() - run.t0, 1e-9)
        if eval_pairs and cfg.eval_every and done % cfg.eval_every == 0 and done < max_steps:
            metrics.update(evaluate(cfg, model, acc, eval_pairs, ref_eval, tok.pad_token_id))
        tokens = int(acc.reduce(torch.tensor(sums["tokens"], device=acc.device), reduction="sum").item())
        run.step_done(done, metrics, tokens, force_log="eval/loss" in metrics)
    run.close()

    if eval_pairs:
        metrics.update(evaluate(cfg, model, acc, eval_pairs, ref_eval, tok.pad_token_id))
        run.log.log(max_steps, {k: v for k, v in metrics.items() if k.startswith("eval/")})
    if acc.is_main_process:
        renderer = Renderer(tok)
        where = common.save_final(run.out, acc.unwrap_model(model), tok, renderer.stop_token_ids(), cfg.lora)
        print(f"{run.name}: done; model saved to {where}")
    acc.wait_for_everyone()
    return run.finish(metrics)
