"""`posttrain bon`: best-of-n sampling by a reward model, measured against the world's gold verifier.

    posttrain bon --policy P --reward-model R --n 1,2,4,8,16,32 [--n-prompts 280] [--seed 0] [--split test]
        [--temperature 1.0] [--top-p 1.0] [--max-new-tokens 128] [--batch-size 32] [--out FILE.json]
        [--plot FILE.png]

What it does, each step a function the pipeline can call without the command line:

1. The tasks: `sample_tasks(n_prompts, split, seed, distinct=True)` (the test split by default, balanced across
   families, no prompt twice in a family; a family smaller than its share gives its whole pool), as
   `eval world` draws them. The caller of `best_of_n` passes them in.
2. `max(ns)` samples per prompt, drawn ONCE (`rollout.prefs.sample_responses`: `generate(..., n=max(ns))`,
   seeded by `seed`), each scored by the gold verifier (`rollout.prefs.score_responses`) and by the reward
   model (`rm_rewards`: `recipes.rm.score_examples` on prompt + response). A response the renderer drops (an
   empty assistant turn, one of stop tokens only) has no reward: -inf for selection, counted in `unscored`.
3. `summarize`: for each n, every prompt reads the FIRST n of its samples, so the curves are nested. The
   response chosen by the reward model is the argmax of reward among them, the oracle's the argmax of gold
   (ties: the lowest index, for both). Per n: the mean gold of the RM's choice (`gold_rm`) and of the
   oracle's (`gold_oracle`, the ceiling n samples allow), the mean reward of the RM's choice (`rm_reward`,
   over the prompts where it has one), the same gold pair per family, and the gain of the RM's choice over
   sample 0 (n = 1): `gain` with its paired bootstrap 95% interval (`stats.paired_bootstrap` over prompts,
   stratified by family, 2,000 replicates, seed 0, as `eval compare`).
4. `kl`: the analytic KL of best-of-n from the policy, log n - (n - 1)/n (Stiennon et al. 2020, "Learning
   to summarize from human feedback"). Beirami et al. 2024 ("Theoretical guarantees on the best-of-n
   alignment policy") prove it is an upper bound on the true KL, not its value; it is the usual x axis, and
   n is shown with it.

Over-optimisation shows as `gold_rm` falling while `rm_reward` rises with n: the reward model is fooled more
the harder it is searched. `format_table` prints the result, `plot` draws gold vs KL (both curves) with the
RM reward on a second axis. `summarize`, `format_table` and `plot` import no torch.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from posttrain.config import check_flags
from posttrain.data.types import Conversation, Message
from posttrain.errors import UserError
from posttrain.eval.stats import paired_bootstrap
from posttrain.eval.world import BOOT_SEED, N_BOOT
from posttrain.world import FAMILIES, SPLITS, Task, sample_tasks

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_NS = (1, 2, 4, 8, 16, 32)
CAUSAL_ARCHS = ("ForCausalLM", "LMHeadModel")  # LlamaForCausalLM, ..., GPT2LMHeadModel


def bon_kl(n: int) -> float:
    """The analytic KL of best-of-n from its policy, log n - (n - 1)/n: 0 at n = 1, log 2 - 1/2 at n = 2 (an
    upper bound on the true KL: Beirami et al. 2024)."""
    return math.log(n) - (n - 1) / n


def check_ns(ns: Sequence[int], what: str = "n") -> list[int]:
    """The sample counts, ascending and each once; a `UserError` unless every one is a positive int."""
    if not ns:
        raise UserError(f"{what}: give at least one sample count, e.g. 1,2,4,8")
    for n in ns:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise UserError(f"{what}: sample counts must be positive integers, got {n!r}")
    return sorted({int(n) for n in ns})


def parse_ns(text: str) -> list[int]:
    """`"1,2,4"` -> [1, 2, 4] (`check_ns`); anything else is a one-line `UserError` naming --n."""
    parts = [p.strip() for p in text.split(",")]
    try:
        ns = [int(p) for p in parts]
    except ValueError:
        raise UserError(f"--n: expected a comma-separated list of positive integers (e.g. 1,2,4,8), "
                        f"got {text!r}") from None
    return check_ns(ns, "--n")


def rm_rewards(scorer, scorer_tok, scorer_pad_id: int, tasks: list[Task], texts: list[list[str]],
               max_seq_len: int = 1024, batch_size: int = 32) -> tuple[list[list[float]], Counter]:
    """The reward of every response (`recipes.rm.score_examples` on the task's messages + the response as an
    assistant turn), shaped like `texts`; -inf where the renderer drops the response, with the reasons
    counted. A non-finite reward is `score_examples`' `UserError`."""
    from posttrain.recipes.rm import score_examples  # torch loads only to score

    examples = [Conversation([*t.messages, Message("assistant", x)], where=f"prompt {i} sample {s}")
                for i, (t, outs) in enumerate(zip(tasks, texts)) for s, x in enumerate(outs)]
    device = str(next(scorer.parameters()).device)
    rows = score_examples(scorer, scorer_tok, examples, scorer_pad_id, max_seq_len, batch_size, device)
    flat = [-math.inf if r["score"] is None else float(r["score"]) for r in rows]
    reasons = Counter(r["skipped"].removeprefix("score: ") for r in rows if r["score"] is None)
    out, start = [], 0
    for outs in texts:
        out.append(flat[start:start + len(outs)])
        start += len(outs)
    return out, reasons


def bon_answers(policy: str, reward_model: str, tasks: list[Task], n: int, temperature: float = 0.7,
                max_new_tokens: int = 128, batch_size: int = 32, seed: int = 0, progress: str = "") -> list[dict]:
    """The best-of-n policy's answer to each task: n samples of `policy`, the one `reward_model` scores highest
    (the first of equal scores; a sample the reward model cannot score counts as the lowest), as
    {"text", "stopped"}: an entrant for an arena on the same prompts."""
    from posttrain.models.load import load_model, load_tokenizer
    from posttrain.recipes.rm import load_scorer
    from posttrain.rollout.prefs import sample_responses

    tok, model = load_tokenizer(policy), load_model(policy)
    scorer, scorer_tok, pad = load_scorer(reward_model)
    samples = sample_responses(model, tok, tasks, n, temperature=temperature, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, seed=seed, progress=progress)
    rewards, _ = rm_rewards(scorer, scorer_tok, pad, tasks, [[o["text"] for o in outs] for outs in samples],
                            batch_size=batch_size)
    picks = [outs[_first_argmax(r, n)] for outs, r in zip(samples, rewards)]
    return [{"text": o["text"], "stopped": bool(o["stopped"])} for o in picks]


def _first_argmax(values: Sequence[float], n: int) -> int:
    return int(np.argmax(np.asarray(values[:n], dtype=float)))  # numpy's argmax: the first of equal maxima


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _family_order(families: list[str]) -> list[str]:
    present = set(families)
    return [f for f in FAMILIES if f in present] + sorted(present - set(FAMILIES))


def summarize(tasks: list[Task], golds: list[list[float]], rewards: list[list[float]], ns: Sequence[int],
              n_boot: int = N_BOOT, boot_seed: int = BOOT_SEED) -> dict:
    """The best-of-n curves (module docstring, step 3) from every prompt's sample golds and rewards (aligned
    with `tasks`, at least max(ns) samples each; a reward of -inf is never chosen unless all are): {"ns",
    "prompts", "samples_per_prompt", "rows": one dict per n}. Pure numpy."""
    ns = check_ns(ns)
    if not tasks:
        raise UserError("bon: no tasks to evaluate")
    if not len(tasks) == len(golds) == len(rewards):
        raise ValueError(f"summarize: {len(tasks)} tasks, {len(golds)} gold lists, {len(rewards)} reward lists")
    k = min(min(len(g) for g in golds), min(len(r) for r in rewards))
    if k < ns[-1]:
        raise ValueError(f"summarize: n up to {ns[-1]} needs that many samples per prompt, got {k}")
    families = [t.family for t in tasks]
    order = _family_order(families)
    base = [g[0] for g in golds]
    rows = []
    for n in ns:
        by_rm = [_first_argmax(r, n) for r in rewards]
        by_gold = [_first_argmax(g, n) for g in golds]
        gold_rm = [g[i] for g, i in zip(golds, by_rm)]
        gold_oracle = [g[i] for g, i in zip(golds, by_gold)]
        chosen = [r[i] for r, i in zip(rewards, by_rm) if math.isfinite(r[i])]
        gain = paired_bootstrap(base, gold_rm, families, n_boot=n_boot, seed=boot_seed)
        per_family = {}
        for f in order:
            idx = [i for i, x in enumerate(families) if x == f]
            per_family[f] = {"n": len(idx), "gold_rm": _mean([gold_rm[i] for i in idx]),
                             "gold_oracle": _mean([gold_oracle[i] for i in idx])}
        rows.append({"n": n, "kl": bon_kl(n), "gold_rm": _mean(gold_rm), "gold_oracle": _mean(gold_oracle),
                     "rm_reward": _mean(chosen), "no_reward_chosen": len(tasks) - len(chosen),
                     "gain": gain["diff"], "gain_lo": gain["lo"], "gain_hi": gain["hi"], "families": per_family})
    return {"ns": ns, "prompts": len(tasks), "samples_per_prompt": k, "rows": rows}


def best_of_n(policy_model: PreTrainedModel, policy_tok: PreTrainedTokenizerBase, scorer, scorer_tok,
              scorer_pad_id: int, tasks: list[Task], ns: Sequence[int], temperature: float = 1.0, top_p: float = 1.0,
              max_new_tokens: int = 128, batch_size: int = 32, seed: int = 0, max_seq_len: int = 1024,
              progress: str = "") -> dict:
    """Best-of-n of `policy_model` on `tasks` by the reward model `scorer` (a `recipes.rm.load_scorer` triple),
    against gold (module docstring): `summarize`'s dict plus the settings, `unscored` (samples without a reward,
    `unscored_reasons` why), `eos_rate` and `samples` (per prompt: family, prompt, every response, its gold and
    reward, None where there is none). Bad arguments are a `UserError` before anything is sampled."""
    from posttrain.rollout.prefs import sample_responses, score_responses

    ns = check_ns(ns)
    if not tasks:
        raise UserError("bon: no tasks to evaluate")
    if not temperature > 0:
        raise UserError(f"bon: temperature must be > 0 (n greedy samples are identical), got {temperature}")
    k = ns[-1]
    samples = sample_responses(policy_model, policy_tok, tasks, k, temperature=temperature, top_p=top_p,
                               max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, progress=progress)
    golds = score_responses(tasks, samples)
    texts = [[o["text"] for o in outs] for outs in samples]
    rewards, reasons = rm_rewards(scorer, scorer_tok, scorer_pad_id, tasks, texts, max_seq_len, batch_size)
    summary = summarize(tasks, golds, rewards, ns)
    settings = {"seed": seed, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens}
    return {**settings, **summary, "unscored": sum(reasons.values()), "unscored_reasons": dict(reasons),
            "eos_rate": float(np.mean([o["stopped"] for outs in samples for o in outs])),
            "samples": [{"family": t.family, "prompt": t.prompt_text(), "responses": x, "golds": g,
                         "rewards": [r if math.isfinite(r) else None for r in rs]}
                        for t, x, g, rs in zip(tasks, texts, golds, rewards)]}


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_table(result: dict) -> str:
    """The result as text: a header, one line per n (KL, gold of the RM's and the oracle's choice, the RM's
    reward, the gain over n = 1 with its 95% interval), gold per family (RM / oracle) and a note on the samples
    without a reward."""
    r = result
    where = f" ({r['split']} split)" if "split" in r else ""
    sampled = "".join(f", {k} {r[k]:g}" for k in ("temperature", "seed") if k in r)
    lines = [f"best-of-n: {r['prompts']} prompts{where}, {r['samples_per_prompt']} samples each{sampled}"]
    if "policy" in r:
        lines.append(f"policy {r['policy']}; reward model {r.get('reward_model', '-')}")
    lines.append(f"  {'n':>4}  {'KL':>6}  {'gold (RM)':>9}  {'gold (oracle)':>13}  {'RM reward':>9}  "
                 f"{'gain vs n=1':>11}  95% interval")
    for row in r["rows"]:
        lines.append(f"  {row['n']:>4}  {row['kl']:>6.3f}  {_f(row['gold_rm']):>9}  {_f(row['gold_oracle']):>13}  "
                     f"{_f(row['rm_reward']):>9}  {row['gain']:>+11.3f}  [{row['gain_lo']:+.3f}, {row['gain_hi']:+.3f}]")
    families = list(r["rows"][0]["families"])
    lines.append("gold per family, RM's choice / oracle's:")
    lines.append(f"  {'family':<18}  {'prompts':>7}  " + "  ".join(f"{'n=' + str(row['n']):>11}" for row in r["rows"]))
    for f in families:
        cells = [f"{_f(row['families'][f]['gold_rm'], 2)}/{_f(row['families'][f]['gold_oracle'], 2)}"
                 for row in r["rows"]]
        lines.append(f"  {f:<18}  {r['rows'][0]['families'][f]['n']:>7}  " + "  ".join(f"{c:>11}" for c in cells))
    if r.get("unscored"):
        why = ", ".join(f"{k}: {v}" for k, v in r.get("unscored_reasons", {}).items())
        lines.append(f"note: {r['unscored']} of {r['prompts'] * r['samples_per_prompt']} samples have no reward "
                     f"({why}; the renderer drops them): reward -inf, chosen only when all of the first n are")
    return "\n".join(lines)


def plot_png(result: dict) -> bytes:
    """PNG bytes (Agg): gold against the analytic KL, the RM-selected and the gold-oracle curves, ticks labelled
    with n; the RM reward of the RM's choice on a second y axis."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = result["rows"]
    kl = [row["kl"] for row in rows]
    fig = Figure(figsize=(7.0, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    a = ax.plot(kl, [row["gold_rm"] for row in rows], "o-", color="tab:blue", label="gold of the RM's choice")
    b = ax.plot(kl, [row["gold_oracle"] for row in rows], "s--", color="tab:green", label="gold of the oracle's choice")
    ax.set_xticks(kl, [f"{x:.2f}\nn={row['n']}" for x, row in zip(kl, rows)], fontsize=8)
    ax.set_xlabel("KL(best-of-n || policy), analytic: log n - (n-1)/n (an upper bound)")
    ax.set_ylabel("gold (world verifier)")
    ax.set_ylim(-0.03, 1.03)  # gold lies in [0, 1]: runs compare by eye
    ax.grid(alpha=0.3)
    lines = a + b
    reward = [(x, row["rm_reward"]) for x, row in zip(kl, rows) if row["rm_reward"] is not None]
    if reward:
        ax2 = ax.twinx()
        lines += ax2.plot(*zip(*reward), "^:", color="tab:red", label="RM reward of the RM's choice")
        ax2.set_ylabel("reward-model reward", color="tab:red")
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="best")
    ax.set_title(f"best-of-n on {result['prompts']} prompts", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def plot(result: dict, path: str | os.PathLike) -> None:
    """Write `plot_png(result)` to `path` atomically."""
    from posttrain.io import atomic_write_bytes

    atomic_write_bytes(path, plot_png(result))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posttrain bon", description=(__doc__ or "").strip().splitlines()[0])
    p.add_argument("--policy", required=True, metavar="PATH", help="the causal LM to sample from (with its tokenizer)")
    p.add_argument("--reward-model", required=True, metavar="PATH", help="a reward model folder (posttrain rm's model/)")
    p.add_argument("--n", default=",".join(map(str, DEFAULT_NS)), metavar="LIST",
                   help="sample counts, comma-separated (default %(default)s); max(n) samples are drawn per prompt")
    p.add_argument("--n-prompts", type=int, default=280, metavar="N",
                   help="distinct prompts, balanced across families (default %(default)d)")
    p.add_argument("--seed", type=int, default=0, help="picks the prompts and the samples (default %(default)d)")
    p.add_argument("--split", default="test", help="test (held out, default) or train")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature, > 0 (default %(default)g)")
    p.add_argument("--top-p", type=float, default=1.0, help="in (0, 1] (default %(default)g)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="(default %(default)d)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass (default %(default)d)")
    p.add_argument("--out", metavar="FILE", help="write the result (with every sample) as JSON here")
    p.add_argument("--plot", metavar="FILE", help="write a PNG of gold vs KL here")
    return p


def _with_flag(e: UserError, flag: str) -> UserError:
    """`recipes.rm`'s errors name its own flag (--model); here the reward model is --reward-model."""
    msg = str(e)
    return UserError(f"{flag}: {msg.removeprefix('--model: ')}")


def _check_policy(path: str) -> None:
    """A causal LM folder (by its config's architectures), before anything loads."""
    from posttrain.models.load import check_model_folder, is_local

    check_model_folder(path, "--policy")
    if not is_local(path):
        return
    import json

    try:
        archs = json.loads((Path(path) / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError) as e:
        raise UserError(f"--policy: cannot read '{path}/config.json' ({type(e).__name__})") from None
    if archs and not any(a.endswith(CAUSAL_ARCHS) for a in archs):
        raise UserError(f"--policy: '{path}' is not a causal LM (config.json: {', '.join(archs)}); give the model "
                        "to sample from")


def _check_args(args: argparse.Namespace) -> list[int]:
    """Every flag, before any model is loaded; the sample counts."""
    ns = parse_ns(args.n)
    check_flags(args, n_prompts={"ge": 1}, top_p={"gt": 0, "le": 1}, max_new_tokens={"ge": 1}, batch_size={"ge": 1})
    if not args.temperature > 0:
        raise UserError(f"--temperature: must be > 0, got {args.temperature!r} (n greedy samples are identical)")
    if args.split not in SPLITS:
        sample_tasks(0, split=args.split)  # the world's one-line error, with a suggestion
    from posttrain.io import check_writable
    from posttrain.models.load import check_model_folder

    for flag in ("out", "plot"):
        if getattr(args, flag):
            check_writable(getattr(args, flag), f"--{flag}")
    _check_policy(args.policy)
    check_model_folder(args.reward_model, "--reward-model")
    return ns


def bon_main(argv: list[str]) -> int:
    """Run `posttrain bon ...` (module docstring); returns the exit code."""
    args = _parser().parse_args(argv)
    ns = _check_args(args)

    import torch

    from posttrain.io import atomic_write_json
    from posttrain.models.load import load_model, load_tokenizer
    from posttrain.recipes.rm import load_scorer

    try:
        scorer, scorer_tok, pad_id = load_scorer(args.reward_model)
    except UserError as e:
        raise _with_flag(e, "--reward-model") from None
    try:
        tok, model = load_tokenizer(args.policy), load_model(args.policy)
    except UserError as e:
        raise UserError(f"--policy: {str(e).removeprefix('model: ')}") from None
    if torch.cuda.is_available():
        model, scorer = model.to("cuda"), scorer.to("cuda")
    tasks = sample_tasks(args.n_prompts, args.split, args.seed, distinct=True)
    try:
        result = best_of_n(model, tok, scorer, scorer_tok, pad_id, tasks, ns, temperature=args.temperature,
                           top_p=args.top_p, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                           seed=args.seed, progress="sampling" if sys.stderr.isatty() else "")
    except UserError as e:
        raise _with_flag(e, "--reward-model") if str(e).startswith("--model: ") else e from None
    result = {"policy": args.policy, "reward_model": args.reward_model, "split": args.split,
              "n_prompts_requested": args.n_prompts, **result}
    print(format_table(result))
    if args.out:
        atomic_write_json(args.out, result)
        print(f"wrote {args.out}")
    if args.plot:
        plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0
