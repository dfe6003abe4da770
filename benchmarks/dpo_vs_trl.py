"""DPO throughput on CPU: posttrain vs TRL's DPOTrainer, like with like, in one run; and the two losses compared.

Compared: full-parameter DPO (sigmoid loss, beta 0.1) of the same tiny random-init Llama (~5.3M params, fp32, sdpa
attention, saved once and loaded by both sides), BPE tokenizer and chat template (trained here on the data), the
same seeded preference pairs (400, built from `sft_vs_trl.make_examples`: chosen = the right answer, rejected = a
wrong one; prompt/chosen/rejected as message lists, so both sides render them with the same chat template), batch
(8 pairs per step, no accumulation), max length (256 tokens per prompt + response, keep the start: no pair here is
that long), steps (50: one epoch of the 400 pairs on both sides), AdamW + linear warm-up/decay, lr, grad clipping
and seed. Reference log-probs are precomputed once, before step 1, on both sides (TRL
`precompute_ref_log_probs=True`, posttrain always for dpo): that pass is timed on its own (`ref_s`) and left out of pairs/s. Each run (TRL in each of TRL_MODES, then
posttrain in each of OURS_MODES, then the loss check) is a fresh 2-thread subprocess.

TRL 1.16 options, read from the installed `trl/trainer/dpo_config.py` / `dpo_trainer.py`:
- `padding_free=True` is "temporarily unavailable": DPOTrainer warns and falls back to padding (run as a mode to
  show it). There is no `use_logits_to_keep` and no `max_prompt_length` in DPOConfig 1.16: the policy forward
  always goes through TRL's fused LM head (`add_fused_lm_head`), which on CPU (no Triton) projects EVERY position
  (prompt and padding too) through the LM head in tiles and also computes entropy/mean-logit/top-1 metrics.
- `torch_compile=True` works (mode `padding_compile`). bf16 and gradient checkpointing, TRL's defaults even on CPU,
  are both turned off.

Measured per run (the headline ratio ours/TRL uses each side's fastest mode):
- pairs_per_s: trained tokens of steps 3..N over the wall time (perf_counter) from the end of step 2 to the end of
  step N, divided by the mean trained tokens of a pair over the whole data set: pairs per second at the data set's
  average pair. Steps 1-2 are warm-up (and compilation). Collation and data loading between steps count. The two
  sides draw batches in different orders (TRL's length-grouped sampler even sorts them, longest first), so the
  timed steps' own pairs can be longer on one side than on the other; timed_pairs_per_s is the raw count of the
  timed steps' pairs per second (both agree when the timed pairs are average). One epoch makes the two sets nearly
  the same pairs (48 of 50 batches timed).
  tokens_per_s: trained (response + eos) tokens per second; seq_tokens_per_s: all non-pad tokens (TRL only: ours
  does not log them); cpu_util = CPU s / wall s, about `threads` (2) on a quiet machine.
- loss_first / loss_last / loss_last5: the DPO loss of step 1, of step N, mean of the last 5 steps (the two sides
  draw their batches in different orders, so only loss@1 is comparable in size: log 2 = 0.6931 for both).
- memory: RSS of the run's process. rss_start_mb: RSS when training starts (after the reference pass);
  peak_rss_mb: peak RSS during training (Linux VmHWM, reset when training starts).

The loss check (`check_loss`): a reference (the saved model) and a policy = reference + seeded Gaussian noise
(std 0.02 on every weight), the first 8 pairs, fp32; posttrain's loss from `recipes.dpo.pair_logps` +
`losses.preference.dpo_loss` (mean over pairs), TRL's from `DPOTrainer.compute_loss` on its own collated batch with
the reference log-probs it precomputed with `ref_model=reference`; both with beta 0.1. It also compares the token
ids and masks both sides feed, the per-pair log-probs and the gradients.

    benchmarks/.venv/bin/python benchmarks/dpo_vs_trl.py --out runs/bench/dpo_vs_trl.json
    [--steps 50 --batch-size 8 --seq-len 256 --pairs 400 --trl-modes padding,... --ours-modes default,compile
     --no-check]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft_vs_trl import _hwm_mb, make_examples, tokenizer_and_model  # noqa: E402  (the SFT benchmark's chats, tokenizer, model)

TRL_MODES = ("padding", "grouped", "padding_free", "padding_compile", "grouped_compile")
OURS_MODES = ("default", "compile")


@dataclasses.dataclass
class Setup:
    """Everything both sides share; the paths are written by `setup()`."""

    workdir: str
    model_dir: str  # save_pretrained of the random-init LlamaForCausalLM (fp32), with the tokenizer
    tokenizer_dir: str  # PreTrainedTokenizerFast with bos/eos/pad and CHAT_TEMPLATE
    data_file: str  # JSONL, one {"prompt": [...], "chosen": [...], "rejected": [...]} (message lists) per line
    batch_size: int = 8  # pairs per optimizer step, one process, no accumulation
    seq_len: int = 256  # max tokens per sequence (prompt + response), keep the start
    steps: int = 50  # with 400 pairs of 8: one epoch, so both sides train on the same pairs
    lr: float = 1e-4
    beta: float = 0.1
    warmup_steps: int = 3  # linear warm-up from 0, then linear decay to 0 at `steps`
    optim: str = "adamw_torch"  # torch.optim.AdamW(betas=(0.9, 0.999), eps=1e-8), default foreach (not fused)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    threads: int = 2
    skip_steps: int = 2  # warm-up steps left out of pairs/s
    n_pairs: int = 400
    longest: int = 0  # tokens in the longest templated prompt + response (set by setup())
    tokens_per_pair: float = 0.0  # mean trained (response + eos) tokens of a pair over all pairs (set by setup())
    flop_ratio: float = 0.0  # TRL's matmul FLOPs per pair over ours, without padding (set by setup())
    check_pairs: int = 8  # pairs in the loss check
    check_noise: float = 0.02  # std of the policy's perturbation in the loss check


def wrong_answer(i: int, chat: dict, rng: random.Random) -> str:
    """A plausible wrong answer to chat i of `make_examples` (whose task is i % 3): a wrong final number, the words
    not reversed, or a list one item short."""
    answer = chat["messages"][-1]["content"]
    if i % 3 == 0:  # "... The answer is V."
        head, value = answer.rsplit("The answer is ", 1)
        wrong = int(value.rstrip(".")) + rng.choice([-1, 1]) * rng.randint(1, 9)
        return f"{head}The answer is {wrong}."
    if i % 3 == 1:  # reversed words -> the original order
        return " ".join(reversed(answer.split(" ")))
    return "\n".join(answer.split("\n")[:-1])  # numbered list of k >= 2 items -> k - 1


def make_pairs(n: int, seed: int = 0) -> list[dict]:
    """Seeded preference pairs in TRL's conversational preference format (also read by posttrain)."""
    rng = random.Random(seed + 1)
    out = []
    for i, chat in enumerate(make_examples(n, seed)):
        msgs = chat["messages"]
        out.append({"prompt": msgs[:-1], "chosen": [msgs[-1]],
                    "rejected": [{"role": "assistant", "content": wrong_answer(i, chat, rng)}]})
        assert out[-1]["chosen"][0]["content"] != out[-1]["rejected"][0]["content"]
    return out


def setup(args: argparse.Namespace, work: str) -> Setup:
    """Write data (JSONL), tokenizer and random-init model to `work`; return the shared Setup."""
    s = Setup(work, f"{work}/model", f"{work}/tokenizer", f"{work}/pairs.jsonl", batch_size=args.batch_size,
              seq_len=args.seq_len, steps=args.steps, n_pairs=args.pairs)
    rows = make_pairs(s.n_pairs, s.seed)
    Path(s.data_file).write_text("".join(json.dumps(r) + "\n" for r in rows))

    tok, model = tokenizer_and_model((m["content"] for r in rows for k in ("prompt", "chosen", "rejected")
                                      for m in r[k]), s.seed, s.tokenizer_dir, s.model_dir)
    tok.save_pretrained(s.model_dir)  # posttrain loads the tokenizer from the model folder

    lens = [len(tok.apply_chat_template(r["prompt"] + r[k], tokenize=True, return_dict=True)["input_ids"])
            for r in rows for k in ("chosen", "rejected")]
    s.longest = max(lens)
    # Trained tokens of a response: its templated length minus the templated prompt's (with the generation prompt).
    head = [len(tok.apply_chat_template(r["prompt"], tokenize=True, return_dict=True, add_generation_prompt=True)
                ["input_ids"]) for r in rows]
    s.tokens_per_pair = sum(n - head[i // 2] for i, n in enumerate(lens)) / len(rows)
    # The fewest matmul FLOPs each side's scheme needs (forward and backward alike, so a count of token-weights
    # products): TRL runs both sequences of a pair in full and the output head at every position; posttrain runs
    # the prompt once and the head only where a response token is predicted. Padding (TRL's, and attention's
    # own FLOPs, about a tenth here) left out: an upper bound on what the same math at the same speed can gain.
    n_head = model.get_output_embeddings().weight.numel()
    n_body = sum(p.numel() for p in model.parameters()) - n_head - model.get_input_embeddings().weight.numel()
    trl_flops = sum((n_body + n_head) * (lens[2 * i] + lens[2 * i + 1]) for i in range(len(rows)))
    ours_flops = sum(n_body * (lens[2 * i] + lens[2 * i + 1] - h) + n_head * (lens[2 * i] + lens[2 * i + 1] - 2 * h)
                     for i, h in enumerate(head))
    s.flop_ratio = trl_flops / ours_flops
    print(f"setup: {work}  vocab={len(tok)}  params={sum(p.numel() for p in model.parameters()) / 1e6:.2f}M  "
          f"pairs={len(rows)}  tokens/sequence min={min(lens)} mean={sum(lens) / len(lens):.0f} max={max(lens)}  "
          f"trained tokens/pair {s.tokens_per_pair:.1f}  matmul FLOPs per pair, TRL / posttrain: {s.flop_ratio:.2f}")
    return s


class Meter:
    """Both sides record: train_begin() once, add(step, ...) per step, step_end(step) per step (from 1)."""

    def __init__(self) -> None:
        self.pairs, self.trained, self.seq_tokens = defaultdict(int), defaultdict(int), defaultdict(int)
        self.loss, self.t_end, self.cpu_end = defaultdict(float), {}, {}
        self.rss_start, self.ref_s = 0.0, None

    def train_begin(self) -> None:
        # Reset VmHWM to the current RSS (Linux >= 4.0), so the peak read at the end is the training peak.
        with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.rss_start = psutil.Process().memory_info().rss / 2**20

    def add(self, step: int, pairs: int, trained: int, seq_tokens: int, loss: float) -> None:
        for d, v in ((self.pairs, pairs), (self.trained, trained), (self.seq_tokens, seq_tokens), (self.loss, loss)):
            d[step] += v

    def step_end(self, step: int) -> None:
        self.t_end[step], self.cpu_end[step] = time.perf_counter(), time.process_time()

    def result(self, s: Setup, **extra) -> dict:
        k, n = s.skip_steps, max(self.t_end)
        secs, cpu = self.t_end[n] - self.t_end[k], self.cpu_end[n] - self.cpu_end[k]
        pairs, tok, seq = (sum(d[i] for i in range(k + 1, n + 1)) for d in (self.pairs, self.trained, self.seq_tokens))
        losses = [self.loss[i] for i in range(1, n + 1)]
        return {"steps": n, "timed_steps": n - k, "seconds": round(secs, 3), "cpu_seconds": round(cpu, 3),
                "pairs": pairs, "pairs_per_s": round(tok / secs / s.tokens_per_pair, 2),
                "timed_pairs_per_s": round(pairs / secs, 2), "trained_tokens": tok,
                "tokens_per_s": round(tok / secs, 1), "seq_tokens_per_s": round(seq / secs, 1) if seq else None,
                "trained_tokens_per_pair": round(tok / pairs, 1), "loss_first": round(losses[0], 4),
                "loss_last": round(losses[-1], 4), "loss_last5": round(sum(losses[-5:]) / len(losses[-5:]), 4),
                "ref_s": None if self.ref_s is None else round(self.ref_s, 2), "rss_start_mb": round(self.rss_start),
                "peak_rss_mb": round(_hwm_mb()), "cpu_util": round(cpu / secs, 2), **extra}


def _trl_config(s: Setup, out: str, mode: str = "padding", **over):
    """TRL's DPOConfig for this setup. `mode`: padding (each batch padded to its longest sequence); grouped (as
    padding, with the length-grouped sampler: less padding; the lengths come from a `length` column, so unused
    columns are kept); padding_free (`padding_free=True`, which TRL 1.16 turns back into padding);
    `<mode>_compile` (`torch_compile=True`)."""
    import torch
    import trl

    compiled, mode = mode.endswith("_compile"), mode.removesuffix("_compile")
    # TRL defaults bf16=True and gradient checkpointing=True even on CPU: both off. transformers >= 5.x calls it
    # activation_checkpointing (TRL's gradient_checkpointing=True default feeds it).
    kw = dict(
        output_dir=out, max_steps=s.steps, seed=s.seed, data_seed=s.seed,
        per_device_train_batch_size=s.batch_size, gradient_accumulation_steps=1,
        learning_rate=s.lr, lr_scheduler_type="linear", warmup_steps=s.warmup_steps, optim=s.optim,
        weight_decay=s.weight_decay, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        max_grad_norm=s.max_grad_norm, bf16=False, fp16=False, activation_checkpointing=False,
        use_cpu=True, dataloader_num_workers=0, report_to="none", disable_tqdm=True,
        logging_strategy="steps", logging_steps=s.steps, save_strategy="no", eval_strategy="no",
        loss_type=["sigmoid"], beta=s.beta, max_length=s.seq_len, truncation_mode="keep_start",
        padding_free=mode == "padding_free", precompute_ref_log_probs=True, precompute_ref_batch_size=s.batch_size,
        model_init_kwargs={"dtype": torch.float32, "attn_implementation": "sdpa"}, torch_compile=compiled,
    )
    if mode == "grouped":  # LengthGroupedSampler reads `length`; DPO rows have no input_ids to measure
        kw.update(train_sampling_strategy="group_by_length", length_column_name="length", remove_unused_columns=False)
    kw.update(over)
    return trl.DPOConfig(**kw)


def run_trl(s: Setup, mode: str = "padding") -> dict:
    """TRL DPOTrainer in `mode` (see `_trl_config`), reference log-probs precomputed before training."""
    import datasets
    import torch
    import trl
    from transformers import AutoTokenizer, TrainerCallback

    torch.set_num_threads(s.threads)
    meter = Meter()
    rows = [json.loads(ln) for ln in Path(s.data_file).read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(s.tokenizer_dir)

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            assert not getattr(model, "is_activation_checkpointing", False), "activation checkpointing is on"
            meter.train_begin()

        def on_step_end(self, args, state, control, **kw):
            meter.step_end(state.global_step)

    class CountingDPOTrainer(trl.DPOTrainer):
        def _precompute_ref_logps(self, *a, **kw):
            t = time.perf_counter()
            out = super()._precompute_ref_logps(*a, **kw)
            meter.ref_s = (meter.ref_s or 0.0) + time.perf_counter() - t
            return out

        def training_step(self, model, inputs, num_items_in_batch=None):
            pairs = inputs["input_ids"].shape[0] // 2  # rows: chosen of every pair, then rejected
            trained = int(inputs["completion_mask"].sum())  # response + eos tokens (the loss's log-probs)
            seq = int(inputs["attention_mask"].sum())
            loss = super().training_step(model, inputs, num_items_in_batch)
            meter.add(self.state.global_step + 1, pairs, trained, seq, float(loss))
            return loss

    cfg = _trl_config(s, f"{s.workdir}/trl_{mode}", mode)
    if cfg.train_sampling_strategy == "group_by_length":  # a pair's padded length: its longer sequence
        for r in rows:
            r["length"] = max(len(tok.apply_chat_template(r["prompt"] + r[k], tokenize=True, return_dict=True)
                                  ["input_ids"]) for k in ("chosen", "rejected"))
    trainer = CountingDPOTrainer(model=s.model_dir, args=cfg, processing_class=tok,
                                 train_dataset=datasets.Dataset.from_list(rows), callbacks=[Timer()])
    trainer.train()
    return meter.result(s, trainer=f"trl {trl.__version__} ({mode})",
                        padding_free_effective=bool(getattr(trainer, "padding_free", False)))


def run_posttrain(s: Setup, mode: str = "default") -> dict:
    """posttrain's DPO recipe in-process (the same `main(cfg)` as `posttrain dpo ...`), fp32, default settings
    (a micro-batch's pairs packed into rows, both sequences of a pair in one row with their prompt computed once,
    the output head only where a response token is predicted), with the Setup's batch, lr schedule, AdamW, clipping and beta. `mode`: default,
    or compile (`compile=true`). Per-step trained tokens, loss, wall time and CPU time come from the run's
    metrics.jsonl (`train/elapsed_s`, `train/cpu_s`, both counted from before the reference pass)."""
    import torch

    from posttrain.config import load_config
    from posttrain.recipes import dpo

    torch.set_num_threads(s.threads)
    out = f"{s.workdir}/posttrain_{mode}"
    cfg = load_config(dpo.DPOConfig, None, [
        f"model={s.model_dir}", f"data={s.data_file}", f"output_dir={out}", f"max_steps={s.steps}", f"seed={s.seed}",
        f"batch_size={s.batch_size}", f"micro_batch_size={s.batch_size}", f"data.max_seq_len={s.seq_len}",
        "loss=dpo", f"beta={s.beta}", f"optim.lr={s.lr}", f"optim.warmup_steps={s.warmup_steps}",
        "optim.schedule=linear", f"optim.weight_decay={s.weight_decay}", f"optim.max_grad_norm={s.max_grad_norm}",
        f"threads={s.threads}", "precision=fp32", "log_every=1", f"compile={mode == 'compile'}", "resume=false",
    ])
    meter = Meter()
    original = dpo.load_or_compute_reference

    def timed_reference(*a, **kw):  # the reference pass, timed on its own; training starts after it
        t = time.perf_counter()
        ref = original(*a, **kw)
        meter.ref_s = time.perf_counter() - t
        meter.train_begin()
        return ref

    dpo.load_or_compute_reference = timed_reference
    try:
        dpo.main(cfg)
    finally:
        dpo.load_or_compute_reference = original
    rows = [json.loads(x) for x in Path(out, "metrics.jsonl").read_text().splitlines()]
    for r in (r for r in rows if "train/loss" in r):
        meter.add(r["step"], s.batch_size, r["train/tokens"], 0, r["train/loss"])
        meter.t_end[r["step"]], meter.cpu_end[r["step"]] = r["train/elapsed_s"], r["train/cpu_s"]
    import posttrain

    return meter.result(s, trainer=f"posttrain {posttrain.__version__} ({mode})")


def check_loss(s: Setup) -> dict:
    """posttrain's and TRL's DPO loss (and per-pair log-probs, gradients) on one fixed batch of pairs, with a
    policy that differs from the reference, fp32."""
    import datasets
    import torch
    import trl
    from transformers import AutoModelForCausalLM

    from posttrain.data.formats import load_examples
    from posttrain.data.render import Renderer
    from posttrain.losses.preference import dpo_loss
    from posttrain.models.load import load_tokenizer
    from posttrain.recipes import common, dpo

    torch.set_num_threads(s.threads)
    rows = [json.loads(ln) for ln in Path(s.data_file).read_text().splitlines()[: s.check_pairs]]
    n = len(rows)

    def load(path: str) -> torch.nn.Module:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")

    # The policy: the reference plus seeded noise, saved (TRL takes the policy as a folder, the reference as a model).
    policy = load(s.model_dir)
    g = torch.Generator().manual_seed(s.seed + 123)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=g) * s.check_noise)
    policy_dir = f"{s.workdir}/check_policy"
    policy.save_pretrained(policy_dir)
    load_tokenizer(s.model_dir).save_pretrained(policy_dir)

    # posttrain: the recipe's pair rendering, packing and log-probs, then losses.preference.dpo_loss.
    acc = common.make_accelerator("fp32", s.seed, s.threads)
    tok = load_tokenizer(s.model_dir)
    _, prefs = load_examples(s.data_file, "auto", limit=n)  # the recipe's own loader, on the first n rows
    pairs, dropped = dpo.render_pairs(prefs, Renderer(tok, s.seq_len))
    assert len(pairs) == n and not dropped, dropped
    chunk = list(range(n))
    ref_model, ours_policy = load(s.model_dir).eval(), load(policy_dir)
    with torch.no_grad():
        ref_ours, _ = dpo.pair_logps(ref_model, acc, pairs, chunk, tok.pad_token_id)
    logp_ours, _ = dpo.pair_logps(ours_policy, acc, pairs, chunk, tok.pad_token_id)
    losses, _ = dpo_loss(logp_ours[:, 0], logp_ours[:, 1], ref_ours[:, 0], ref_ours[:, 1], beta=s.beta)
    loss_ours = losses.mean()
    loss_ours.backward()
    grads_ours = {k: p.grad.detach().clone() for k, p in ours_policy.named_parameters()}

    # TRL: DPOTrainer with policy folder + in-memory reference; its precomputed reference log-probs, its collator,
    # its compute_loss.
    cfg = _trl_config(s, f"{s.workdir}/trl_check", "padding", max_steps=1)
    trainer = trl.DPOTrainer(model=policy_dir, ref_model=load(s.model_dir).eval(), args=cfg,
                             processing_class=load_tokenizer(s.model_dir), train_dataset=datasets.Dataset.from_list(rows))
    ds = trainer.train_dataset
    batch = trainer.data_collator([ds[i] for i in range(n)])
    model = trainer.model
    model.train()
    model.zero_grad(set_to_none=True)
    loss_trl = trainer.compute_loss(model, batch)
    loss_trl.backward()
    grads_trl = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
    # TRL's per-pair policy log-probs, recomputed the way its _compute_loss does (for the per-pair comparison)
    with torch.no_grad():
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        lp = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                   fused_lm_head=True).log_probs.sum(1)
    logp_trl = torch.stack(lp.chunk(2), 1)
    ref_trl = torch.stack([batch["ref_chosen_logps"], batch["ref_rejected_logps"]], 1)

    # The token ids and trained masks both sides score: posttrain's Rendered vs TRL's prompt_ids + chosen/rejected.
    same_tokens = all(
        pairs[i][j].input_ids == ds[i]["prompt_ids"] + ds[i][side]
        and [x != -100 for x in pairs[i][j].labels] == [False] * len(ds[i]["prompt_ids"]) + [True] * len(ds[i][side])
        for i in range(n) for j, side in enumerate(("chosen_ids", "rejected_ids")))
    grad_diff = max(float((grads_ours[k] - grads_trl[k]).abs().max()) for k in grads_ours)
    grad_scale = max(float(grads_ours[k].abs().max()) for k in grads_ours)
    res = {"pairs": n, "beta": s.beta, "noise_std": s.check_noise, "same_tokens_and_masks": same_tokens,
           "loss_posttrain": float(loss_ours.detach()), "loss_trl": float(loss_trl.detach()),
           "loss_abs_diff": abs(float(loss_ours.detach()) - float(loss_trl.detach())),
           "policy_logps_max_abs_diff": float((logp_ours.detach() - logp_trl).abs().max()),
           "ref_logps_max_abs_diff": float((ref_ours - ref_trl).abs().max()),
           "margin_mean": float(((logp_ours.detach() - ref_ours) @ torch.tensor([1.0, -1.0])).mean()),
           "grad_max_abs_diff": grad_diff, "grad_max_abs": grad_scale}
    res["pass"] = bool(res["loss_abs_diff"] <= 1e-4 and same_tokens)
    return res


def _run_isolated(name: str, s: Setup) -> dict:
    """Run one trainer (or the loss check) in a fresh interpreter (clean RSS peak, no shared warm caches)."""
    sj, out = f"{s.workdir}/setup.json", f"{s.workdir}/{name.replace(':', '_')}.json"
    Path(sj).write_text(json.dumps(dataclasses.asdict(s)))
    t = time.perf_counter()
    rc = subprocess.run([sys.executable, __file__, "--worker", name, sj, out]).returncode
    print(f"[{name}: {time.perf_counter() - t:.0f} s, exit {rc}]", flush=True)
    return json.loads(Path(out).read_text()) if rc == 0 else {"error": f"exit code {rc}", "pairs_per_s": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for flag, default in (("--steps", Setup.steps), ("--batch-size", Setup.batch_size), ("--seq-len", Setup.seq_len),
                          ("--pairs", Setup.n_pairs)):
        ap.add_argument(flag, type=int, default=default)
    ap.add_argument("--trl-modes", default=",".join(TRL_MODES), help="comma-separated subset of %(default)s")
    ap.add_argument("--ours-modes", default=",".join(OURS_MODES), help="comma-separated subset of %(default)s")
    ap.add_argument("--no-check", action="store_true", help="skip the loss-equality check")
    ap.add_argument("--out", help="write setup and all results as JSON here")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.update(OMP_NUM_THREADS=str(Setup.threads), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
                      HF_DATASETS_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1",
                      TQDM_DISABLE="1")
    if args.worker:  # child process: run one trainer (or the check), write its result
        name, setup_json, out = args.worker
        s = Setup(**json.loads(Path(setup_json).read_text()))
        kind, mode = name.split(":", 1)
        res = {"posttrain": run_posttrain, "trl": run_trl, "check": lambda s, _: check_loss(s)}[kind](s, mode)
        return Path(out).write_text(json.dumps(res))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="dpo_vs_trl_") as work:  # removed at the end
        s = setup(args, work)
        names = [f"trl:{m}" for m in args.trl_modes.split(",") if m] + \
                [f"posttrain:{m}" for m in args.ours_modes.split(",") if m]
        res = {n: _run_isolated(n, s) for n in names}
        check = None if args.no_check else _run_isolated("check:loss", s)
    load_after = os.getloadavg()

    print(f"\nbatch={s.batch_size} pairs, max_length={s.seq_len}, steps={s.steps} (first {s.skip_steps} untimed), "
          f"fp32, lr={s.lr}, beta={s.beta}; load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    cols = {"pairs_per_s": "pairs/s", "timed_pairs_per_s": "timed p/s", "tokens_per_s": "tok/s",
            "trained_tokens_per_pair": "tok/pair",
            "seq_tokens_per_s": "seq tok/s", "loss_first": "loss@1", "loss_last": "loss@N", "loss_last5": "last5",
            "ref_s": "ref s", "rss_start_mb": "RSS0 MiB", "peak_rss_mb": "peak MiB", "cpu_util": "cpu util"}
    print(f"{'run':22}" + "".join(f"{h:>10}" for h in cols.values()))
    for name, r in res.items():
        note = r.get("skipped") or r.get("error") or r.get("trainer")
        print(f"{name:22}" + ("".join(f"{str(r[c]) if r[c] is not None else '-':>10}" for c in cols)
                              if r.get("pairs_per_s") else f"  {note}"))
    if any(r.get("cpu_util", s.threads) < 0.9 * s.threads for r in res.values()):
        print(f"WARNING: cpu util < {0.9 * s.threads} in some run: the machine was busy, rerun when it is quiet")
    if res.get("trl:padding_free", {}).get("padding_free_effective") is False:
        print("note: trl:padding_free is padding (TRL 1.16 DPOTrainer warns and sets padding_free=False)")
    if check is not None:
        if check.get("error"):
            print(f"loss check: {check['error']}")
        else:
            print(f"loss check ({check['pairs']} pairs, policy = reference + N(0, {check['noise_std']}^2), beta "
                  f"{check['beta']}, fp32): posttrain {check['loss_posttrain']:.6f}  TRL {check['loss_trl']:.6f}  "
                  f"|diff| {check['loss_abs_diff']:.2e}  (policy logps max |diff| {check['policy_logps_max_abs_diff']:.2e}"
                  f", ref {check['ref_logps_max_abs_diff']:.2e}, grads {check['grad_max_abs_diff']:.2e} of max "
                  f"{check['grad_max_abs']:.2e}; same tokens and masks: {check['same_tokens_and_masks']})  "
                  f"{'PASS' if check['pass'] else 'FAIL'} (1e-4)")

    def best_of(prefix: str) -> str | None:
        ok = {k: v for k, v in res.items() if k.startswith(prefix) and v.get("pairs_per_s")}
        return max(ok, key=lambda k: ok[k]["pairs_per_s"]) if ok else None

    def ratio_of(a: str | None, b: str | None) -> float | None:
        ok = a in res and b in res and res[a].get("pairs_per_s") and res[b].get("pairs_per_s")
        return round(res[a]["pairs_per_s"] / res[b]["pairs_per_s"], 3) if ok else None

    best, ours = best_of("trl:"), best_of("posttrain:")
    ratio = ratio_of(ours, best)
    like = {f"{a} / {b}": ratio_of(a, b) for a, b in (
        ("posttrain:default", "trl:padding"), ("posttrain:default", "trl:grouped"),
        ("posttrain:compile", "trl:padding_compile"), ("posttrain:compile", "trl:grouped_compile"))}
    for k, v in like.items():
        print(f"like for like: {k} = {v}")
    print(f"best: {ours} vs {best}; the same math at the same FLOP rate would give at most {s.flop_ratio:.2f} "
          "(TRL's matmul FLOPs per pair over ours, padding left out)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        summary = {"setup": dataclasses.asdict(s), "load_average_before": load_before, "load_average_after": load_after,
                   "results": res, "loss_check": check, "trl_best": best, "ours_best": ours,
                   "ratio_ours_over_trl": ratio, "like_for_like": like}
        Path(args.out).write_text(json.dumps(summary, indent=2))
    print(f"ratio: {ratio:.2f}" if ratio is not None else "ratio: n/a")


if __name__ == "__main__":
    main()
