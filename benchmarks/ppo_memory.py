"""PPO's peak memory on CPU: `posttrain ppo` in its shared and separate modes against SFT of the same model.

The usual account of RLHF says PPO holds four models (policy, reference, value model, reward model): about 4x
one model. `posttrain ppo lora.enabled=true shared=true` keeps one frozen base instead: the policy and the value
model are LoRA adapters on it, the reference is the base with the adapters off, and a LoRA reward model (the
adapter/ folder of `posttrain rm lora.enabled=true`) is a third adapter on the same base. This script measures
what that costs against the cheapest way to train the model at all, LoRA SFT with the same adapters, batch and
sequence length.

The model: a random-init Llama of 157.3M parameters (hidden 768, 16 layers, 12 heads (no GQA), intermediate 3072,
fp32, untied head) with the shipped base's tokenizer and chat template (vocabulary 4096, not padded; at this
vocabulary 12 layers of intermediate 2048 would make only 91M), saved once to `--cache` (`base/`) with a
random-init LoRA reward model on it (`rm/`: `posttrain rm model=base lora.enabled=true max_steps=1` on 8
hand-made preference pairs; its adapter/ for the shared mode, its merged model/, a full sequence classifier, for
the separate mode).

Runs, each a fresh subprocess (`posttrain.cli`, in-process in that subprocess), all fp32, 2 threads, `--steps` (2)
optimizer steps, the default AdamW, one forward pass for the whole batch:
- `sft_lora`: `posttrain sft lora.enabled=true` (r 16, alpha 32, every linear layer of the blocks: the recipe's
  defaults, the same as the PPO policy's adapter), `--batch` (8) examples a step, `micro_batch_size` = batch,
  no packing (one example a row). The data are the PPO run's own prompts (world train prompts of
  `--families`, the pool PPO draws, in the same order: SFT step k trains on exactly PPO step k's prompts) with a
  response of `--new-tokens` - 1 (127) tokens + the stop token: sequences of prompt + 128 tokens, as PPO's.
- `sft_full`: the same without LoRA.
- `ppo_shared`: `posttrain ppo lora.enabled=true shared=true rewards=[rm:rm/adapter]`, `--batch` prompts a step,
  one sample each, `--new-tokens` (128) new tokens (a random-init model almost never samples the stop token,
  about 1/4096 a token, so samples run to the budget: the metrics' completions/mean_length says so),
  `mini_batch_size` = `micro_batch_size` = batch, `ppo_epochs=1`.
- `ppo_separate`: `posttrain ppo rewards=[rm:rm/model]`: the full policy, its frozen copy (the reference), the
  value model (a full sequence classifier started from the reward model, the recipe's default) and the reward
  model: four models.
- `ppo_lora` (only with `--modes`): `lora.enabled=true` without `shared`: the LoRA policy and the reference as its
  base with the adapter off, but a full value model and a separate reward model.
LoRA runs set `lora.merge=false` (no merged copy written at the end: SFT and PPO alike).

Measured: the peak resident set (Linux VmHWM; file-backed pages included: the weights are mapped from their
safetensors file and count once touched) of each run's whole process, loading included, to the end of training
(the final save is left out; it did not set the peak in any run measured: `save_peak_mb` in the JSON). The
high-water mark is also read by phase (`Phases`): at every entry to and exit from a watched function (loading, up
to `common.make_optimizer`; then `generate`, the reward, the no-grad passes, the policy forward, the backward
passes, the value forward, the optimizer step) it is read and reset, so the last table and the JSON say which
phase set the peak, with glibc malloc's MiB in use and free inside its heap when that phase ended (mallinfo2).
`peak-bare` subtracts the VmHWM of a bare `import torch, transformers` process (about 240 MiB, the same in every
run) to show what the models and the training add; the target is judged on the plain ratio.

The allocator matters: CPU tensors come from glibc malloc, whose heap keeps freed memory (and the holes between
live tensors) resident, so a run's peak RSS is its live peak plus what the heap could not reuse. Run with
`MALLOC_MMAP_THRESHOLD_=1048576` in the environment (every allocation of 1 MiB or more gets its own mapping,
returned to the system when freed) to see the live peaks instead; every run inherits it, and the JSON records it
(`malloc_env`).

Ratios: `ppo_shared` (and `ppo_lora`) over `sft_lora`; `ppo_separate` over `sft_full`. The last line reads
`ratio: X.XX`, ppo_shared's peak over sft_lora's (the issue's target: at most 1.6).

    .venv/bin/python benchmarks/ppo_memory.py [--out runs/bench/ppo_memory.json] [--modes ...]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZE = {"hidden": 768, "layers": 16, "heads": 12, "intermediate": 3072}
MODES = ("sft_lora", "sft_full", "ppo_shared", "ppo_separate")
BASELINE = {"sft_lora": None, "sft_full": None, "ppo_shared": "sft_lora", "ppo_lora": "sft_lora",
            "ppo_separate": "sft_full"}
PREFS = [("What is 2 plus 3?", "5.", "7."), ("Name 2 fruits.", "apple, pear.", "chair, desk."),
         ("Reverse the letters of 'cat'.", "tac", "cat"), ("Is Paris the capital of France?", "Yes.", "No."),
         ("What is 10 minus 4?", "6.", "5."), ("Name 2 colours.", "red, blue.", "dog, cat."),
         ("Write 'hi' in upper case.", "HI", "hi"), ("Is Oslo the capital of Peru?", "No.", "Yes.")]


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _reset_hwm() -> None:
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


# --- the model, the reward model and the SFT data (built once into --cache) --------------------------------------


def build_base(out: Path, seed: int = 0) -> int:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from posttrain.data.render import Renderer
    from posttrain.models.load import load_tokenizer, save_model, shipped_base

    tok = load_tokenizer(str(shipped_base()))
    s = SIZE
    config = LlamaConfig(vocab_size=len(tok), hidden_size=s["hidden"], num_hidden_layers=s["layers"],
                         num_attention_heads=s["heads"], num_key_value_heads=s["heads"],
                         intermediate_size=s["intermediate"], max_position_embeddings=1024, tie_word_embeddings=False,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    save_model(model, tok, out, Renderer(tok).stop_token_ids())
    return sum(p.numel() for p in model.parameters())


def ppo_pool(n: int, families: list[str], seed: int = 0):
    from posttrain.world import sample_tasks

    return sample_tasks(n, "train", seed=seed, families=families, distinct=True)


def sft_rows(model: str, pool, new_tokens: int) -> tuple[list[dict], list[int]]:
    """Each PPO prompt with a response of new_tokens - 1 tokens + the stop token (found by rendering), so that an
    SFT sequence is as long as a PPO one (prompt + new_tokens) and trains as many tokens (new_tokens)."""
    import random

    from posttrain.data.render import Renderer
    from posttrain.data.types import Conversation, Message
    from posttrain.models.load import load_tokenizer

    tok = load_tokenizer(model)
    renderer = Renderer(tok, 4096)
    words = ["apple", "river", "seven", "blue", "stone", "garden", "quick", "the", "north", "lamp", "paper", "ten"]
    rng = random.Random(0)
    rows, lengths = [], []
    for t in pool:
        n_prompt = len(renderer.prompt_ids(t.messages))

        def n_new(text: str, t=t, n_prompt=n_prompt) -> int:
            r = renderer.render(Conversation([*t.messages, Message("assistant", text)]))
            assert not isinstance(r, str) and r.n_trained == len(r.input_ids) - n_prompt, r
            return r.n_trained

        parts: list[str] = []
        while n_new(" ".join([*parts, w := rng.choice(words)])) <= new_tokens:
            parts.append(w)
        while n_new(" ".join(parts)) < new_tokens:   # then " a", one token each, up to the exact length
            parts.append("a")
        if n_new(" ".join(parts)) != new_tokens:
            raise SystemExit(f"could not fit a response of {new_tokens} tokens to {t.messages[-1].content!r}")
        rows.append({"messages": [{"role": m.role, "content": m.content} for m in t.messages]
                     + [{"role": "assistant", "content": " ".join(parts)}]})
        lengths.append(n_prompt + new_tokens)
    return rows, lengths


def prepare(cache: Path, args) -> dict:
    cache.mkdir(parents=True, exist_ok=True)
    base, info_file = cache / "base", cache / "base.json"
    info = json.loads(info_file.read_text()) if info_file.exists() else {}
    if not (base / "config.json").exists() or info.get("size") != SIZE:
        print(f"building the random-init model in {base} ...", flush=True)
        shutil.rmtree(cache / "rm", ignore_errors=True)   # a reward model on the old base
        info_file.write_text(json.dumps({"size": SIZE, "params": build_base(base)}))
    params = json.loads(info_file.read_text())["params"]
    rm = cache / "rm"
    if not (rm / "adapter" / "adapter_config.json").exists() or not (rm / "model" / "config.json").exists():
        print(f"training the random-init LoRA reward model into {rm} (1 step) ...", flush=True)
        prefs = cache / "prefs.jsonl"
        prefs.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in PREFS))
        subprocess.run([sys.executable, "-m", "posttrain", "rm", f"model={base}", f"data={prefs}", f"output_dir={rm}",
                        "lora.enabled=true", "max_steps=1", "batch_size=4", "micro_batch_size=4",
                        "data.max_seq_len=64", f"threads={args.threads}", "resume=false"],
                       check=True, stdout=subprocess.DEVNULL)
    pool = ppo_pool(args.pool, args.families)
    if len(pool) != args.pool:
        raise SystemExit(f"the world has {len(pool)} distinct train prompts of {args.families}, not {args.pool}")
    rows, lengths = sft_rows(str(base), pool, args.new_tokens)
    sft = cache / f"sft_{'-'.join(args.families)}_{args.pool}_{args.new_tokens}.jsonl"
    tmp = sft.with_name(f"{sft.name}.{os.getpid()}.tmp")   # atomic: two runs may share the cache
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, sft)
    return {"base": str(base), "params": params, "rm_adapter": str(rm / "adapter"), "rm_model": str(rm / "model"),
            "sft_data": str(sft), "seq_len_min": min(lengths), "seq_len_max": max(lengths)}


# --- the runs ----------------------------------------------------------------------------------------------------


def argv_of(mode: str, paths: dict, args, out: str) -> list[str]:
    b = args.batch
    common = [f"model={paths['base']}", f"output_dir={out}", f"max_steps={args.steps}", f"batch_size={b}",
              f"micro_batch_size={b}", f"threads={args.threads}", "precision=fp32", "save_every=0", "resume=false",
              "seed=0"]
    lora = ["lora.enabled=true", f"lora.r={args.lora_r}", f"lora.alpha={args.lora_alpha}", "lora.merge=false"]
    if mode.startswith("sft"):
        return ["sft", *common, f"data={paths['sft_data']}", "data.packing=false", "data.max_seq_len=1024",
                *(lora if mode == "sft_lora" else [])]
    fams = ",".join(args.families)
    ppo = ["ppo", *common, f"mini_batch_size={b}", "ppo_epochs=1", f"max_new_tokens={args.new_tokens}",
           f"gen_batch_size={b}", "max_seq_len=1024", f"prompts.pool={args.pool}", f"prompts.families=[{fams}]",
           "log_samples=0"]
    if mode == "ppo_shared":
        return [*ppo, *lora, "shared=true", f"rewards=[rm:{paths['rm_adapter']}]"]
    if mode == "ppo_lora":
        return [*ppo, *lora, f"rewards=[rm:{paths['rm_model']}]"]
    if mode == "ppo_separate":
        return [*ppo, f"rewards=[rm:{paths['rm_model']}]"]
    raise SystemExit(f"unknown mode {mode}")


def _heap_mb() -> tuple[float, float]:
    """glibc's malloc (mallinfo2, all arenas): MiB in use (heap chunks + mmapped ones) and MiB free inside the
    heap, held by the process (counted in RSS once touched) but not in use; (nan, nan) without glibc."""
    import ctypes

    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]
    try:
        f = ctypes.CDLL(None).mallinfo2
    except (AttributeError, OSError):
        return float("nan"), float("nan")
    f.restype = Info
    i = f()
    return (i.uordblks + i.hblkhd) / 2**20, i.fordblks / 2**20


class Phases:
    """VmHWM by phase: at every entry to and exit from a watched function, the high-water mark since the last such
    boundary is credited to the phase that ran (its path of watched calls, e.g. `update/loss/backward`), with the
    RSS it started from and malloc's in-use and free MiB when it ended (`_heap_mb`), and then reset; so each phase
    has its own peak (its largest over the run), and the largest of them is the run's."""

    def __init__(self) -> None:
        self.stack = ["load"]
        self.peaks: dict[str, dict[str, float]] = {}
        self.start = _status_mb("VmRSS")

    def boundary(self) -> None:
        key, hwm = "/".join(self.stack), _status_mb("VmHWM")
        if hwm > self.peaks.get(key, {}).get("peak_mb", 0.0):
            live, free = _heap_mb()
            self.peaks[key] = {"peak_mb": round(hwm, 1), "start_mb": round(self.start, 1),
                               "end_heap_used_mb": round(live, 1), "end_heap_free_mb": round(free, 1)}
        _reset_hwm()
        self.start = _status_mb("VmRSS")

    def switch(self, owner, name: str, phase: str) -> None:
        """Entering owner.name ends the current top-level phase and starts `phase`."""
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def wrapped(*a, **k):
            self.boundary()
            self.stack = [phase]
            return fn(*a, **k)

        setattr(owner, name, wrapped)

    def watch(self, owner, name: str, phase: str) -> None:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def wrapped(*a, **k):
            self.boundary()
            self.stack.append(phase)
            try:
                return fn(*a, **k)
            finally:
                self.boundary()
                self.stack.pop()

        setattr(owner, name, wrapped)

    def peak(self, top: str) -> float:
        return max((p["peak_mb"] for k, p in self.peaks.items() if k.split("/")[0] == top), default=0.0)


def worker(argv: list[str], result_file: str) -> None:
    """In a fresh process: run `posttrain ARGV` with the high-water mark read by phase (`Phases`): loading (up to
    `common.make_optimizer`), training (up to `common.save_final`) and its parts, saving."""
    from accelerate import Accelerator

    from posttrain.recipes import common, ppo

    ph = Phases()
    ph.switch(common, "make_optimizer", "train")
    ph.switch(common, "save_final", "save")
    ph.watch(common, "accumulate", "update")
    ph.watch(common, "optimizer_step", "optimizer step")
    ph.watch(common, "lm_loss", "forward")
    ph.watch(Accelerator, "backward", "backward")
    ph.watch(ppo, "generate", "generate")
    ph.watch(ppo, "compute_rewards", "reward")
    ph.watch(ppo.Models, "rollout_passes", "no-grad passes")
    ph.watch(ppo, "all_logps", "logps")
    ph.watch(ppo, "chunk_values", "values")
    ph.watch(ppo.Models, "ppo_loss", "loss")
    ph.watch(ppo, "chunk_logps", "policy forward")
    from posttrain.cli import run

    t0 = time.perf_counter()
    code = run(argv)
    ph.boundary()
    marks = {"load_peak_mb": ph.peak("load"), "train_peak_mb": ph.peak("train"), "save_peak_mb": ph.peak("save"),
             "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time()}
    marks["peak_mb"] = max(marks["load_peak_mb"], marks["train_peak_mb"])
    Path(result_file).write_text(json.dumps({"exit": code, **{k: round(v, 1) for k, v in marks.items()},
                                             "phases": ph.peaks}))


def bare_baseline() -> float:
    code = ("import torch, transformers; torch.set_num_threads(2)\n"
            "print([int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM:')][0] / 1024)")
    return float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)


def run_metrics(out: Path) -> dict:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    keep = ("completions/mean_length", "train/seq_tokens", "train/tokens", "loss", "train/loss", "train/gen_s",
            "objective/scores")
    return {"steps": len(rows), **{k: [r[k] for r in rows] for k in keep if k in rows[0]}}


def print_phases(results: dict[str, dict]) -> None:
    """Where the peaks are: each phase's high-water mark (MiB), phases as `Phases` names them, in run order."""
    runs = {m: r["phases"] for m, r in results.items() if "phases" in r}
    names = list(dict.fromkeys(k for ph in runs.values() for k in ph))
    if not names:
        return
    print("\npeak RSS by phase (MiB; a phase is the time inside the watched call, its inner calls left out):")
    print(f"{'phase':40}" + "".join(f"{m:>14}" for m in runs))
    for k in names:
        print(f"{k.removeprefix('train/'):40}" + "".join(f"{ph[k]['peak_mb']:>14.0f}" if k in ph else f"{'':>14}"
                                                          for ph in runs.values()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(BASELINE)}")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--families", default="arithmetic", help="world families of the prompts (comma-separated)")
    ap.add_argument("--pool", type=int, default=64)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-alpha", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default="runs/bench/ppo_memory")
    ap.add_argument("--out", default="")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.update(OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
                      TQDM_DISABLE="1")
    if args.worker:
        worker(json.loads(args.worker[0]), args.worker[1])
        return
    args.families = [f for f in args.families.split(",") if f]
    modes = [m for m in args.modes.split(",") if m]
    if unknown := [m for m in modes if m not in BASELINE]:
        raise SystemExit(f"unknown mode(s) {unknown}; choose from {', '.join(BASELINE)}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(f"ppo_memory: terminated (SIGTERM) at {time.ctime()}"))
    t_all = time.perf_counter()
    paths = prepare(Path(args.cache).resolve(), args)
    bare = bare_baseline()
    print(f"model: random-init Llama, {paths['params'] / 1e6:.1f}M parameters ({SIZE}), fp32; bare `import torch, "
          f"transformers`: {bare:.0f} MiB", flush=True)
    results: dict[str, dict] = {}

    def save(ratio: float, done: bool) -> None:
        if not args.out:
            return
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            "settings": {k: v for k, v in vars(args).items() if k != "worker"} | {"size": SIZE},
            "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
            "model": paths, "bare_import_mb": round(bare, 1), "results": results, "ratio": ratio, "complete": done,
            "wall_s": round(time.perf_counter() - t_all), "machine": platform.processor() or platform.machine(),
            "loadavg_end": os.getloadavg()}, indent=2))

    with tempfile.TemporaryDirectory(prefix="ppo_memory_") as work:
        for mode in modes:
            out, res = f"{work}/{mode}", f"{work}/{mode}.json"
            argv = argv_of(mode, paths, args, out)
            t = time.perf_counter()
            with open(f"{work}/{mode}.log", "w") as log:
                rc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(argv), res], stdout=log,
                                    stderr=subprocess.STDOUT).returncode
            if rc != 0 or not Path(res).exists():
                tail = Path(f"{work}/{mode}.log").read_text().splitlines()[-15:]
                print(f"[{mode}: exit {rc}]\n  " + "\n  ".join(tail), flush=True)
                results[mode] = {"error": f"exit code {rc}", "argv": argv}
                continue
            r = json.loads(Path(res).read_text()) | {"argv": argv, "metrics": run_metrics(Path(out))}
            results[mode] = r
            print(f"[{mode}: {time.perf_counter() - t:.0f} s, peak {r['peak_mb']:.0f} MiB (load {r['load_peak_mb']:.0f}, "
                  f"train {r['train_peak_mb']:.0f}, save {r['save_peak_mb']:.0f})]", flush=True)
            save(float("nan"), False)   # so far: a run stopped halfway keeps what it measured

    print(f"\n{args.batch} sequences a step ({args.families} prompts + {args.new_tokens} tokens: "
          f"{paths['seq_len_min']}-{paths['seq_len_max']} tokens), one forward pass per batch, {args.steps} steps, "
          f"fp32, {args.threads} threads; peak = VmHWM of the run's process to the end of training, loading included")
    print(f"{'mode':14}{'peak MiB':>10}{'baseline':>10}{'ratio':>7}{'peak-bare':>11}{'ratio':>7}"
          f"{'load MiB':>10}{'train MiB':>11}{'wall s':>8}")
    for mode, r in results.items():
        if "error" in r:
            print(f"{mode:14}{r['error']:>10}")
            continue
        base = results.get(BASELINE[mode] or "", {})
        if "peak_mb" in base:
            r["ratio"] = r["peak_mb"] / base["peak_mb"]
            r["ratio_minus_bare"] = (r["peak_mb"] - bare) / (base["peak_mb"] - bare)
            cols = f"{BASELINE[mode]:>10}{r['ratio']:>7.2f}{r['peak_mb'] - bare:>11.0f}{r['ratio_minus_bare']:>7.2f}"
        else:
            cols = f"{'-':>10}{'':>7}{r['peak_mb'] - bare:>11.0f}{'':>7}"
        print(f"{mode:14}{r['peak_mb']:>10.0f}{cols}{r['load_peak_mb']:>10.0f}{r['train_peak_mb']:>11.0f}"
              f"{r['wall_s']:>8.0f}")
    print_phases(results)
    ratio = results.get("ppo_shared", {}).get("ratio", float("nan"))
    save(ratio, True)
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
