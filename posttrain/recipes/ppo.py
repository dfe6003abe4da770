"""PPO (RLHF): a policy, a frozen reference, a reward (a reward model or a function) and a value model.

    posttrain ppo model=SFT_MODEL rewards=rm:RM_MODEL batch_size=16 max_steps=100 output_dir=runs/ppo
    posttrain ppo model=SFT_MODEL rewards=rm:RM_MODEL lora.enabled=true shared=true   # one frozen base in memory

Choices this recipe makes (TRL's PPOTrainer, the one it shipped until 2026, and "The N implementation details of
RLHF with PPO", where they agree; where they differ it says so):
- Prompts: the world's train split, `prompts.families` (every family by default), `prompts.pool` distinct prompts
  in a seeded order (`common.DataStream`); `batch_size` prompts a step, one sample each through
  `rollout.generate` (each sample from its own random stream, seeded by (seed, step, prompt), so a resumed run
  samples what the uninterrupted one did). Samples stop at the chat template's stop token (TRL generates a fixed
  length and truncates after the stop token).
- Score: the sum of `rewards` (as `posttrain grpo`: `world`, `rm:PATH` scored at the response's last token as
  `posttrain rm score` does, or `module:function`) minus `missing_eos_penalty` when a sample did not stop. A
  reward that raises or returns a non-number stops the run (exit code 2); a NaN drops its sample from the loss.
- Per-token reward (`losses.rl.ppo_token_rewards`): -beta x KL at every response token (`kl_estimator`: k1 =
  log p - log p_ref, TRL's default, or k3), plus the score at the last token. `target_kl` > 0 moves beta with
  Ziegler et al.'s adaptive controller (`losses.rl.adaptive_kl_beta`, horizon `kl_horizon`); beta is saved with
  each checkpoint, so a resumed run continues with the beta it had.
- Advantages: GAE (`gamma`, `lam`; TRL's 1.0 and 0.95) over the value model's estimates, whitened over the
  batch's tokens; returns = advantages + values (before whitening).
- Updates: `ppo_epochs` passes over the step's samples in seeded random mini-batches of `mini_batch_size`, one
  optimizer step each: the clipped policy loss (`cliprange`) plus `vf_coef` x the clipped value loss
  (`cliprange_value`), token means over the mini-batch (TRL's masked means), with one optimizer over the policy
  and the value model (TRL's PolicyAndValueWrapper; `value_lr` gives the value model a peak learning rate of its
  own, OpenRLHF's critic_learning_rate; `freeze_policy_steps` trains the value model alone for the first steps,
  OpenRLHF's freezing_actor_steps). `ptx_coef` > 0 adds PPO-ptx (InstructGPT): ptx_coef x the
  language-model loss of `ptx_batch_size` examples of `ptx_data` (any SFT conversation file) to every update.
- Models. Separate (default): the policy (full, or LoRA with the reference as the base with adapters off), a
  frozen copy of it as the reference (full only), the value model (a sequence classifier loaded from
  `value_model`, by default the reward model when the reward is one `rm:PATH`, else the policy with a new head,
  zero-initialised; values read at every response position through its body and its `score` head) and the reward
  model: four models. Shared (`shared=true`, needs `lora.enabled`): one frozen base; the policy is LoRA adapter
  `default`, the value model LoRA adapter `value` plus a linear head (zero-initialised) on the same base, and the
  reference is the base with adapters off; a LoRA reward model (`posttrain rm lora.enabled=true`'s adapter/
  folder on the same base) loads as a third adapter, any other reward model stays its own model (or a function).
- Metrics with TRL's PPO names: objective/kl (summed per sample, mean over samples), objective/entropy (summed
  -log p of the sampled tokens), objective/non_score_reward, objective/rlhf_reward, objective/scores,
  policy/approxkl_avg, policy/clipfrac_avg, loss/policy_avg, loss/value_avg, val/clipfrac_avg,
  policy/entropy_avg, val/ratio, val/num_eos_tokens; plus gold (the world's mean gold of the samples, whatever the
  reward), rewards/<name>, beta, completions/mean_length, completions/clipped_ratio and val/explained_variance
  (1 - Var(returns - values) / Var(returns) over the rollout's response tokens: how much of the return the value
  model predicts before the step's updates).
"""

from __future__ import annotations

import copy
import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from posttrain.config import doc, section
from posttrain.data.collate import packed_batch
from posttrain.data.formats import load_examples
from posttrain.data.render import Renderer
from posttrain.data.types import Conversation, Message
from posttrain.errors import UserError
from posttrain.losses.rl import (
    adaptive_kl_beta,
    aggregate,
    gae,
    kl_per_token,
    masked_whiten,
    policy_loss,
    ppo_token_rewards,
    value_loss,
)
from posttrain.models.forward import token_values
from posttrain.models.load import load_tokenizer
from posttrain.recipes import common
from posttrain.recipes.grpo import (
    GRPOPromptsConfig,
    OnlineRLConfig,
    all_logps,
    check_kl,
    check_rewards,
    chunk_logps,
    compute_rewards,
    prompt_pool,
    resolve_reward,
    step_seed,
)
from posttrain.rollout.generate import generate, samples_batch
from posttrain.world import FAMILIES
from posttrain.world import score as world_score


def ppo_prompts() -> GRPOPromptsConfig:
    """PPO's prompts: every family of the world (a reward model scores any answer)."""
    return GRPOPromptsConfig(families=list(FAMILIES))


@dataclass
class PPOConfig(OnlineRLConfig):
    prompts: GRPOPromptsConfig = section(ppo_prompts, "the prompts")
    output_dir: str = doc("runs/ppo", "run folder: config.yaml, metrics.jsonl, tb/, checkpoints/, samples.jsonl, "
                                      "model/, result.json", changes_result=False)
    batch_size: int = doc(16, "prompts per step (one sample each): the rollout batch", ge=1)
    mini_batch_size: int = doc(0, "samples per optimizer update (0: batch_size, one update per epoch)", ge=0)
    ppo_epochs: int = doc(4, "passes over each rollout batch (TRL's num_ppo_epochs)", ge=1)
    value_model: str = doc("", "the value model's start (a reward model or causal LM folder; empty: the reward "
                               "model when the reward is one rm:PATH, else the policy with a new head, zeroed)")
    shared: bool = doc(False, "one frozen base: policy and value model as two LoRA adapters on it, the reference "
                              "as the base with adapters off (needs lora.enabled)")
    missing_eos_penalty: float = doc(1.0, "subtracted from the score of a sample that did not stop", ge=0)
    beta: float = doc(0.05, "KL penalty coefficient (TRL's kl_coef); the start value when target_kl is set", ge=0)
    kl_estimator: Literal["k1", "k3"] = doc("k1", "per-token KL in the reward: k1 (log-ratio, TRL) or k3")
    target_kl: float = doc(0.0, "adaptive KL: move beta towards this KL per sample (0: fixed beta)", ge=0)
    kl_horizon: float = doc(10000.0, "adaptive KL horizon, in samples", gt=0)
    gamma: float = doc(1.0, "GAE discount", ge=0, le=1)
    lam: float = doc(0.95, "GAE lambda", ge=0, le=1)
    cliprange: float = doc(0.2, "policy ratio clip", gt=0, lt=1)
    cliprange_value: float = doc(0.2, "value clip around the rollout's values (0: no clipping)", ge=0)
    vf_coef: float = doc(0.1, "weight of the value loss", ge=0)
    freeze_policy_steps: int = doc(0, "first steps that train the value model alone (OpenRLHF's "
                                      "freezing_actor_steps): its values learn the returns before they steer the "
                                      "policy", ge=0)
    value_lr: float = doc(0.0, "the value model's peak learning rate, on optim's schedule (OpenRLHF's "
                               "critic_learning_rate; 0: optim.lr, TRL's one learning rate)", ge=0)
    ptx_data: str = doc("", "PPO-ptx: SFT data (any conversation format) whose LM loss joins every update")
    ptx_coef: float = doc(0.0, "PPO-ptx: weight of that LM loss (0: off)", ge=0)
    ptx_batch_size: int = doc(8, "PPO-ptx: examples per update", ge=1)


# --- the value model ---------------------------------------------------------------------------------------------


class SharedAdapters:
    """The shared mode's switch between the adapters of one peft model: the policy (`default`), the value model
    (`value`) and, when the reward model is a LoRA adapter of the same base, the reward model (`reward`, frozen).
    peft's `set_adapter` freezes every adapter but the active one; the policy and the value adapters stay trainable
    here whichever is active (an update trains both)."""

    def __init__(self, model):
        self.model = model
        self.add("value")
        self.trainable = [p for n, p in model.named_parameters() if "lora_" in n]
        self.use("default")

    def add(self, name: str, config=None) -> None:
        from peft import LoraConfig as PeftLoraConfig

        c = config or self.model.peft_config["default"]
        self.model.add_adapter(name, PeftLoraConfig(r=c.r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                                                    target_modules=c.target_modules, fan_in_fan_out=c.fan_in_fan_out,
                                                    task_type="CAUSAL_LM"))

    def use(self, name: str) -> None:
        self.model.set_adapter(name, inference_mode=name == "reward")
        for p in self.trainable:
            p.requires_grad_(True)


class AdapterRewardModel(torch.nn.Module):
    """A LoRA reward model (`posttrain rm lora.enabled=true`'s adapter/ folder) on the shared base: its adapter
    loaded as `reward` beside the policy's, its head a linear layer of its own. Called like a sequence
    classifier (input_ids, attention_mask -> per-position head output through `score`), so `rm.score_examples`
    scores with it exactly as `posttrain rm score` scores the merged model."""

    def __init__(self, adapters: SharedAdapters, path: str, policy_path: str):
        from peft import PeftConfig, set_peft_model_state_dict
        from safetensors.torch import load_file

        super().__init__()
        config = PeftConfig.from_pretrained(path)
        if Path(config.base_model_name_or_path).resolve() != Path(policy_path).resolve():
            raise UserError(f"rewards: the reward adapter '{path}' is on '{config.base_model_name_or_path}', not on "
                            f"the policy '{policy_path}'; give its merged reward model (model/) instead")
        state = load_file(Path(path) / "adapter_model.safetensors")
        heads = [k for k in state if ".score." in k or k.endswith("score.weight")]
        if len(heads) != 1:
            raise UserError(f"rewards: '{path}' holds {len(heads)} head weights (score.weight expected)")
        self.adapters = adapters
        adapters.add("reward", config)
        set_peft_model_state_dict(adapters.model, {k: v for k, v in state.items() if k not in heads},
                                  adapter_name="reward")
        weight = state[heads[0]]
        self.score = torch.nn.Linear(weight.shape[1], 1, bias=False).requires_grad_(False)
        self.score.weight.data.copy_(weight)
        self.backbone = adapters.model.get_base_model().base_model
        adapters.use("default")

    def forward(self, input_ids, attention_mask, use_cache=False):
        self.adapters.use("reward")
        try:
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            return self.score(out.last_hidden_state)
        finally:
            self.adapters.use("default")


def shared_rewards(cfg: PPOConfig, fns: dict, adapters: SharedAdapters, tok) -> dict:
    """In the shared mode, each `rm:PATH` that is a LoRA adapter folder scores through the shared base."""
    from posttrain.recipes.rm import score_examples

    for name in list(fns):
        path = name[3:]
        if not (name.startswith("rm:") and (Path(path) / "adapter_config.json").exists()):
            continue
        scorer = AdapterRewardModel(adapters, path, cfg.model.path)

        def batch(messages, responses, scorer=scorer):
            convs = [Conversation([*m, Message("assistant", r)], where=f"sample {i}")
                     for i, (m, r) in enumerate(zip(messages, responses))]
            rows = score_examples(scorer, tok, convs, tok.pad_token_id, cfg.max_seq_len, cfg.micro_batch_size,
                                  str(scorer.score.weight.device))
            return [math.nan if r["score"] is None else float(r["score"]) for r in rows]

        batch.batched = True  # type: ignore[attr-defined]
        fns[name] = batch
    return fns


def _load_value_model(path: str):
    from transformers import AutoModelForSequenceClassification

    from posttrain.recipes.rm import _quiet_hf

    with _quiet_hf():
        value = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    # config.architectures is the saved model's, read from its config.json
    if not any(a.endswith("ForSequenceClassification") for a in value.config.architectures or []):
        # A causal LM's body with a new head: zero it (as the shared mode's), so the first values are 0, not noise
        # (transformers' random head explains less than nothing of the returns: explained variance about -1.4).
        torch.nn.init.zeros_(value.score.weight)
    value.config.use_cache = False
    if value.config.pad_token_id is None:
        value.config.pad_token_id = load_tokenizer(path).pad_token_id
    return value


def value_start(cfg: PPOConfig) -> str:
    """Where the separate value model starts: `value_model`, else the reward model of a single rm:PATH reward
    (TRL's choice), else the policy (its body, with a new head)."""
    if cfg.value_model:
        return cfg.value_model
    rms = [r[3:] for r in cfg.rewards if r.startswith("rm:")]
    return rms[0] if len(cfg.rewards) == 1 and rms else cfg.model.path


def chunk_values(backbone, head, acc, samples: list[dict], chunk: list[int], pad_id: int, width: int) -> torch.Tensor:
    """(len(chunk), width) values at the chunk's response tokens, in the order of `chunk`."""
    batch, order = samples_batch(samples, chunk, pad_id)
    batch = {k: v.to(acc.device) for k, v in batch.items()}
    with acc.autocast():
        v, _ = token_values(backbone, head, batch, len(order))
    where = {p: k for k, p in enumerate(order)}
    v = v[torch.tensor([where[p] for p in chunk], device=v.device)]
    return torch.nn.functional.pad(v, (0, width - v.shape[1])) if v.shape[1] < width else v[:, :width]


# --- one step's rollouts -----------------------------------------------------------------------------------------


@dataclass
class Rollouts:
    """A step's samples and what the updates read of them, all (n, width): the trained-token mask, the sampling
    policy's log-probs, the rollout's values, the whitened advantages and the returns."""
    samples: list[dict]
    mask: torch.Tensor
    old: torch.Tensor
    values: torch.Tensor
    adv: torch.Tensor
    returns: torch.Tensor


def response_mask(samples: list[dict], keep: torch.Tensor, width: int) -> torch.Tensor:
    lengths = torch.tensor([len(s["token_ids"]) for s in samples])
    return (torch.arange(width)[None, :] < lengths[:, None]) & keep[:, None]


def check_settings(cfg: PPOConfig) -> None:
    check_rewards(cfg)
    if cfg.shared and not cfg.lora.enabled:
        raise UserError("shared=true puts the policy and the value model on one base as LoRA adapters: set "
                        "lora.enabled=true")
    if cfg.shared and cfg.value_model:
        raise UserError("value_model: the shared mode's value model is a new adapter and head on the policy's base; "
                        "leave value_model empty")
    mb = cfg.mini_batch_size or cfg.batch_size
    if cfg.batch_size % mb:
        raise UserError(f"mini_batch_size={mb} does not divide batch_size={cfg.batch_size}")
    if cfg.ptx_coef > 0 and not cfg.ptx_data:
        raise UserError("ptx_coef > 0 needs ptx_data (an SFT conversation file)")


def load_ptx(cfg: PPOConfig, renderer: Renderer) -> list:
    """PPO-ptx's examples, rendered as SFT renders them (a dropped example is skipped)."""
    _, examples = load_examples(cfg.ptx_data)
    convs = [e for e in examples if isinstance(e, Conversation)]
    if not convs:
        raise UserError(f"ptx_data: '{cfg.ptx_data}' holds no conversations (PPO-ptx needs SFT data)")
    rows = [r for r in (renderer.render(c) for c in convs) if not isinstance(r, str) and r.n_trained]
    if not rows:
        raise UserError(f"ptx_data: no example of '{cfg.ptx_data}' fits max_seq_len={cfg.max_seq_len}")
    return rows


def _is_adapter(name: str) -> bool:
    return name.startswith("rm:") and (Path(name[3:]) / "adapter_config.json").exists()


class Models:
    """The policy, the reference and the value model, separate or sharing one base, and the passes the loop makes
    through them: log-probs of the policy and the reference, values, and the loss of a micro-batch."""

    def __init__(self, cfg: PPOConfig, acc, pad_id: int):
        self.cfg, self.acc, self.pad_id = cfg, acc, pad_id
        model = common.build_model(cfg.model, cfg.lora, cfg.compile)
        self.adapters = SharedAdapters(model) if cfg.shared else None
        self.ref = copy.deepcopy(model).eval().requires_grad_(False) if not cfg.lora.enabled else None
        if self.adapters is not None:
            value = torch.nn.Linear(model.config.hidden_size, 1, bias=False)
            torch.nn.init.zeros_(value.weight)
        else:
            value = _load_value_model(value_start(cfg))
        policy_params = [p for p in model.parameters() if p.requires_grad]
        value_params = [p for p in value.parameters() if p.requires_grad]
        if self.adapters is not None:  # the value adapter's weights live in the policy's peft model
            value_ids = {id(p) for n, p in model.named_parameters() if n.split(".")[-2] == "value"}
            value_params += [p for p in policy_params if id(p) in value_ids]
            policy_params = [p for p in policy_params if id(p) not in value_ids]
        self.params = policy_params + value_params
        # One optimizer, two parameter groups: the value model's own peak learning rate when value_lr is set.
        self.groups = [{"params": policy_params}, {"params": value_params, "lr": cfg.value_lr or cfg.optim.lr}]
        self.model, self.value = model, value

    def prepare(self, optimizer):
        self.model, self.value, optimizer = self.acc.prepare(self.model, self.value, optimizer)
        if self.ref is not None:
            self.ref = self.ref.to(self.acc.device)
        if self.adapters is not None:
            self.backbone, self.head = self.acc.unwrap_model(self.model).get_base_model().base_model, self.value
        else:
            v = self.acc.unwrap_model(self.value)
            self.backbone, self.head = v.base_model, v.score
        return optimizer

    def use(self, name: str) -> None:
        if self.adapters is not None:
            self.adapters.use(name)

    def policy(self):
        self.use("default")
        return self.acc.unwrap_model(self.model)

    @torch.no_grad()
    def rollout_passes(self, samples: list[dict], width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(n, width) log-probs of the sampling policy and of the reference, and the values."""
        micro, pad_id = self.cfg.micro_batch_size, self.pad_id
        old = all_logps(self.model, self.acc, samples, micro, pad_id, width)
        if self.ref is not None:
            ref = all_logps(self.ref, self.acc, samples, micro, pad_id, width)
        else:
            with self.acc.unwrap_model(self.model).disable_adapter():
                ref = all_logps(self.model, self.acc, samples, micro, pad_id, width)
        self.value.eval()
        self.use("value")
        values = torch.zeros(len(samples), width)
        for s in range(0, len(samples), micro):
            chunk = list(range(s, min(s + micro, len(samples))))
            values[chunk] = chunk_values(self.backbone, self.head, self.acc, samples, chunk, pad_id, width).cpu()
        self.use("default")
        self.value.train()
        return old, ref, values

    def ppo_loss(self, b: Rollouts, n_tokens: int, sums: dict[str, float], chunk: list[int],
                 train_policy: bool = True) -> torch.Tensor:
        """One micro-batch's share of an update's loss: the clipped policy loss plus vf_coef x the clipped value
        loss, token means over the mini-batch. The policy part is backpropagated here, before the value pass, so
        the two graphs are never in memory together; the value part is returned (plus the policy part, detached,
        for the logged loss). With `train_policy` false (freeze_policy_steps) the policy part is measured, not
        trained."""
        cfg, width = self.cfg, b.mask.shape[1]
        self.use("default")
        with torch.set_grad_enabled(train_policy):
            lp, _, ent = chunk_logps(self.model, self.acc, b.samples, chunk, self.pad_id, width, entropy=True)
            mask = b.mask[chunk].to(lp.device)
            pg, pm = policy_loss(lp, b.old[chunk].to(lp.device), b.adv[chunk].to(lp.device), mask, cfg.cliprange)
            pg_part = aggregate(pg, mask, "token_mean", global_tokens=n_tokens)
        if train_policy:
            self.acc.backward(pg_part * self.acc.num_processes)
        self.use("value")
        v = chunk_values(self.backbone, self.head, self.acc, b.samples, chunk, self.pad_id, width)
        vl, vm = value_loss(v, b.values[chunk].to(v.device), b.returns[chunk].to(v.device), mask,
                            cfg.cliprange_value or None)
        self.use("default")
        n = float(mask.sum())
        sums["pg"] += float((pg.detach() * mask).sum())
        sums["vf"] += float((vl.detach() * mask).sum())
        sums["entropy"] += float((ent * mask).sum())
        for key, m in (("clipfrac", pm["clipfrac"]), ("approxkl", pm["approxkl"]), ("ratio", pm["ratio"]),
                       ("vf_clipfrac", vm["vf_clipfrac"])):
            sums[key] += float(m) * n
        return cfg.vf_coef * aggregate(vl, mask, "token_mean", global_tokens=n_tokens) + pg_part.detach()

    def final_policy(self):
        """The policy to save: with the shared base, the value (and reward) adapters removed first."""
        policy = self.acc.unwrap_model(self.model)
        if self.adapters is not None:
            policy.set_adapter("default")
            for name in [n for n in policy.peft_config if n != "default"]:
                policy.delete_adapter(name)
        return policy


def step_metrics(cfg: PPOConfig, b: Rollouts, score: torch.Tensor, keep: torch.Tensor, mean_kl: float, beta: float,
                 sums: dict[str, float], updates: int, stopped: list[bool], gold: list[float],
                 per: dict[str, list[float]]) -> dict[str, float]:
    """A step's metrics with TRL's PPO names (sums: token sums over every update of the step)."""
    n_kept = max(int(keep.sum()), 1)
    n_tok = max(float(b.mask.sum()) * cfg.ppo_epochs, 1.0)
    lengths = [len(s["token_ids"]) for s in b.samples]
    non_score = -beta * mean_kl  # the KL part of the per-token rewards, summed per sample
    m = b.mask.bool()
    returns, err = b.returns[m], (b.returns - b.values)[m]
    explained = 1.0 - float(err.var()) / float(returns.var()) if returns.numel() > 1 and returns.var() > 0 else 0.0
    return {
        "objective/kl": mean_kl,
        "objective/entropy": float((-b.old * b.mask).sum()) / n_kept,
        "objective/non_score_reward": non_score,
        "objective/rlhf_reward": float(score[keep].sum()) / n_kept + non_score,
        "objective/scores": float(score[keep].sum()) / n_kept,
        "policy/approxkl_avg": sums["approxkl"] / n_tok,
        "policy/clipfrac_avg": sums["clipfrac"] / n_tok,
        "loss/policy_avg": sums["pg"] / n_tok,
        "loss/value_avg": sums["vf"] / n_tok,
        "val/clipfrac_avg": sums["vf_clipfrac"] / n_tok,
        "val/explained_variance": explained,  # of the rollout's returns by its values, before the step's updates
        "policy/entropy_avg": sums["entropy"] / n_tok,
        "val/ratio": sums["ratio"] / n_tok,
        "val/num_eos_tokens": sum(stopped),
        "gold": sum(gold) / len(gold),
        "beta": beta,
        "completions/mean_length": sum(lengths) / len(lengths),
        "completions/clipped_ratio": 1.0 - sum(stopped) / len(stopped),
        "rewards/dropped": int((~keep).sum()),
        **{f"rewards/{name}": sum(v) / len(v) for name, v in per.items()},
        **({"loss/ptx_avg": sums["ptx"] / updates} if cfg.ptx_coef > 0 else {}),
    }


def main(cfg: PPOConfig) -> dict:
    """Run PPO; returns the final metrics (also in metrics.jsonl and result.json)."""
    acc = common.make_accelerator(cfg.precision, cfg.seed, cfg.threads)
    mb = cfg.mini_batch_size or cfg.batch_size
    common.check_batch(mb, min(cfg.micro_batch_size, mb), acc.num_processes)
    check_settings(cfg)
    # A reward that does not import stops the run before any work (a LoRA reward adapter of the shared mode loads
    # onto the shared base below).
    fns = {name: None if cfg.shared and _is_adapter(name) else resolve_reward(name) for name in cfg.rewards}
    run = common.open_run(cfg, acc, "ppo")
    if run.finished:
        return run.result["metrics"]

    # Prompts, PPO-ptx data.
    tok, renderer, pool, stream, max_steps = prompt_pool(cfg)
    weights = cfg.reward_weights or [1.0] * len(cfg.rewards)
    updates = cfg.ppo_epochs * (cfg.batch_size // mb)
    ptx = load_ptx(cfg, renderer) if cfg.ptx_coef > 0 else []
    ptx_stream = common.DataStream(len(ptx), cfg.ptx_batch_size, cfg.seed + 1) if ptx else None
    pad_id, stop_ids = tok.pad_token_id, renderer.stop_token_ids()

    # Policy, reference, value model (separate models, or adapters on one base), one optimizer over both.
    models = Models(cfg, acc, pad_id)
    if models.adapters is not None:
        fns = shared_rewards(cfg, fns, models.adapters, tok)
    optimizer, scheduler = common.make_optimizer(models.groups, cfg.optim, max_steps * updates)
    optimizer = models.prepare(optimizer)
    what = (f"{len(pool)} prompts ({len(cfg.prompts.families)} families), {cfg.batch_size} samples a step, rewards "
            f"{'+'.join(cfg.rewards)}, {'shared base' if cfg.shared else 'value model from ' + value_start(cfg)}, "
            f"{max_steps} steps")
    start = run.resume({"model": models.model, "value": models.value}, {"model": optimizer}, {"model": scheduler},
                       max_steps, what)
    beta = float(run.extra.get("beta", cfg.beta))
    sample_log = common.MetricsLog(run.out, acc.is_main_process and cfg.log_samples > 0, start, name="samples.jsonl",
                                   tensorboard=False)

    def loss_of(b: Rollouts, n_tokens: int, sums: dict[str, float], train_policy: bool, item) -> torch.Tensor:
        kind, chunk = item
        if kind == "ppo":
            return models.ppo_loss(b, n_tokens, sums, chunk, train_policy)
        batch = packed_batch([[ptx[i]] for i in chunk], pad_id)   # PPO-ptx: ptx_coef x the LM loss
        loss = common.lm_loss(models.model, {k: v.to(acc.device) for k, v in batch.items()},
                              sum(ptx[i].n_trained for i in chunk))
        sums["ptx"] += float(loss.detach())
        return cfg.ptx_coef * loss

    metrics: dict = {}
    for step in range(start, max_steps):
        # 1. Rollouts: one sample of each of the step's prompts from the current policy.
        tasks = [pool[i] for i in stream.step_units(step)]
        t0 = time.perf_counter()
        samples = generate(models.policy(), tok, [t.messages for t in tasks], max_new_tokens=cfg.max_new_tokens,
                           temperature=cfg.temperature, top_p=cfg.top_p, batch_size=cfg.gen_batch_size,
                           seed=step_seed(cfg.seed, step))
        gen_s = time.perf_counter() - t0
        texts, stopped = [s["text"] for s in samples], [s["stopped"] for s in samples]

        # 2. Scores: the rewards, minus the penalty for a sample that did not stop (a NaN: the sample is dropped).
        try:
            reward, per = compute_rewards(fns, weights, tasks, texts, stopped)
        except UserError:
            run.close()  # end the progress bar's line, so the error is a line of its own
            raise
        gold = per.get("world") or [world_score(t, x, s).gold for t, x, s in zip(tasks, texts, stopped)]
        score = reward - cfg.missing_eos_penalty * (~torch.tensor(stopped)).float()
        keep = torch.isfinite(score) & torch.tensor([len(s["token_ids"]) > 0 for s in samples])
        score = torch.where(keep, score, torch.zeros(()))
        width = max(max(len(s["token_ids"]) for s in samples), 1)
        mask = response_mask(samples, keep, width)

        # 3. No grad: log-probs of the sampling policy and the reference, values; per-token rewards; GAE.
        old, ref_lp, values = models.rollout_passes(samples, width)
        kl = kl_per_token(old, ref_lp, cfg.kl_estimator) * mask
        adv, returns = gae(ppo_token_rewards(score, kl, mask, beta), values, mask, cfg.gamma, cfg.lam)
        adv = masked_whiten(adv, mask) * mask
        mean_kl = float(kl.sum()) / max(int(keep.sum()), 1)
        check_kl(cfg, float(kl.sum()) / max(int(mask.sum()), 1), step + 1, run)

        # 4. ppo_epochs passes over the samples in seeded random mini-batches, one optimizer step each.
        batch = Rollouts(samples, mask, old, values, adv, returns)
        order = torch.Generator().manual_seed(step_seed(cfg.seed, step))
        sums = dict.fromkeys(("pg", "vf", "entropy", "clipfrac", "approxkl", "ratio", "vf_clipfrac", "ptx"), 0.0)
        plan = [perm[s:s + mb] for _ in range(cfg.ppo_epochs)
                for perm in [torch.randperm(len(samples), generator=order).tolist()]
                for s in range(0, len(samples), mb)]
        train_policy = step >= cfg.freeze_policy_steps  # freeze_policy_steps: the value model alone at first
        for u, idx in enumerate(plan):
            items = [("ppo", c) for c in common.shard(idx, acc.process_index, acc.num_processes, cfg.micro_batch_size)]
            if ptx_stream is not None and train_policy:
                items += [("ptx", c) for c in common.shard(ptx_stream.step_units(step * updates + u),
                                                           acc.process_index, acc.num_processes, cfg.micro_batch_size)]
            loss_sum = common.accumulate(acc, models.model, items,
                                         functools.partial(loss_of, batch, int(mask[idx].sum()), sums, train_policy))
            metrics = common.optimizer_step(acc, models.params, optimizer, scheduler, loss_sum,
                                            cfg.optim.max_grad_norm, step + 1, run.ckpt_dir)

        # 5. Metrics (TRL's names), a few samples, then the adaptive KL controller's new beta.
        metrics.update(step_metrics(cfg, batch, score, keep, mean_kl, beta, sums, updates, stopped, gold, per))
        metrics["train/gen_s"] = gen_s
        sample_log.log(step + 1, {"samples": [{"prompt": t.messages[-1].content, "family": t.family, "response": x,
                                               "score": float(r), "gold": g}
                                              for t, x, r, g in zip(tasks, texts, score.tolist(), gold)]
                                  [: cfg.log_samples]})
        if cfg.target_kl > 0:
            beta = adaptive_kl_beta(beta, mean_kl, cfg.target_kl, cfg.kl_horizon, cfg.batch_size)
        run.extra["beta"] = beta
        run.step_done(step + 1, metrics, int(mask.sum()))
    run.close()
    sample_log.close()
    if acc.is_main_process:
        where = common.save_final(run.out, models.final_policy(), tok, stop_ids, cfg.lora)
        print(f"{run.name}: done; model saved to {where}")
    acc.wait_for_everyone()
    return run.finish(metrics, beta=beta)
