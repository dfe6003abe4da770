"""GRPO (and RLOO, Dr. GRPO) on verifiable rewards: a group of samples per prompt, advantages relative to the group.

    posttrain grpo model=SFT_MODEL rewards=world group_size=8 batch_size=16 max_steps=100 output_dir=runs/grpo

Choices this recipe makes:
- Prompts: the world's train split, `prompts.families` (by default the families whose gold is a verifier:
  arithmetic, list_n, word_transform, sort_words, format, ifeval), a pool of `prompts.pool` distinct prompts in
  a seeded order (`common.DataStream`); `batch_size` prompts a step, each sampled `group_size` times through
  `rollout.generate` (posttrain's decode loop: each sample from its own random stream, seeded by (seed, step,
  prompt, sample), so a resumed run samples exactly what the uninterrupted one did).
- Rewards: `rewards` names functions `(prompt messages, response text, meta) -> float`, summed with
  `reward_weights`: `world` (the task's gold score, 0 when the response did not stop: the world's own rule),
  `similarity` (partial credit: the response's character similarity to the reference answer on the families
  with one right answer, so a group whose golds are all 0 still has a signal; training only),
  `rm:PATH` (a reward model folder, scored at the response's last token as `posttrain rm score`), or your own
  `module:function`. `meta` holds the task's metadata, `family` and `stopped`. A reward that raises or returns
  a non-number stops the run with one line (exit code 2); a NaN reward drops its sample (advantage 0, out of the
  loss), counted in `rewards/dropped`.
- Advantages (`losses.rl.group_advantages`): `grpo` (r - group mean) / (group std + 1e-4), `dr_grpo` (no std),
  `rloo` (leave-one-out baseline); one advantage for every token of a sample.
- Loss (`losses.rl.policy_loss`): the clipped ratio against the sampling policy (`epsilon`, `epsilon_high` for
  DAPO's clip-higher) plus `beta` x the k3 estimate of KL(policy || reference) per token (TRL's GRPO; `beta=0`:
  no reference, nothing extra in memory). The reference is the starting model (a frozen copy, or with LoRA the
  base with adapters off). `iterations` optimizer updates on each batch of samples (TRL's num_iterations); with 1
  the ratio is 1 and the loss is the plain policy gradient. Tokens are aggregated by `loss_aggregation`:
  `token_mean` (DAPO, TRL's default `dapo`), `sequence_mean` (the GRPO paper) or `constant` (Dr. GRPO: divided by
  group x max_new_tokens), with the step's global counts, so any micro-batch split gives the same gradient.
- Metrics with TRL's GRPO names: reward, reward_std, rewards/<name>, frac_reward_zero_std, completions/mean_length,
  completions/clipped_ratio (no stop token), kl, entropy, clip_ratio (clipfrac), plus gold (the world's mean gold
  of the samples, whatever the reward) and approxkl.
"""

from __future__ import annotations

import copy
import difflib
import functools
import importlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from posttrain.config import doc, section
from posttrain.data.render import Renderer
from posttrain.data.types import Conversation, Message
from posttrain.errors import TrainingDiverged, UserError
from posttrain.losses.rl import aggregate, group_advantages, kl_per_token, policy_loss
from posttrain.models.forward import takes_custom_mask, token_logps
from posttrain.models.load import load_tokenizer
from posttrain.recipes import common
from posttrain.rollout.generate import generate, samples_batch
from posttrain.world import Task, sample_tasks
from posttrain.world import score as world_score

VERIFIABLE = ["arithmetic", "list_n", "word_transform", "sort_words", "format", "ifeval"]
RewardFn = Callable[[list[Message], str, dict], float]


@dataclass
class GRPOPromptsConfig:
    families: list[str] = doc(list(VERIFIABLE), "world families to train on (train split)")
    pool: int = doc(2000, "train prompts in the run's pool (distinct within a family, balanced over the families)",
                    ge=1)


@dataclass
class OnlineRLConfig(common.RunConfig):
    """What the online RL recipes (grpo, ppo) share: the policy, its optimizer and LoRA, the rewards, sampling."""
    model: common.ModelConfig = section(common.ModelConfig, "the policy to train (usually the SFT model)")
    optim: common.OptimConfig = section(common.OptimConfig, "optimizer and schedule")
    lora: common.LoraConfig = section(common.LoraConfig, "LoRA (through peft); the reference is the base")
    micro_batch_size: int = doc(32, "sequences per forward pass (packed into rows)", ge=1, changes_result=False)
    rewards: list[str] = doc(["world"], "reward functions, summed: world (gold), similarity (partial credit "
                                        "towards the reference on one-answer families), rm:PATH (a reward "
                                        "model), or module:function taking (messages, response, meta)")
    reward_weights: list[float] = doc([], "one weight per reward (empty: all 1)")
    temperature: float = doc(1.0, "sampling temperature", gt=0)
    top_p: float = doc(1.0, "sampling top-p", gt=0, le=1)
    max_new_tokens: int = doc(128, "generation budget per sample", ge=1)
    gen_batch_size: int = doc(64, "samples decoded together", ge=1, changes_result=False)
    max_seq_len: int = doc(1024, "prompt + response tokens per sequence (longer prompts are refused)", ge=2)
    max_kl: float = doc(0.0, "stop the run when a step's mean per-token KL to the reference exceeds this (0: "
                              "never); nothing is saved for that step, the last checkpoint is kept", ge=0)
    log_samples: int = doc(4, "samples of each step written to samples.jsonl (0: none)", ge=0,
                           changes_result=False)


@dataclass
class GRPOConfig(OnlineRLConfig):
    prompts: GRPOPromptsConfig = section(GRPOPromptsConfig, "the prompts")
    output_dir: str = doc("runs/grpo", "run folder: config.yaml, metrics.jsonl, tb/, checkpoints/, samples.jsonl, "
                                       "model/, result.json", changes_result=False)
    batch_size: int = doc(16, "prompts per step (each sampled group_size times)", ge=1)
    group_size: int = doc(8, "samples per prompt (the group its advantages are relative to)", ge=2)
    advantage: Literal["grpo", "dr_grpo", "rloo"] = doc("grpo", "grpo (group-normalised), dr_grpo (no std), rloo "
                                                                "(leave-one-out baseline)")
    loss_aggregation: Literal["token_mean", "sequence_mean", "constant"] = doc(
        "token_mean", "token_mean (DAPO, TRL's default), sequence_mean (GRPO paper), constant (Dr. GRPO)")
    beta: float = doc(0.04, "weight of the k3 KL to the reference in the loss (0: no reference model)", ge=0)
    epsilon: float = doc(0.2, "ratio clip, lower side (and upper, unless epsilon_high)", gt=0, lt=1)
    epsilon_high: float = doc(0.0, "ratio clip, upper side (0: epsilon; DAPO's clip-higher uses 0.28)", ge=0)
    iterations: int = doc(1, "optimizer updates per batch of samples (TRL's num_iterations)", ge=1)


# --- rewards ---------------------------------------------------------------------------------------------------


def world_reward(messages: list[Message], response: str, meta: dict) -> float:
    """The world's gold score of `response` for the task `meta` describes (0 when it did not stop)."""
    return world_score(meta["task"], response, meta["stopped"]).gold


# Families whose reference is the one right answer (for the others it is one good answer among many).
ONE_ANSWER = frozenset({"arithmetic", "word_transform", "sort_words"})


def similarity_reward(messages: list[Message], response: str, meta: dict) -> float:
    """Partial credit: the character similarity (difflib's ratio, 2 x matched / total length) of the stripped
    response to the task's reference answer, for the families whose reference is the one right answer
    (arithmetic "13 + 5 = 18.", word_transform, sort_words); 0 for the others and when the response did not stop.
    Summed with `world` (e.g. weights 1, 0.5) it gives a group a signal where every sample's gold is 0: a sort
    that copies four of the five words, a reversal one letter off. Training only: evaluation stays gold."""
    task = meta["task"]
    if task.family not in ONE_ANSWER or not meta["stopped"]:
        return 0.0
    return difflib.SequenceMatcher(None, response.strip(), task.reference.strip(), autojunk=False).ratio()


def _rm_reward(path: str) -> RewardFn:
    from posttrain.recipes.rm import load_scorer, score_examples

    scorer, scorer_tok, pad_id = load_scorer(path)
    device = str(next(scorer.parameters()).device)

    def batch(messages: list[list[Message]], responses: list[str]) -> list[float]:
        convs = [Conversation([*m, Message("assistant", r)], where=f"sample {i}")
                 for i, (m, r) in enumerate(zip(messages, responses))]
        rows = score_examples(scorer, scorer_tok, convs, pad_id, 1024, 32, device)
        return [math.nan if r["score"] is None else float(r["score"]) for r in rows]

    batch.batched = True  # type: ignore[attr-defined]
    return batch


def resolve_reward(name: str) -> RewardFn:
    """`world`, `rm:PATH` or `module:function` -> the function (a clear error when it does not import)."""
    if name == "world":
        return world_reward
    if name == "similarity":
        return similarity_reward
    if name.startswith("rm:"):
        return _rm_reward(name[3:])
    module, _, attr = name.partition(":")
    if not module or not attr:
        raise UserError(f"rewards: '{name}' is not world, similarity, rm:PATH or module:function")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise UserError(f"rewards: cannot import '{name}' ({type(e).__name__}: {e})") from None
    if not callable(fn):
        raise UserError(f"rewards: '{name}' is not callable")
    return fn


def compute_rewards(fns: dict[str, RewardFn], weights: list[float], tasks: list[Task], texts: list[str],
                    stopped: list[bool]) -> tuple[torch.Tensor, dict[str, list[float]]]:
    """The weighted sum of every reward for each sample (NaN if any is NaN) and each reward's values."""
    per: dict[str, list[float]] = {}
    for name, fn in fns.items():
        if getattr(fn, "batched", False):
            values = fn([t.messages for t in tasks], texts)
        else:
            values = []
            for t, x, s in zip(tasks, texts, stopped):
                meta = {**t.meta, "family": t.family, "stopped": s, "task": t}
                try:
                    values.append(fn(t.messages, x, meta))
                except Exception as e:  # a user's function: name it and stop
                    raise UserError(f"rewards: '{name}' raised {type(e).__name__}: {e} (prompt: "
                                    f"{t.messages[-1].content[:60]!r})") from None
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise UserError(f"rewards: '{name}' returned {v!r} ({type(v).__name__}), not a number")
        per[name] = [float(v) for v in values]
    total = torch.zeros(len(texts), dtype=torch.float64)
    for w, values in zip(weights, per.values()):
        total += w * torch.tensor(values, dtype=torch.float64)
    return total.float(), per


# --- sequences -------------------------------------------------------------------------------------------------


def chunk_logps(model, acc, samples: list[dict], chunk: list[int], pad_id: int, width: int, entropy: bool = False):
    """Per-token log-probs (len(chunk), width) of the chunk's responses, in the order of `chunk`, with the mask
    (and the entropy). The samples of one prompt share its tokens (`samples_batch`'s share_prompts) where the model
    takes a 4-D mask."""
    batch, order = samples_batch(samples, chunk, pad_id, share_prompts=takes_custom_mask(model))
    batch = {k: v.to(acc.device) for k, v in batch.items()}
    with acc.autocast():
        lp, mask, ent = token_logps(model, batch, len(order), with_entropy=entropy)
    where = {p: k for k, p in enumerate(order)}
    idx = torch.tensor([where[p] for p in chunk], device=lp.device)

    def fit(x):
        x = x[idx]
        return torch.nn.functional.pad(x, (0, width - x.shape[1])) if x.shape[1] < width else x[:, :width]

    return fit(lp), fit(mask), None if ent is None else fit(ent)


@torch.no_grad()
def all_logps(model, acc, samples: list[dict], micro: int, pad_id: int, width: int) -> torch.Tensor:
    """(n, width) per-token log-probs of every sample under `model` (no grad)."""
    was = model.training
    model.eval()
    out = torch.zeros(len(samples), width)
    for start in range(0, len(samples), micro):
        chunk = list(range(start, min(start + micro, len(samples))))
        out[chunk] = chunk_logps(model, acc, samples, chunk, pad_id, width)[0].cpu()
    model.train(was)
    return out


@dataclass
class Rollouts:
    """One step's samples and what the updates need of them: per-sample advantages (n,), which samples are
    trained (n,), the response width, the step's trained tokens, and (n, width) log-probs of the sampling
    policy (None: the policy's own, detached; ratio 1) and of the reference (None: beta 0)."""
    samples: list[dict]
    adv: torch.Tensor
    trained: torch.Tensor
    width: int
    n_tokens: int
    old: torch.Tensor | None
    ref: torch.Tensor | None


def update_loss(cfg: GRPOConfig, model, acc, b: Rollouts, pad_id: int, sums: dict[str, float],
                chunk: list[int]) -> torch.Tensor:
    """The micro-batch `chunk`'s share of the step's loss (clipped surrogate + beta x k3 KL, aggregated with the
    step's global counts); adds its token sums of kl, entropy, clip_ratio and approxkl to `sums`."""
    lp, mask, ent = chunk_logps(model, acc, b.samples, chunk, pad_id, b.width, entropy=True)
    mask = mask & b.trained[chunk, None].to(mask.device)
    start_lp = lp.detach() if b.old is None else b.old[chunk].to(lp.device)
    per_token, m = policy_loss(lp, start_lp, b.adv[chunk].to(lp.device), mask, cfg.epsilon,
                               cfg.epsilon_high or cfg.epsilon)
    if b.ref is not None:
        kl = kl_per_token(lp, b.ref[chunk].to(lp.device), "k3")
        per_token = per_token + cfg.beta * kl
        sums["kl"] += float((kl.detach() * mask).sum())
    n_mask = float(mask.sum())
    sums["entropy"] += float((ent * mask).sum())
    sums["clip_ratio"] += float(m["clipfrac"]) * n_mask
    sums["approxkl"] += float(m["approxkl"]) * n_mask
    return aggregate(per_token, mask, cfg.loss_aggregation, global_tokens=b.n_tokens,
                     global_sequences=len(b.samples), max_tokens=cfg.max_new_tokens)


def check_rewards(cfg: OnlineRLConfig) -> None:
    if cfg.reward_weights and len(cfg.reward_weights) != len(cfg.rewards):
        raise UserError(f"reward_weights: {len(cfg.reward_weights)} weights for {len(cfg.rewards)} rewards")
    if not cfg.rewards:
        raise UserError("rewards: give at least one (e.g. rewards=world or rewards=rm:runs/rm/model)")


def check_settings(cfg: GRPOConfig) -> None:
    check_rewards(cfg)
    if cfg.epsilon_high and cfg.epsilon_high < cfg.epsilon:
        raise UserError(f"epsilon_high ({cfg.epsilon_high}) is below epsilon ({cfg.epsilon})")


def check_kl(cfg: GRPOConfig, kl: float, step: int, run: common.Run) -> None:
    """A KL to the reference above `max_kl` (the policy has run away from it) stops the run before the update,
    like a non-finite loss: nothing of this step is saved, the last checkpoint stays the one to resume from."""
    if cfg.max_kl and cfg.beta > 0 and kl > cfg.max_kl:
        run.close()
        last = common.latest_checkpoint(run.ckpt_dir)
        raise TrainingDiverged(f"KL to the reference {kl:.3f} > max_kl={cfg.max_kl} at step {step}; stopped without "
                               f"saving; {f'the last good checkpoint is {last}' if last else 'no checkpoint was written'}")


def impute_group_mean(reward: torch.Tensor, group_size: int) -> torch.Tensor:
    """A NaN reward replaced by the mean of the other rewards of its group (0 when none is finite), so a dropped
    sample does not move its group's baseline."""
    g = reward.view(-1, group_size)
    ok = torch.isfinite(g)
    mean = torch.where(ok, g, torch.zeros(())).sum(1, keepdim=True) / ok.sum(1, keepdim=True).clamp(min=1)
    return torch.where(ok, g, mean.expand_as(g)).flatten()


def prompt_pool(cfg):
    """The run's tokenizer, renderer, prompt pool (the world's train split, distinct prompts of
    `prompts.families`; a prompt that leaves no room for max_new_tokens is refused), its seeded order and the
    number of steps."""
    tok = load_tokenizer(cfg.model.path)
    pool = sample_tasks(cfg.prompts.pool, "train", seed=cfg.seed, families=cfg.prompts.families, distinct=True)
    renderer = Renderer(tok, cfg.max_seq_len)
    too_long = [t for t in pool if len(renderer.prompt_ids(t.messages)) + cfg.max_new_tokens > cfg.max_seq_len]
    if too_long:
        raise UserError(f"max_seq_len={cfg.max_seq_len}: {len(too_long)} prompts + max_new_tokens do not fit")
    stream = common.DataStream(len(pool), cfg.batch_size, cfg.seed)
    max_steps = cfg.max_steps or math.ceil(cfg.epochs * len(pool) / cfg.batch_size)
    return tok, renderer, pool, stream, max_steps


def step_seed(seed: int, step: int) -> int:
    return seed * 1_000_003 + step


def main(cfg: GRPOConfig) -> dict:
    """Run GRPO; returns the final metrics (also in metrics.jsonl and result.json)."""
    acc = common.make_accelerator(cfg.precision, cfg.seed, cfg.threads)
    n_seq = cfg.batch_size * cfg.group_size
    common.check_batch(n_seq, min(cfg.micro_batch_size, n_seq), acc.num_processes)
    check_settings(cfg)
    fns = {name: resolve_reward(name) for name in cfg.rewards}   # a reward that does not import: before any work
    run = common.open_run(cfg, acc, "grpo")
    if run.finished:
        return run.result["metrics"]

    # Prompts and rewards.
    tok, renderer, pool, stream, max_steps = prompt_pool(cfg)
    weights = cfg.reward_weights or [1.0] * len(cfg.rewards)

    # Policy, reference (the starting model: a frozen copy, or the base with LoRA adapters off), optimizer.
    model = common.build_model(cfg.model, cfg.lora, cfg.compile)
    ref = None
    if cfg.beta > 0 and not cfg.lora.enabled:
        ref = copy.deepcopy(model).eval().requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = common.make_optimizer(params, cfg.optim, max_steps * cfg.iterations)
    model, optimizer = acc.prepare(model, optimizer)
    if ref is not None:
        ref = ref.to(acc.device)
    start = run.resume({"model": model}, {"model": optimizer}, {"model": scheduler}, max_steps,
                       f"{len(pool)} prompts ({', '.join(cfg.prompts.families)}), {cfg.batch_size} x "
                       f"{cfg.group_size} samples a step, rewards {'+'.join(cfg.rewards)}, {max_steps} steps")
    sample_log = common.MetricsLog(run.out, acc.is_main_process and cfg.log_samples > 0, start, name="samples.jsonl",
                                   tensorboard=False)
    pad_id, stop_ids = tok.pad_token_id, renderer.stop_token_ids()

    metrics: dict = {}
    for step in range(start, max_steps):
        # 1. Rollouts: group_size samples of each of the step's prompts, from the current policy.
        tasks = [pool[i] for i in stream.step_units(step)]
        t0 = time.perf_counter()
        samples = generate(acc.unwrap_model(model), tok, [t.messages for t in tasks], max_new_tokens=cfg.max_new_tokens,
                           temperature=cfg.temperature, top_p=cfg.top_p, batch_size=cfg.gen_batch_size,
                           seed=step_seed(cfg.seed, step), n=cfg.group_size)
        gen_s = time.perf_counter() - t0
        flat_tasks = [t for t in tasks for _ in range(cfg.group_size)]
        texts, stopped = [s["text"] for s in samples], [s["stopped"] for s in samples]

        # 2. Rewards and group-relative advantages (a NaN reward: the sample is dropped).
        try:
            reward, per = compute_rewards(fns, weights, flat_tasks, texts, stopped)
        except UserError:
            run.close()  # end the progress bar's line, so the error is a line of its own
            raise
        gold = per.get("world") or [world_score(t, x, s).gold for t, x, s in zip(flat_tasks, texts, stopped)]
        keep = torch.isfinite(reward)
        adv = torch.where(keep, group_advantages(impute_group_mean(reward, cfg.group_size), cfg.group_size,
                                                 cfg.advantage), torch.zeros(()))
        width = max(len(s["token_ids"]) for s in samples)
        seq_mask = torch.tensor([len(s["token_ids"]) > 0 for s in samples]) & keep
        n_tokens = sum(len(s["token_ids"]) for s, k in zip(samples, seq_mask.tolist()) if k)

        # 3. Log-probs the ratio and the KL start from (no grad): the sampling policy, the reference.
        old = all_logps(model, acc, samples, cfg.micro_batch_size, pad_id, width) if cfg.iterations > 1 else None
        ref_lp = None
        if cfg.beta > 0:
            if ref is not None:
                ref_lp = all_logps(ref, acc, samples, cfg.micro_batch_size, pad_id, width)
            else:
                with acc.unwrap_model(model).disable_adapter():
                    ref_lp = all_logps(model, acc, samples, cfg.micro_batch_size, pad_id, width)
        micro = common.shard(list(range(len(samples))), acc.process_index, acc.num_processes, cfg.micro_batch_size)

        # 4. `iterations` optimizer updates on these samples.
        batch = Rollouts(samples, adv, seq_mask, width, n_tokens, old, ref_lp)
        for _ in range(cfg.iterations):
            sums: dict[str, float] = {"kl": 0.0, "entropy": 0.0, "clip_ratio": 0.0, "approxkl": 0.0}
            loss_sum = common.accumulate(acc, model, micro, functools.partial(update_loss, cfg, model, acc, batch,
                                                                               pad_id, sums))
            check_kl(cfg, sums["kl"] / max(n_tokens, 1), step + 1, run)
            metrics = common.optimizer_step(acc, params, optimizer, scheduler, loss_sum, cfg.optim.max_grad_norm,
                                            step + 1, run.ckpt_dir)

        # 5. Metrics (TRL's names) and a few samples.
        groups = reward.view(-1, cfg.group_size)
        lengths = [len(s["token_ids"]) for s in samples]
        metrics.update({
            "reward": float(reward[keep].mean()) if keep.any() else math.nan,
            "reward_std": float(groups.std(1).nanmean()),
            "frac_reward_zero_std": float((groups.std(1) < 1e-6).float().mean()),
            "gold": sum(gold) / len(gold),
            "completions/mean_length": sum(lengths) / len(lengths),
            "completions/clipped_ratio": 1.0 - sum(stopped) / len(stopped),
            "rewards/dropped": int((~keep).sum()),
            "train/gen_s": gen_s,
            **{f"rewards/{name}": sum(v) / len(v) for name, v in per.items()},
            **{k: v / max(n_tokens, 1) for k, v in sums.items()},
        })
        if cfg.beta == 0:
            metrics.pop("kl")
        sample_log.log(step + 1, {"samples": [{"prompt": t.messages[-1].content, "family": t.family, "response": x,
                                   "reward": float(r), "gold": g}
                                  for t, x, r, g in zip(flat_tasks, texts, reward.tolist(), gold)][: cfg.log_samples]})
        run.step_done(step + 1, metrics, n_tokens)
    run.close()
    sample_log.close()
    if acc.is_main_process:
        where = common.save_final(run.out, acc.unwrap_model(model), tok, stop_ids, cfg.lora)
        print(f"{run.name}: done; model saved to {where}")
    acc.wait_for_everyone()
    return run.finish(metrics)
