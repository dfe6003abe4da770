"""SFT throughput: posttrain vs TRL's SFTTrainer, like with like, on CPU.

What is compared: full fine-tuning of the same tiny random-init Llama (~5M params, fp32, sdpa attention), the same
in-process-trained BPE tokenizer and chat template, the same seeded synthetic chat data (OpenAI `messages`, ~2000
examples), the same per-device batch size, gradient accumulation, max sequence length, step count, AdamW settings,
lr schedule and seed, loss on assistant tokens only (response + its eos). `setup()` writes model, tokenizer and data
to a temp dir; every trainer loads the same files from disk.

How: each run (TRL with padding, TRL with BFD packing, TRL padding-free, posttrain) runs in its own fresh
subprocess with torch threads = 2, so import/warm-up state and peak memory do not leak between runs.
- tokens/s = trained tokens (label positions that count in the loss, i.e. `labels[:, 1:] != -100`) seen in steps
  3..N, divided by wall time (time.perf_counter) from the end of step 2 to the end of step N. The first 2 steps are
  warm-up. Data loading/collation between steps is included (it is part of real training).
- loss_last = loss of the final step; loss_last5 = mean of the last 5 steps.
- memory = resident set size (RSS) of the run's process, not tracemalloc (which does not see torch's C++
  allocations). rss_start_mb: RSS when training starts (libraries, model, tokenized data loaded);
  peak_rss_mb: peak RSS during training (Linux VmHWM, reset via /proc/self/clear_refs at train start; falls back
  to ru_maxrss elsewhere). peak - start ~ grads + optimizer state + activations + allocator overhead.
TRL's best of padding/packing/padding-free is "TRL" in the ratio ours/TRL.

    benchmarks/.venv/bin/python benchmarks/sft_vs_trl.py [--steps 30 --batch-size 8 --seq-len 256 --out r.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

SPECIALS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>"]
# Every assistant turn ends with eos, inside the {% generation %} block (so TRL's assistant mask trains the stop).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|assistant|>\n' }}"
    "{% generation %}{{ m['content'] + eos_token }}{% endgeneration %}"
    "{% else %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


@dataclasses.dataclass
class Setup:
    """Everything both sides share. Paths point at files written by `setup()`."""

    workdir: str
    model_dir: str
    tokenizer_dir: str
    data_file: str  # JSONL, one {"messages": [...]} per line
    batch_size: int = 8  # per device; one process
    grad_accum: int = 1
    seq_len: int = 256  # max tokens per sequence (truncation length; packed row length)
    steps: int = 30
    lr: float = 5e-4
    warmup_steps: int = 3  # linear warm-up, then linear decay to 0 at `steps`
    weight_decay: float = 0.0  # AdamW(betas=(0.9, 0.999), eps=1e-8)
    max_grad_norm: float = 1.0
    seed: int = 0
    threads: int = 2
    skip_steps: int = 2  # warm-up steps left out of tokens/s
    n_examples: int = 2000


# ----------------------------------------------------------------------------------------------- data + model
def make_examples(n: int, seed: int = 0) -> list[dict]:
    """Seeded synthetic chats: multi-step arithmetic, word reversal, numbered lists of pseudo-words."""
    rng = random.Random(seed)
    syl = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    lex = sorted({"".join(rng.choice(syl) for _ in range(rng.randint(1, 3))) for _ in range(3000)})
    kinds = ["fruits", "tools", "cities", "rivers", "songs", "planets", "names", "colors"]
    fluff = ["Please be precise.", "Answer briefly.", "Think carefully before answering.",
             "This is for a quiz I am writing for my class.", "Keep the format simple.", "No extra commentary."]
    out = []
    for i in range(n):
        task = i % 3
        if task == 0:
            nums = [rng.randint(1, 99) for _ in range(rng.randint(2, 7))]
            ops = [rng.choice("+-") for _ in nums[1:]]
            prompt = "Compute " + " ".join(f"{o} {x}" for o, x in zip(["", *ops], nums)).strip() + "."
            acc, steps = nums[0], []
            for o, x in zip(ops, nums[1:]):
                new = acc + x if o == "+" else acc - x
                steps.append(f"{acc} {o} {x} = {new}.")
                acc = new
            answer = "Step by step: " + " ".join(steps) + f" The answer is {acc}."
        elif task == 1:
            words = rng.sample(lex, rng.randint(3, 25))
            prompt = "Reverse the order of these words: " + " ".join(words)
            answer = " ".join(reversed(words))
        else:
            k, kind = rng.randint(2, 14), rng.choice(kinds)
            prompt = f"Write a numbered list of {k} made-up {kind}."
            answer = "\n".join(f"{j + 1}. {w.capitalize()}" for j, w in enumerate(rng.sample(lex, k)))
        prompt = " ".join([prompt, *rng.sample(fluff, rng.randint(0, 3))])
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        if rng.random() < 0.3:
            msgs.insert(0, {"role": "system", "content": "You are a careful, terse assistant."})
        out.append({"messages": msgs})
    return out


def setup(args: argparse.Namespace) -> Setup:
    """Write data (JSONL), tokenizer and random-init model to a temp dir; return the shared Setup."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    work = tempfile.mkdtemp(prefix="sft_vs_trl_")
    s = Setup(work, f"{work}/model", f"{work}/tokenizer", f"{work}/data.jsonl", batch_size=args.batch_size,
              seq_len=args.seq_len, steps=args.steps)
    rows = make_examples(s.n_examples, s.seed)
    with open(s.data_file, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=4096, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator((m["content"] for r in rows for m in r["messages"]), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<|pad|>", bos_token="<|bos|>",
                                  eos_token="<|eos|>", extra_special_tokens={})
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(s.tokenizer_dir)

    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
                      tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(s.seed)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(s.model_dir)

    lens = [len(tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"]) for r in rows]
    print(f"setup: {work}  vocab={len(tok)}  params={sum(p.numel() for p in model.parameters()) / 1e6:.2f}M  "
          f"examples={len(rows)}  tokens/example min={min(lens)} mean={sum(lens) / len(lens):.0f} max={max(lens)}")
    return s


# ----------------------------------------------------------------------------------------------- measuring
def _hwm_mb() -> float:
    """Peak RSS of this process in MiB (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_hwm() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass


class Meter:
    """Per-step trained tokens, sequence tokens, loss and step-end timestamps; shared by both sides."""

    def __init__(self) -> None:
        self.trained, self.seq_tokens, self.loss, self.t_end = (defaultdict(int), defaultdict(int),
                                                                defaultdict(float), {})
        self.rss_start = 0.0

    def train_begin(self) -> None:
        import psutil

        _reset_hwm()
        self.rss_start = psutil.Process().memory_info().rss / 2**20

    def result(self, s: Setup, **extra) -> dict:
        k, n = s.skip_steps, max(self.t_end)
        secs = self.t_end[n] - self.t_end[k]
        tok = sum(self.trained[i] for i in range(k + 1, n + 1))
        losses = [self.loss[i] for i in range(1, n + 1)]
        return {"steps": n, "timed_steps": n - k, "seconds": round(secs, 3), "trained_tokens": tok,
                "tokens_per_s": round(tok / secs, 1), "seq_tokens_per_s": round(
                    sum(self.seq_tokens[i] for i in range(k + 1, n + 1)) / secs, 1),
                "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
                "loss_last5": round(sum(losses[-5:]) / len(losses[-5:]), 4),
                "rss_start_mb": round(self.rss_start), "peak_rss_mb": round(_hwm_mb()), **extra}


# ----------------------------------------------------------------------------------------------- TRL
TRL_MODES = ("padding", "packing", "padding_free")


def run_trl(s: Setup, mode: str = "padding") -> dict:
    """TRL SFTTrainer, fp32, no grad checkpointing, assistant-only loss. mode: padding | packing | padding_free."""
    import datasets
    import torch
    import trl
    from transformers import AutoTokenizer, TrainerCallback

    torch.set_num_threads(s.threads)
    meter = Meter()
    rows = [json.loads(ln) for ln in open(s.data_file)]
    tok = AutoTokenizer.from_pretrained(s.tokenizer_dir)
    longest = max(len(tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])
                  for r in rows)
    if mode == "padding_free" and longest > s.seq_len:
        # TRL refuses padding_free without packing when max_length is set, so it runs with max_length=None.
        return {"skipped": f"longest example {longest} > seq_len {s.seq_len}; padding_free cannot truncate"}

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            meter.train_begin()

        def on_step_end(self, args, state, control, **kw):
            meter.t_end[state.global_step] = time.perf_counter()

    class CountingSFTTrainer(trl.SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            step = self.state.global_step + 1
            meter.trained[step] += int((inputs["labels"][:, 1:] != -100).sum())
            am = inputs.get("attention_mask")
            meter.seq_tokens[step] += int(am.sum()) if am is not None else inputs["input_ids"].numel()
            loss = super().training_step(model, inputs, num_items_in_batch)
            meter.loss[step] += float(loss)
            return loss

    cfg = trl.SFTConfig(
        output_dir=f"{s.workdir}/trl_{mode}", max_steps=s.steps, seed=s.seed, data_seed=s.seed,
        per_device_train_batch_size=s.batch_size, gradient_accumulation_steps=s.grad_accum,
        learning_rate=s.lr, lr_scheduler_type="linear", warmup_steps=s.warmup_steps, optim="adamw_torch",
        weight_decay=s.weight_decay, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        max_grad_norm=s.max_grad_norm,
        bf16=False, fp16=False, gradient_checkpointing=False,  # TRL defaults: bf16=True, checkpointing=True
        use_cpu=True, dataloader_num_workers=0, report_to="none", disable_tqdm=True,
        logging_strategy="steps", logging_steps=s.steps, save_strategy="no", eval_strategy="no",
        assistant_only_loss=True,  # needs {% generation %} in the chat template
        max_length=None if mode == "padding_free" else s.seq_len,
        packing=mode == "packing", packing_strategy="bfd",  # bfd packing forces padding_free
        padding_free=mode == "padding_free",
        model_init_kwargs={"dtype": torch.float32, "attn_implementation": "sdpa"},
    )
    trainer = CountingSFTTrainer(model=s.model_dir, args=cfg, processing_class=tok,
                                 train_dataset=datasets.Dataset.from_list(rows), callbacks=[Timer()])
    trainer.train()
    return meter.result(s, trainer=f"trl {trl.__version__} ({mode})")


# ----------------------------------------------------------------------------------------------- posttrain
def run_posttrain(s: Setup) -> dict:
    """TODO(lead): wire to posttrain.recipes.sft.main(cfg), e.g. the equivalent of
    `posttrain sft model={s.model_dir} data={s.data_file} output_dir={s.workdir}/ours max_steps={s.steps} seed=0
    batch_size={s.batch_size} max_seq_len={s.seq_len} optim.lr={s.lr}` (+ warmup, AdamW, clip, fp32, 2 threads, no
    saving). Feed a Meter exactly like run_trl: meter.train_begin() at train start, per step add trained tokens
    ((labels[:, 1:] != -100).sum() or the equivalent response+eos count), real sequence tokens and loss, and
    meter.t_end[step] = time.perf_counter() after each optimizer step; return meter.result(s, trainer=...)."""
    return {"tokens_per_s": None, "trainer": "posttrain (not wired yet)"}


# ----------------------------------------------------------------------------------------------- driver
def _worker(name: str, setup_json: str, out: str) -> None:
    s = Setup(**json.loads(open(setup_json).read()))
    res = run_posttrain(s) if name == "posttrain" else run_trl(s, name.split(":", 1)[1])
    with open(out, "w") as f:
        json.dump(res, f)


def _run_isolated(name: str, s: Setup) -> dict:
    """Run one trainer in a fresh interpreter (clean RSS peak, no shared warm caches)."""
    sj, out = f"{s.workdir}/setup.json", f"{s.workdir}/{name.replace(':', '_')}.json"
    with open(sj, "w") as f:
        json.dump(dataclasses.asdict(s), f)
    env = {**os.environ, "OMP_NUM_THREADS": str(s.threads), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    p = subprocess.run([sys.executable, __file__, "--worker", name, sj, out], env=env)
    if p.returncode != 0:
        return {"error": f"exit code {p.returncode}", "tokens_per_s": None}
    return json.load(open(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--trl-modes", default=",".join(TRL_MODES), help="subset of " + ",".join(TRL_MODES))
    ap.add_argument("--out", help="write all results as JSON here")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return _worker(*args.worker)
    s = setup(args)
    results = {f"trl:{m}": _run_isolated(f"trl:{m}", s) for m in args.trl_modes.split(",")}
    results["posttrain"] = _run_isolated("posttrain", s)

    print(f"\nbatch={s.batch_size} seq_len={s.seq_len} steps={s.steps} (first {s.skip_steps} untimed) fp32 "
          f"threads={s.threads}")
    print(f"{'run':18} {'tok/s':>9} {'seq tok/s':>10} {'loss first':>10} {'loss last':>9} {'last5':>7} "
          f"{'rss start':>9} {'rss peak':>9}  (MiB)")
    for name, r in results.items():
        if r.get("tokens_per_s") is None:
            print(f"{name:18} {r.get('skipped') or r.get('error') or r.get('trainer')}")
            continue
        print(f"{name:18} {r['tokens_per_s']:>9.0f} {r['seq_tokens_per_s']:>10.0f} {r['loss_first']:>10.3f} "
              f"{r['loss_last']:>9.3f} {r['loss_last5']:>7.3f} {r['rss_start_mb']:>9} {r['peak_rss_mb']:>9}")
    trl_ok = {k: v for k, v in results.items() if k.startswith("trl:") and v.get("tokens_per_s")}
    best = max(trl_ok, key=lambda k: trl_ok[k]["tokens_per_s"]) if trl_ok else None
    ours = results["posttrain"].get("tokens_per_s")
    ratio = round(ours / trl_ok[best]["tokens_per_s"], 3) if ours and best else None
    print(f"TRL best: {best}   ours/TRL (trained tokens/s): {ratio}")
    summary = {"setup": dataclasses.asdict(s), "results": results, "trl_best": best, "ratio_ours_over_trl": ratio}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
