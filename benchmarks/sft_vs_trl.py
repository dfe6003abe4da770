"""SFT throughput on CPU: posttrain vs TRL's SFTTrainer, like with like, in one run.

Compared: full fine-tuning of the same tiny random-init Llama (~5.3M params, fp32, sdpa attention), BPE tokenizer
(trained here on the data) and chat template, seeded synthetic chat data (OpenAI `messages`, 2000 examples), batch
size, gradient accumulation, max sequence length, steps, AdamW + linear warm-up/decay, grad clipping and seed, with
the loss on assistant tokens only (response + its eos). `setup()` writes model, tokenizer and data to a temp dir
that every trainer loads; each run (TRL in each of TRL_MODES, then posttrain) is a fresh 2-thread subprocess.

Measured per run (the ratio ours/TRL uses TRL's fastest mode):
- tokens_per_s: trained tokens (label positions scored by the loss, `labels[:, 1:] != -100`) of steps 3..N over
  the wall time (perf_counter) from the end of step 2 to the end of step N; steps 1-2 are warm-up. Collation and
  data loading between steps count. seq_tokens_per_s: same for all non-pad tokens; tokens_per_cpu_s: per CPU
  second. cpu_util = CPU s / wall s, about `threads` (2) on a quiet machine; far below means other processes took
  the cores and the numbers are not usable.
- loss_last: the last step's loss; loss_last5: mean of the last 5 steps.
- memory: resident set size (RSS) of the run's process; tracemalloc is not used since it does not see torch's C++
  allocations. rss_start_mb: RSS at train start (libraries, model, tokenized data). peak_rss_mb: peak RSS during
  training (Linux VmHWM, reset at train start via /proc/self/clear_refs; ru_maxrss elsewhere).

    benchmarks/.venv/bin/python benchmarks/sft_vs_trl.py [--steps 30 --batch-size 8 --seq-len 256 --out r.json]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import psutil

SPECIALS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>"]
# Each assistant turn ends with eos inside {% generation %}, so TRL's assistant mask trains the stop token.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|assistant|>\n' }}"
    "{% generation %}{{ m['content'] + eos_token }}{% endgeneration %}"
    "{% else %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
TRL_MODES = ("padding", "grouped", "packing", "padding_free", "grouped_compile", "padding_free_compile")
OURS_MODES = ("padding", "packing", "packing_compile")


@dataclasses.dataclass
class Setup:
    """Everything both sides share; the paths are written by `setup()`."""

    workdir: str
    model_dir: str  # save_pretrained of the random-init LlamaForCausalLM (fp32)
    tokenizer_dir: str  # PreTrainedTokenizerFast with bos/eos/pad and CHAT_TEMPLATE
    data_file: str  # JSONL, one {"messages": [...]} per line
    batch_size: int = 8  # examples (or packed rows) per step, one process
    grad_accum: int = 1
    seq_len: int = 256  # max tokens per sequence: truncation length, packed row length
    steps: int = 30
    lr: float = 5e-4
    warmup_steps: int = 3  # linear warm-up from 0, then linear decay to 0 at `steps`
    optim: str = "adamw_torch"  # torch.optim.AdamW(betas=(0.9, 0.999), eps=1e-8), default foreach (not fused)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    threads: int = 2
    skip_steps: int = 2  # warm-up steps left out of tokens/s
    n_examples: int = 2000
    longest: int = 0  # tokens in the longest templated example (set by setup())


def make_examples(n: int, seed: int = 0) -> list[dict]:
    """Seeded chats: multi-step arithmetic, word reversal, numbered lists of pseudo-words (~10-70 token prompts)."""
    rng = random.Random(seed)
    syl = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    lex = sorted({"".join(rng.choice(syl) for _ in range(rng.randint(1, 3))) for _ in range(3000)})
    kinds = ["fruits", "tools", "cities", "rivers", "songs", "planets", "names", "colors"]
    fluff = ["Please be precise.", "Answer briefly.", "Think carefully before answering.",
             "This is for a quiz I am writing for my class.", "Keep the format simple.", "No extra commentary."]
    out = []
    for i in range(n):
        if i % 3 == 0:
            nums = [rng.randint(1, 99) for _ in range(rng.randint(2, 7))]
            ops = [rng.choice("+-") for _ in nums[1:]]
            vals = list(itertools.accumulate([nums[0]] + [x if o == "+" else -x for o, x in zip(ops, nums[1:])]))
            prompt = f"Compute {nums[0]} " + " ".join(f"{o} {x}" for o, x in zip(ops, nums[1:])) + "."
            steps = " ".join(f"{a} {o} {x} = {b}." for a, o, x, b in zip(vals, ops, nums[1:], vals[1:]))
            answer = f"Step by step: {steps} The answer is {vals[-1]}."
        elif i % 3 == 1:
            words = rng.sample(lex, rng.randint(3, 25))
            prompt, answer = "Reverse the order of these words: " + " ".join(words), " ".join(reversed(words))
        else:
            k, kind = rng.randint(2, 14), rng.choice(kinds)
            prompt = f"Write a numbered list of {k} made-up {kind}."
            answer = "\n".join(f"{j + 1}. {w.capitalize()}" for j, w in enumerate(rng.sample(lex, k)))
        msgs = [{"role": "user", "content": " ".join([prompt, *rng.sample(fluff, rng.randint(0, 3))])},
                {"role": "assistant", "content": answer}]
        if rng.random() < 0.3:
            msgs.insert(0, {"role": "system", "content": "You are a careful, terse assistant."})
        out.append({"messages": msgs})
    return out


def tokenizer_and_model(texts, seed: int, tokenizer_dir: str, model_dir: str):
    """The benchmarks' byte-level BPE tokenizer (4,096 tokens, trained on `texts`, saved to `tokenizer_dir`) and
    a random-init Llama of 5.26M parameters seeded with `seed` (saved to `model_dir`). Returns both."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=4096, special_tokens=SPECIALS, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<|pad|>", bos_token="<|bos|>", eos_token="<|eos|>")
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(tokenizer_dir)

    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
                      tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(model_dir)
    return tok, model


def setup(args: argparse.Namespace, work: str) -> Setup:
    """Write data (JSONL), tokenizer and random-init model to `work`; return the shared Setup."""
    s = Setup(work, f"{work}/model", f"{work}/tokenizer", f"{work}/data.jsonl", batch_size=args.batch_size,
              seq_len=args.seq_len, steps=args.steps)
    rows = make_examples(s.n_examples, s.seed)
    Path(s.data_file).write_text("".join(json.dumps(r) + "\n" for r in rows))

    tok, model = tokenizer_and_model((m["content"] for r in rows for m in r["messages"]), s.seed,
                                     s.tokenizer_dir, s.model_dir)

    lens = [len(tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"]) for r in rows]
    s.longest = max(lens)
    print(f"setup: {work}  vocab={len(tok)}  params={sum(p.numel() for p in model.parameters()) / 1e6:.2f}M  "
          f"examples={len(rows)}  tokens/example min={min(lens)} mean={sum(lens) / len(lens):.0f} max={max(lens)}")
    return s


def _hwm_mb() -> float:
    """Peak RSS of this process in MiB: Linux VmHWM, else ru_maxrss (whole process life)."""
    if os.path.exists("/proc/self/status"):  # VmHWM is in kB
        return int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Meter:
    """Both sides record: train_begin() once, add(step, ...) per micro-batch, step_end(step) per step (from 1)."""

    def __init__(self) -> None:
        self.trained, self.seq_tokens, self.loss = defaultdict(int), defaultdict(int), defaultdict(float)
        self.t_end, self.cpu_end, self.rss_start = {}, {}, 0.0

    def train_begin(self) -> None:
        # Reset VmHWM to the current RSS (Linux >= 4.0), so the peak read at the end is the training peak.
        with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.rss_start = psutil.Process().memory_info().rss / 2**20

    def add(self, step: int, trained: int, seq_tokens: int, loss: float) -> None:
        for d, v in ((self.trained, trained), (self.seq_tokens, seq_tokens), (self.loss, loss)):
            d[step] += v

    def step_end(self, step: int) -> None:
        self.t_end[step], self.cpu_end[step] = time.perf_counter(), time.process_time()

    def result(self, s: Setup, **extra) -> dict:
        k, n = s.skip_steps, max(self.t_end)
        secs, cpu = self.t_end[n] - self.t_end[k], self.cpu_end[n] - self.cpu_end[k]
        tok, seq = (sum(d[i] for i in range(k + 1, n + 1)) for d in (self.trained, self.seq_tokens))
        losses = [self.loss[i] for i in range(1, n + 1)]
        return {"steps": n, "timed_steps": n - k, "seconds": round(secs, 3), "cpu_seconds": round(cpu, 3),
                "trained_tokens": tok, "tokens_per_s": round(tok / secs, 1), "seq_tokens_per_s": round(seq / secs, 1),
                "tokens_per_cpu_s": round(tok / cpu, 1), "loss_first": round(losses[0], 4),
                "loss_last": round(losses[-1], 4), "loss_last5": round(sum(losses[-5:]) / len(losses[-5:]), 4),
                "rss_start_mb": round(self.rss_start), "peak_rss_mb": round(_hwm_mb()),
                "cpu_util": round(cpu / secs, 2), **extra}


def run_trl(s: Setup, mode: str = "padding") -> dict:
    """TRL SFTTrainer, fp32, no activation checkpointing, assistant-only loss. `mode` (TRL_MODES):
    padding: pad each batch to its longest example; grouped: same + length-grouped sampler (less padding);
    packing: BFD packing into seq_len rows, which TRL then flattens padding-free into one [1, B*seq_len] row
    (documents kept apart by position_ids); padding_free: no packing, B examples flattened into one row."""
    import datasets
    import torch
    import trl
    from transformers import AutoTokenizer, TrainerCallback

    torch.set_num_threads(s.threads)
    compiled, mode = mode.endswith("_compile"), mode.removesuffix("_compile")  # "<mode>_compile": torch_compile=True
    meter = Meter()
    rows = [json.loads(ln) for ln in Path(s.data_file).read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(s.tokenizer_dir)
    if mode == "padding_free" and s.longest > s.seq_len:  # TRL needs max_length=None for padding_free w/o packing
        return {"skipped": f"longest example {s.longest} > seq_len {s.seq_len}; padding_free cannot truncate"}

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            assert not getattr(model, "is_activation_checkpointing", False), "activation checkpointing is on"
            meter.train_begin()

        def on_step_end(self, args, state, control, **kw):
            meter.step_end(state.global_step)

    class CountingSFTTrainer(trl.SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            am = inputs.get("attention_mask")  # absent when padding-free: every position is then a real token
            trained = int((inputs["labels"][:, 1:] != -100).sum())  # positions scored by the loss
            seq = int(am.sum()) if am is not None else inputs["input_ids"].numel()
            loss = super().training_step(model, inputs, num_items_in_batch)
            meter.add(self.state.global_step + 1, trained, seq, float(loss))
            return loss

    # TRL defaults bf16=True and gradient checkpointing=True even on CPU: both off. transformers >= 5.x calls it
    # activation_checkpointing (TRL's gradient_checkpointing=True default feeds it; the old name warns).
    # assistant_only_loss needs {% generation %} markers in the chat template.
    cfg = trl.SFTConfig(
        output_dir=f"{s.workdir}/trl_{mode}", max_steps=s.steps, seed=s.seed, data_seed=s.seed,
        per_device_train_batch_size=s.batch_size, gradient_accumulation_steps=s.grad_accum,
        learning_rate=s.lr, lr_scheduler_type="linear", warmup_steps=s.warmup_steps, optim=s.optim,
        weight_decay=s.weight_decay, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        max_grad_norm=s.max_grad_norm, bf16=False, fp16=False, activation_checkpointing=False,
        train_sampling_strategy="group_by_length" if mode == "grouped" else "random",
        use_cpu=True, dataloader_num_workers=0, report_to="none", disable_tqdm=True,
        logging_strategy="steps", logging_steps=s.steps, save_strategy="no", eval_strategy="no",
        assistant_only_loss=True, max_length=None if mode == "padding_free" else s.seq_len,
        packing=mode == "packing", packing_strategy="bfd", padding_free=mode == "padding_free",
        model_init_kwargs={"dtype": torch.float32, "attn_implementation": "sdpa"}, torch_compile=compiled,
    )
    trainer = CountingSFTTrainer(model=s.model_dir, args=cfg, processing_class=tok,
                                 train_dataset=datasets.Dataset.from_list(rows), callbacks=[Timer()])
    trainer.train()
    return meter.result(s, trainer=f"trl {trl.__version__} ({mode}{' compiled' if compiled else ''})")


def run_posttrain(s: Setup, mode: str = "packing") -> dict:
    """posttrain's SFT recipe in-process (the same `main(cfg)` as `posttrain sft ...`), fp32, with the Setup's
    batch, accumulation, lr schedule, AdamW and clipping. `mode`: packing (whole examples packed into seq_len rows,
    position ids restart per document; batch = packed rows) or padding (batch = examples, padded).
    Per-step trained tokens, loss, wall time and CPU time come from the run's metrics.jsonl (`train/elapsed_s`,
    `train/cpu_s`, both counted from the start of the training loop)."""
    import shutil

    import torch

    from posttrain.config import load_config
    from posttrain.recipes import sft

    torch.set_num_threads(s.threads)
    compiled, mode = mode.endswith("_compile"), mode.removesuffix("_compile")
    model_dir, out = f"{s.workdir}/posttrain_model", f"{s.workdir}/posttrain_{mode}{'_compile' * compiled}"
    shutil.copytree(s.model_dir, model_dir, dirs_exist_ok=True)
    shutil.copytree(s.tokenizer_dir, model_dir, dirs_exist_ok=True)
    cfg = load_config(sft.SFTConfig, None, [
        f"model={model_dir}", f"data={s.data_file}", f"output_dir={out}", f"max_steps={s.steps}", f"seed={s.seed}",
        f"batch_size={s.batch_size * s.grad_accum}", f"micro_batch_size={s.batch_size}",
        f"data.max_seq_len={s.seq_len}", f"data.packing={mode == 'packing'}", f"optim.lr={s.lr}",
        f"optim.warmup_steps={s.warmup_steps}", "optim.schedule=linear", f"optim.weight_decay={s.weight_decay}",
        f"optim.max_grad_norm={s.max_grad_norm}", f"threads={s.threads}", "precision=fp32", f"log_every={1}",
        f"compile={compiled}",
    ])
    meter = Meter()
    meter.train_begin()
    sft.main(cfg)
    rows = [json.loads(x) for x in Path(out, "metrics.jsonl").read_text().splitlines()]
    for r in (r for r in rows if "train/loss" in r):
        meter.add(r["step"], r["train/tokens"], r["train/seq_tokens"], r["train/loss"])
        meter.t_end[r["step"]], meter.cpu_end[r["step"]] = r["train/elapsed_s"], r["train/cpu_s"]
    import posttrain

    return meter.result(s, trainer=f"posttrain {posttrain.__version__} ({mode}{' compiled' if compiled else ''})")


def _run_isolated(name: str, s: Setup) -> dict:
    """Run one trainer in a fresh interpreter (clean RSS peak, no shared warm caches)."""
    sj, out = f"{s.workdir}/setup.json", f"{s.workdir}/{name.replace(':', '_')}.json"
    Path(sj).write_text(json.dumps(dataclasses.asdict(s)))
    rc = subprocess.run([sys.executable, __file__, "--worker", name, sj, out]).returncode
    return json.loads(Path(out).read_text()) if rc == 0 else {"error": f"exit code {rc}", "tokens_per_s": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for flag, default in (("--steps", 30), ("--batch-size", 8), ("--seq-len", 256)):
        ap.add_argument(flag, type=int, default=default)
    ap.add_argument("--trl-modes", default=",".join(TRL_MODES), help="comma-separated subset of %(default)s")
    ap.add_argument("--ours-modes", default=",".join(OURS_MODES), help="comma-separated subset of %(default)s")
    ap.add_argument("--out", help="write setup and all results as JSON here")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.update(OMP_NUM_THREADS=str(Setup.threads), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
                      HF_DATASETS_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    if args.worker:  # child process: run one trainer, write its result
        name, setup_json, out = args.worker
        s = Setup(**json.loads(Path(setup_json).read_text()))
        kind, mode = name.split(":", 1)
        res = run_posttrain(s, mode) if kind == "posttrain" else run_trl(s, mode)
        return Path(out).write_text(json.dumps(res))
    with tempfile.TemporaryDirectory(prefix="sft_vs_trl_") as work:  # removed at the end
        s = setup(args, work)
        names = [f"trl:{m}" for m in args.trl_modes.split(",")] + [f"posttrain:{m}" for m in args.ours_modes.split(",")]
        res = {n: _run_isolated(n, s) for n in names}

    print(f"\nbatch={s.batch_size} seq_len={s.seq_len} steps={s.steps} (first {s.skip_steps} untimed)")
    cols = {"tokens_per_s": "tok/s", "seq_tokens_per_s": "seq tok/s", "tokens_per_cpu_s": "tok/cpu-s",
            "loss_first": "loss@1", "loss_last": "loss@N", "loss_last5": "last5", "rss_start_mb": "RSS0 MiB",
            "peak_rss_mb": "peak MiB", "cpu_util": "cpu util"}
    print(f"{'run':16}" + "".join(f"{h:>10}" for h in cols.values()))
    for name, r in res.items():
        note = r.get("skipped") or r.get("error") or r.get("trainer")
        print(f"{name:16}" + ("".join(f"{r[c]:>10}" for c in cols) if r.get("tokens_per_s") else f"  {note}"))
    if any(r.get("cpu_util", s.threads) < 0.9 * s.threads for r in res.values()):
        print(f"WARNING: cpu util < {0.9 * s.threads} in some run: the machine was busy, rerun when it is quiet")
    def best_of(prefix: str) -> str | None:
        ok = {k: v for k, v in res.items() if k.startswith(prefix) and v.get("tokens_per_s")}
        return max(ok, key=lambda k: ok[k]["tokens_per_s"]) if ok else None

    def ratio_of(a: str | None, b: str | None) -> float | None:
        return round(res[a]["tokens_per_s"] / res[b]["tokens_per_s"], 3) if a and b else None

    best, ours = best_of("trl:"), best_of("posttrain:")
    ratio = ratio_of(ours, best)
    print(f"best: {ours} vs {best}   ours/TRL (trained tokens/s): {ratio}")
    for a, b in (("posttrain:padding", "trl:padding"), ("posttrain:packing", "trl:packing")):
        if a in res and b in res:
            print(f"like for like: {a} / {b} = {ratio_of(a if res[a].get('tokens_per_s') else None, b if res[b].get('tokens_per_s') else None)}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        summary = {"setup": dataclasses.asdict(s), "results": res, "trl_best": best, "ours_best": ours,
                   "ratio_ours_over_trl": ratio}
        Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
