"""KTO (Kahneman-Tversky optimisation) on unpaired completions, each labelled desirable or undesirable.

    posttrain kto model=SFT_MODEL data=unpaired.jsonl beta=0.1 desirable_weight=1.0 undesirable_weight=1.0 output_dir=runs/kto

Choices this recipe makes:
- Data: unpaired rows (`prompt`/`completion`/`label`, TRL's unpaired format, what `posttrain prefs generate
  --unpaired` writes; `data.formats`) rendered by the same `Renderer` as SFT, as prompt + completion with the loss
  mask on the completion. A row the renderer drops (an empty completion, a completion truncation removed) is
  dropped and counted, never trained on. Preference pairs are refused (they are `posttrain dpo`'s), and so is data
  left without a desirable (or an undesirable) row while that side's weight is above 0.
- The KL reference point z0 (KTO paper, Eq. 6; TRL's `kl`) is estimated on mismatched sequences: each example's
  prompt with another example's completion. The pairing is fixed per example: the training examples (after
  filtering) are put in one permutation seeded by `seed`, and example perm[k] takes the completion of perm[k + 1]
  (perm[0]'s for the last), the held-out examples likewise. Because it never changes, the reference log-probs of
  both the matched and the mismatched sequences are computed once, before the first step, with the starting model
  (`reference/logps.pt`, as DPO: one model in memory). TRL 1.16 instead rotates the completions by one within each
  `per_device_train_batch_size` slice of its dataset (`KTOTrainer`, `add_kl_completion_ids`), so a batch's
  mismatched completions are its own completions (under sequential sampling), its pairing depends on the batch
  size, and it needs batches > 1; here a step's mismatched completions are its examples' partners', mostly from
  outside the step.
- z0 is one value per optimizer step, estimated on the whole global batch: a no-grad forward of the policy on the
  step's mismatched sequences before the accumulation loop; the mean of policy - reference over them (summed over
  processes, as TRL and OpenRLHF all-reduce it), clamped at 0 and detached (`losses.preference.kto_reference_point`).
  TRL estimates it per forward batch; here any split over accumulation and processes gives the same loss and
  gradients. The held-out metrics use one z0 over all held-out examples.
- `batch_size` counts completions (global, over processes and accumulation), `micro_batch_size` completions per
  forward, packed into rows with position ids restarting per sequence and the output head only where a completion
  token is predicted (`models.forward.sequence_logps`). The loss of a step is the mean over its completions
  (`losses.preference.example_mean` with the global count), as TRL's.
- Loss `losses.preference.kto_loss` on log-probs summed over completion tokens: r = policy - reference,
  desirable_weight * (1 - sigmoid(beta (r - z0))) or undesirable_weight * (1 - sigmoid(beta (z0 - r))). As TRL, the
  run says so when desirable_weight n_D / (undesirable_weight n_U) is outside [1, 4/3] (KTO paper, Eq. 8).
- With LoRA the starting model is the base with zero-initialised adapters, which is the reference.
- Metrics with TRL's names, over the step's completions: rewards/chosen and logps/chosen (means of beta r and of
  the policy sums over the desirable ones), rewards/rejected and logps/rejected (undesirable), rewards/margins
  (rewards/chosen - rewards/rejected; a side the step lacks is left out), kl (z0); the same on held-out rows as
  eval/... (with eval/loss).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from posttrain.config import doc, section
from posttrain.data.collate import pack_lengths, packed_batch
from posttrain.data.render import Rendered, Renderer
from posttrain.data.types import Conversation, Unpaired
from posttrain.errors import UserError
from posttrain.losses.preference import example_mean, kto_loss, kto_reference_point
from posttrain.models.forward import sequence_logps
from posttrain.models.load import load_tokenizer
from posttrain.recipes import common, dpo

# An example's two sequences: prompt + its completion, and prompt + its KL partner's completion.
Seqs = tuple[Rendered, Rendered]
MATCHED, MISMATCHED = 0, 1
NEEDS = "kto needs unpaired rows (prompt/completion/label); for preference pairs use posttrain dpo"
SIDES = ("chosen", "rejected")  # TRL's names for desirable and undesirable


@dataclass
class UnpairedDataConfig:
    PRIMARY: ClassVar[str] = "path"
    path: str = doc("", "unpaired data: a .jsonl/.json/.parquet file or a Hugging Face dataset name")
    format: Literal["auto", "unpaired"] = doc("auto", "auto or unpaired (prompt/completion/label, label true when "
                                                      "the completion is desirable)")
    max_seq_len: int = doc(1024, "tokens per sequence, prompt + completion (longer ones keep their first tokens)",
                           ge=2)
    eval_path: str = doc("", "held-out unpaired file; empty: split eval_fraction off the training rows")
    eval_fraction: float = doc(0.0, "fraction of the training rows held out for eval (when no eval_path)",
                               ge=0, lt=1)
    limit: int = doc(0, "use only the first N rows (0: all)", ge=0)


@dataclass
class KTOConfig(common.RunConfig):
    model: common.ModelConfig = section(common.ModelConfig, "the policy to train (usually the SFT model)")
    data: UnpairedDataConfig = section(UnpairedDataConfig, "unpaired completions labelled desirable or not")
    optim: common.OptimConfig = section(common.OptimConfig, "optimizer and schedule")
    lora: common.LoraConfig = section(common.LoraConfig, "LoRA (through peft); the reference is the base")
    output_dir: str = doc("runs/kto", "run folder: config.yaml, metrics.jsonl, tb/, checkpoints/, "
                                      "reference/ (the cached reference log-probs), model/, result.json",
                          changes_result=False)
    batch_size: int = doc(16, "completions per optimizer step, over all processes and accumulation", ge=1)
    micro_batch_size: int = doc(8, "completions per forward pass on one process (packed into rows)", ge=1,
                                changes_result=False)
    beta: float = doc(0.1, "beta: the scale of the implicit reward beta * (policy - reference)", gt=0)
    desirable_weight: float = doc(1.0, "weight of the desirable completions' loss (lambda_D)", ge=0)
    undesirable_weight: float = doc(1.0, "weight of the undesirable completions' loss (lambda_U)", ge=0)
    eval_every: int = doc(0, "evaluate every N steps (0: only at the end)", ge=0, changes_result=False)


@dataclass
class KTOData:
    """Rendered examples: `seqs[i]` (matched, mismatched) and `desirable[i]` (N,) bool."""

    seqs: list[Seqs]
    desirable: torch.Tensor

    def count(self, side: str) -> int:
        n_d = int(self.desirable.sum())
        return n_d if side == "chosen" else len(self.seqs) - n_d


def kl_partners(n: int, seed: int) -> list[int]:
    """partner[i]: the example whose completion example i's mismatched sequence takes. One cycle through a
    permutation of range(n) seeded by `seed` (perm[k] takes perm[k + 1]'s), so partner[i] != i when n > 1."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    partner = [0] * n
    for k, i in enumerate(perm):
        partner[i] = perm[(k + 1) % n]
    return partner


def render_unpaired(examples: list[Unpaired], renderer: Renderer, seed: int) -> tuple[KTOData, Counter]:
    """Each kept example's (prompt + completion, prompt + its partner's completion) rendered, its label; dropped
    rows counted by reason."""
    kept, matched, dropped = [], [], Counter()
    for ex in examples:
        r = renderer.render(Conversation(ex.prompt + ex.completion, ex.where))
        if isinstance(r, str):
            dropped[r] += 1
            continue
        kept.append(ex)
        matched.append(r)
    seqs = []
    for ex, r, j in zip(kept, matched, kl_partners(len(kept), seed)):
        where = f"{ex.where} (prompt) with the completion of {kept[j].where}"
        kl = renderer.render(Conversation(ex.prompt + kept[j].completion, where))
        if isinstance(kl, str):  # not expected: the prompt left room for a token, the completion is not empty
            raise UserError(f"{where}: the mismatched (KL) sequence cannot be rendered ({kl})")
        seqs.append((r, kl))
    return KTOData(seqs, torch.tensor([ex.label for ex in kept], dtype=torch.bool)), dropped


def build_data(cfg: KTOConfig, tok) -> tuple[KTOData, KTOData, Counter]:
    """Load, split and render the rows. Returns (train data, eval data, dropped reasons)."""
    _, examples, eval_examples = common.load_split(cfg.data, cfg.seed, Unpaired, NEEDS)
    renderer = Renderer(tok, cfg.data.max_seq_len)
    data, dropped = render_unpaired(examples, renderer, cfg.seed)
    reasons = f" ({', '.join(f'{n} {r}' for r, n in dropped.items())} dropped)" if dropped else ""
    if not data.seqs:
        raise UserError(f"data: no rows left after filtering '{cfg.data.path}'{reasons}")
    for side, label, weight in (("chosen", "desirable", cfg.desirable_weight),
                                ("rejected", "undesirable", cfg.undesirable_weight)):
        if weight > 0 and not data.count(side):
            raise UserError(f"data: '{cfg.data.path}' has no {label} rows (label {str(side == 'chosen').lower()})"
                            f"{reasons}; kto learns from both kinds (or set {label}_weight=0)")
    held, _ = render_unpaired(eval_examples, renderer, cfg.seed)
    return data, held, dropped


def balance(cfg: KTOConfig, data: KTOData) -> str:
    """The balance of the loss, w_D n_D : w_U n_U, with the KTO paper's advice when it is outside [1, 4/3]."""
    d, u = cfg.desirable_weight * data.count("chosen"), cfg.undesirable_weight * data.count("rejected")
    text = f"{data.count('chosen')} desirable, {data.count('rejected')} undesirable"
    if d and u and not 1 <= d / u <= 4 / 3:
        text += f"; desirable_weight x n_D / (undesirable_weight x n_U) = {d / u:.3g}, the KTO paper advises 1 to 4/3"
    return text


def completion_logps(model, acc, seqs: list[Seqs], chunk: list[int], which: int, pad_id: int):
    """Summed log-probs and token counts (n,) of sequence `which` (MATCHED or MISMATCHED) of each example of
    `chunk`, in its order; the sequences packed into rows as wide as the longest."""
    docs = [seqs[i][which] for i in chunk]
    lengths = [len(d.input_ids) for d in docs]
    groups = pack_lengths(lengths, max(lengths))
    order = torch.tensor([j for g in groups for j in g])
    batch = packed_batch([[docs[j] for j in g] for g in groups], pad_id, doc_ids=True)
    batch = {k: v.to(acc.device) for k, v in batch.items()}
    with acc.autocast():
        sums, counts = sequence_logps(model, batch, len(docs))
    where = torch.empty_like(order)
    where[order] = torch.arange(len(order))  # document of chunk[j] is number where[j]
    where = where.to(sums.device)
    return sums[where], counts[where]


@torch.no_grad()
def kl_estimate(model, acc, seqs: list[Seqs], ref_kl: torch.Tensor, units: list[int], micro: int, pad_id: int,
                n_global: int) -> torch.Tensor:
    """z0 before clamping, (1,) float32: the mean of policy - reference on the mismatched sequences of `units`
    (this process's share of `n_global` examples), summed over processes. No gradient (z0 is detached)."""
    total = torch.zeros((), dtype=torch.float32, device=acc.device)
    for start in range(0, len(units), micro):
        chunk = units[start:start + micro]
        logps, _ = completion_logps(model, acc, seqs, chunk, MISMATCHED, pad_id)
        total += (logps.float() - ref_kl[chunk].to(logps.device)).sum()
    return (acc.reduce(total, reduction="sum") / n_global).view(1)


def step_loss(cfg: KTOConfig, logps: torch.Tensor, counts: torch.Tensor, ref: torch.Tensor, desirable: torch.Tensor,
              kl_raw: torch.Tensor, n_global: int):
    """This micro-batch's share of the step's loss, and its metrics as sums over its completions. `kl_raw` (1,)
    is the step's unclamped z0; `kto_loss` clamps and detaches it (its mean over one value is that value)."""
    losses, m = kto_loss(logps, ref, desirable, kl_raw, torch.zeros_like(kl_raw), beta=cfg.beta,
                         desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight)
    n_d = int(desirable.sum())
    sums = {"loss": losses.detach().sum().item(), "tokens": counts.sum().item(),
            "n/chosen": n_d, "n/rejected": len(losses) - n_d}
    for side in SIDES:
        if sums[f"n/{side}"]:
            sums[f"rewards/{side}"] = m[f"rewards/{side}"].item() * sums[f"n/{side}"]
            sums[f"logps/{side}"] = m[f"logps/{side}"].item() * sums[f"n/{side}"]
    return example_mean(losses, n_global), sums


def side_means(acc, sums: Counter, kl_raw: torch.Tensor, prefix: str = "") -> dict[str, float]:
    """Metric sums over this process's completions -> TRL's metrics over all processes' (rewards and logps over
    each side's completions, margins when both sides are there, kl), named `prefix + key`; with a prefix also
    the loss (the mean over the completions)."""
    keys = ["loss", *(f"{k}/{side}" for k in ("n", "rewards", "logps") for side in SIDES)]
    total = dpo._reduced(acc, {k: sums.get(k, 0.0) for k in keys}, 1)
    out = {f"{prefix}loss": total["loss"] / (total["n/chosen"] + total["n/rejected"])} if prefix else {}
    for side in SIDES:
        if total[f"n/{side}"]:
            out[f"{prefix}rewards/{side}"] = total[f"rewards/{side}"] / total[f"n/{side}"]
            out[f"{prefix}logps/{side}"] = total[f"logps/{side}"] / total[f"n/{side}"]
    if f"{prefix}rewards/chosen" in out and f"{prefix}rewards/rejected" in out:
        out[f"{prefix}rewards/margins"] = out[f"{prefix}rewards/chosen"] - out[f"{prefix}rewards/rejected"]
    out[f"{prefix}kl"] = kto_reference_point(kl_raw.cpu(), torch.zeros(1)).item()
    return out


@torch.no_grad()
def evaluate(cfg: KTOConfig, model, acc, data: KTOData, ref: torch.Tensor, pad_id: int) -> dict[str, float]:
    """The loss and metrics over the held-out rows (split over processes), with one z0 over all of them."""
    model.eval()
    mine = list(range(acc.process_index, len(data.seqs), acc.num_processes))
    kl_raw = kl_estimate(model, acc, data.seqs, ref[:, MISMATCHED], mine, cfg.micro_batch_size, pad_id,
                         len(data.seqs))
    sums: Counter = Counter()
    for start in range(0, len(mine), cfg.micro_batch_size):
        chunk = mine[start:start + cfg.micro_batch_size]
        logps, counts = completion_logps(model, acc, data.seqs, chunk, MATCHED, pad_id)
        _, s = step_loss(cfg, logps, counts, ref[chunk, MATCHED].to(logps.device),
                         data.desirable[chunk].to(logps.device), kl_raw, len(data.seqs))
        sums.update(s)
    model.train()
    return side_means(acc, sums, kl_raw, "eval/")


def main(cfg: KTOConfig) -> dict:
    """Run KTO; returns the final metrics (also in metrics.jsonl and result.json)."""
    acc = common.make_accelerator(cfg.precision, cfg.seed, cfg.threads)
    common.check_batch(cfg.batch_size, cfg.micro_batch_size, acc.num_processes)
    if not (cfg.desirable_weight or cfg.undesirable_weight):
        raise UserError("desirable_weight and undesirable_weight are both 0: the loss would be 0")
    run = common.open_run(cfg, acc, "kto")
    if run.finished:
        return run.result["metrics"]

    # Data: each example's matched and mismatched (KL) sequences rendered once; the loss mask from the renderer.
    tok = load_tokenizer(cfg.model.path)
    data, held, dropped = build_data(cfg, tok)
    pad_id = tok.pad_token_id
    stream = common.DataStream(len(data.seqs), cfg.batch_size, cfg.seed)
    max_steps, steps_text = common.total_steps(cfg, len(data.seqs), "completions")

    # Model, reference log-probs of both sequences (once, with the starting model), optimizer, schedule.
    model = common.build_model(cfg.model, cfg.lora, cfg.compile)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = common.make_optimizer(params, cfg.optim, max_steps)
    model, optimizer = acc.prepare(model, optimizer)
    reasons = ", ".join(f"{n} {r}" for r, n in dropped.items()) or "none"
    # before a resume loads trained weights: the reference is the starting model
    ref, ref_eval = dpo.load_or_compute_reference(cfg, run, model, acc, data.seqs, held.seqs, pad_id)
    start = run.resume({"model": model}, {"model": optimizer}, {"model": scheduler}, max_steps,
                       f"{len(data.seqs)} completions ({balance(cfg, data)}; {sum(dropped.values())} dropped: "
                       f"{reasons}), {len(held.seqs)} held out, {steps_text}")

    # The loop.
    model.train()
    metrics: dict = {}
    for step in range(start, max_steps):
        micro = common.shard(stream.step_units(step), acc.process_index, acc.num_processes, cfg.micro_batch_size)
        # z0 of the step: the policy on the whole step's mismatched sequences, before any gradient.
        kl_raw = kl_estimate(model, acc, data.seqs, ref[:, MISMATCHED], [u for mb in micro for u in mb],
                             cfg.micro_batch_size, pad_id, cfg.batch_size)
        sums: Counter = Counter()

        def loss_of(chunk, sums=sums, kl_raw=kl_raw):  # every step has batch_size completions: the loss is their mean
            logps, counts = completion_logps(model, acc, data.seqs, chunk, MATCHED, pad_id)
            loss, s = step_loss(cfg, logps, counts, ref[chunk, MATCHED].to(logps.device),
                                data.desirable[chunk].to(logps.device), kl_raw, cfg.batch_size)
            sums.update(s)
            return loss

        loss_sum = common.accumulate(acc, model, micro, loss_of)
        metrics = common.optimizer_step(acc, params, optimizer, scheduler, loss_sum, cfg.optim.max_grad_norm,
                                        step + 1, run.ckpt_dir)
        metrics.update(side_means(acc, sums, kl_raw))
        done = step + 1
        seen = (done - start) * cfg.batch_size
        metrics["train/completions_per_s"] = seen / max(time.perf_counter() - run.t0, 1e-9)
        if held.seqs and cfg.eval_every and done % cfg.eval_every == 0 and done < max_steps:
            metrics.update(evaluate(cfg, model, acc, held, ref_eval, pad_id))
        tokens = int(acc.reduce(torch.tensor(sums["tokens"], device=acc.device), reduction="sum").item())
        run.step_done(done, metrics, tokens, force_log="eval/loss" in metrics)
    run.close()

    if held.seqs:
        metrics.update(evaluate(cfg, model, acc, held, ref_eval, pad_id))
        run.log.log(max_steps, {k: v for k, v in metrics.items() if k.startswith("eval/")})
    if acc.is_main_process:
        renderer = Renderer(tok)
        where = common.save_final(run.out, acc.unwrap_model(model), tok, renderer.stop_token_ids(), cfg.lora)
        print(f"{run.name}: done; model saved to {where}")
    acc.wait_for_everyone()
    return run.finish(metrics)
