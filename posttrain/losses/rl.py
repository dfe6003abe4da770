"""Online RL pieces: KL estimators, GAE, whitening, the clipped policy and value losses, group advantages
(GRPO, Dr. GRPO, RLOO), the token aggregations, PPO's per-token rewards and the adaptive KL controller.

Pure functions of tensors, like the rest of `losses/`. Sequence tensors are (B, T) over the response tokens
only, right-padded, with a float or bool `mask` (B, T) that is 1 on real response tokens and 0 after a
sequence ends; a masked position never changes a result (its value may be anything, NaN included). All math runs in
float32 and no input is modified. Metric names are TRL's / OpenRLHF's (`clipfrac`, `approxkl`, ...).

The conventions, and where TRL, OpenRLHF and open-instruct differ, are in `docs/rl-losses.md`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

KLKind = Literal["k1", "k2", "k3"]
KL_KINDS = ("k1", "k2", "k3")
Aggregation = Literal["token_mean", "sequence_mean", "constant"]
AGGREGATIONS = ("token_mean", "sequence_mean", "constant")
GroupKind = Literal["grpo", "dr_grpo", "rloo"]
GROUP_KINDS = ("grpo", "dr_grpo", "rloo")


def _f32(x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x).float()


def _mask(mask: torch.Tensor) -> torch.Tensor:
    return _f32(mask)


def _zero_masked(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x * mask with the masked positions set to 0 first (a NaN or inf there never leaks into a sum)."""
    return torch.where(m > 0, _f32(x), 0.0) * m


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of x over the positions where mask is 1 (along `dim`, or all of them)."""
    x = _zero_masked(x, _mask(mask))
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over the positions where mask is 1 (over all of them, or along `dim`); an empty row gives 0."""
    m = _mask(mask)
    total = m.sum() if dim is None else m.sum(dim)
    return masked_sum(x, m, dim) / total.clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of x over the masked positions; `unbiased` uses n - 1 (as TRL's and OpenRLHF's whitening)."""
    m = _mask(mask)
    mean = masked_mean(x, m)
    var = masked_mean((_f32(x) - mean) ** 2, m)
    n = m.sum()
    if unbiased:
        var = var * n / (n - 1).clamp(min=1.0)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) with the mean and the unbiased variance taken over the masked positions only;
    `shift_mean=False` adds the mean back (PPO whitens rewards that way). Masked positions come out 0."""
    m = _mask(mask)
    x = _zero_masked(x, m)
    mean, var = masked_mean(x, m), masked_var(x, m)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * m


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, kind: KLKind = "k1") -> torch.Tensor:
    """Per-token estimators of KL(policy || reference) from the sampled tokens' log-probs (Schulman 2020):
    k1 = log r, k2 = (log r)^2 / 2, k3 = exp(-log r) - 1 + log r, where log r = logp - ref_logp. k1 is unbiased
    and can be negative; k3 is unbiased and never negative; k2 is biased, never negative, low variance."""
    if kind not in KL_KINDS:
        raise ValueError(f"unknown KL estimator {kind!r}; one of {', '.join(KL_KINDS)}")
    log_ratio = _f32(logp) - _f32(ref_logp)
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio ** 2
    return torch.expm1(-log_ratio) + log_ratio


def ppo_token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """PPO's per-token reward (Ziegler et al. 2019; TRL's old PPOTrainer): -beta * KL at every response token,
    plus the sequence's score (B,) at its last response token. A row with no response token gets nothing."""
    m = _mask(mask)
    rewards = -float(beta) * _zero_masked(kl, m)
    lengths = m.sum(1).long()
    rows = torch.nonzero(lengths > 0).flatten()
    rewards[rows, lengths[rows] - 1] += _f32(scores)[rows]
    return rewards


def gae_loop(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
             lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation, written as the textbook backward loop (the reference `gae` is tested
    against): delta_t = r_t + gamma V_{t+1} - V_t (V after a sequence's end is 0), A_t = delta_t + gamma lam
    A_{t+1}. Returns (advantages, returns = advantages + values), both 0 at masked positions."""
    m = _mask(mask)
    r, v = _zero_masked(rewards, m), _zero_masked(values, m)
    B, T = r.shape
    adv = torch.zeros(B, T)
    last = torch.zeros(B)
    for t in reversed(range(T)):
        next_v = v[:, t + 1] if t + 1 < T else torch.zeros(B)
        delta = r[:, t] + gamma * next_v - v[:, t]
        last = (delta + gamma * lam * last) * m[:, t]
        adv[:, t] = last
    return adv, (adv + v) * m


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE as one matrix product: A = delta @ D with D[s, t] = (gamma lam)^(s - t) for s >= t, equal to
    `gae_loop` (tested). Right-padded rows only (a sequence is a prefix of its row)."""
    m = _mask(mask)
    r, v = _zero_masked(rewards, m), _zero_masked(values, m)
    T = r.shape[1]
    next_v = torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], dim=1)
    delta = (r + gamma * next_v - v) * m
    idx = torch.arange(T)
    power = (idx[:, None] - idx[None, :]).float()                    # [s, t] = s - t
    discount = torch.where(power >= 0, (gamma * lam) ** power.clamp(min=0), torch.zeros(()))
    adv = (delta @ discount) * m
    return adv, (adv + v) * m


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: Aggregation = "token_mean", *,
              global_tokens: float | None = None, global_sequences: float | None = None,
              max_tokens: int | None = None) -> torch.Tensor:
    """A per-token loss (B, T) to the scalar loss of a step.

    - `token_mean` (DAPO, TRL's `dapo`/`bnpo`, OpenRLHF): sum over every token / the step's number of tokens;
    - `sequence_mean` (the GRPO paper, TRL's `grpo`): each sequence's token mean, then the mean over sequences;
    - `constant` (Dr. GRPO): sum over every token / (sequences x max_tokens), a constant that does not depend
      on the lengths, so long wrong answers are not pushed down less per token than short ones.

    The step's counts (`global_tokens`, `global_sequences`) default to this batch's; pass the counts of the
    whole step when it is split into micro-batches, so that any split gives the same gradient."""
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; one of {', '.join(AGGREGATIONS)}")
    m = _mask(mask)
    x = _zero_masked(per_token, m)
    n_seq = float(global_sequences) if global_sequences is not None else float(x.shape[0])
    if mode == "token_mean":
        n_tok = float(global_tokens) if global_tokens is not None else float(m.sum())
        return x.sum() / max(n_tok, 1.0)
    if mode == "sequence_mean":
        return (x.sum(1) / m.sum(1).clamp(min=1.0)).sum() / max(n_seq, 1.0)
    if max_tokens is None:
        raise ValueError("aggregation 'constant' needs max_tokens (the generation budget)")
    return x.sum() / max(n_seq * max_tokens, 1.0)


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip_eps: float = 0.2, clip_eps_high: float | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate, per token: max(-A r, -A clip(r, 1 - eps, 1 + eps_high)) with r = exp(logp -
    old_logp) (eps_high defaults to eps; DAPO's clip-higher sets it larger). `advantages` is (B, T), or (B,)
    for one advantage per sequence (GRPO). Returns the per-token loss (B, T) (aggregate it with `aggregate`)
    and masked-mean metrics: `clipfrac` (tokens where the clipped term won), `approxkl` ((log r)^2 / 2, as
    TRL's PPO), `ratio` (mean r)."""
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    m = _mask(mask)
    adv = _f32(advantages)
    if adv.dim() == 1:
        adv = adv[:, None].expand_as(m)
    log_ratio = _f32(logp) - _f32(old_logp)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_eps, 1.0 + eps_high)
    loss = torch.maximum(unclipped, clipped)
    with torch.no_grad():
        metrics = {
            "clipfrac": masked_mean((clipped > unclipped).float(), m),
            "approxkl": masked_mean(0.5 * log_ratio ** 2, m),
            "ratio": masked_mean(ratio, m),
        }
    return loss, metrics


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range: float | None = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped value loss, per token: 0.5 max((V - R)^2, (V_clip - R)^2) with V_clip = old_V +
    clip(V - old_V, -c, c) (`clip_range=None`: the plain 0.5 (V - R)^2). Returns the per-token loss and
    `vf_clipfrac` and `vpred` (masked means)."""
    v, old, ret, m = _f32(values), _f32(old_values), _f32(returns), _mask(mask)
    plain = (v - ret) ** 2
    if clip_range is None:
        loss, frac = 0.5 * plain, torch.zeros(())
    else:
        v_clip = old + (v - old).clamp(-clip_range, clip_range)
        clipped = (v_clip - ret) ** 2
        loss = 0.5 * torch.maximum(plain, clipped)
        frac = masked_mean((clipped > plain).float().detach(), m)
    return loss, {"vf_clipfrac": frac, "vpred": masked_mean(v.detach(), m)}


def group_advantages(rewards: torch.Tensor, group_size: int, kind: GroupKind = "grpo",
                     eps: float = 1e-4) -> torch.Tensor:
    """One advantage per sequence from the rewards (B,) of groups of `group_size` consecutive samples of one
    prompt:

    - `grpo`: (r - group mean) / (group std + eps), the unbiased std (as TRL; a group whose rewards tie gets 0);
    - `dr_grpo`: r - group mean (Dr. GRPO drops the std, which over-weights near-tied groups);
    - `rloo`: r - mean of the other samples of the group = G / (G - 1) (r - group mean) (Ahmadian et al. 2024).
    """
    if kind not in GROUP_KINDS:
        raise ValueError(f"unknown group advantage {kind!r}; one of {', '.join(GROUP_KINDS)}")
    r = _f32(rewards)
    if group_size < 2 or r.numel() % group_size:
        raise ValueError(f"group advantages need groups of at least 2 that tile the batch; got {r.numel()} "
                         f"rewards in groups of {group_size}")
    g = r.view(-1, group_size)
    centred = g - g.mean(1, keepdim=True)
    if kind == "grpo":
        out = centred / (g.std(1, keepdim=True) + eps)
    elif kind == "dr_grpo":
        out = centred
    else:
        out = centred * group_size / (group_size - 1)
    return out.flatten()


def adaptive_kl_beta(beta: float, kl: float, target: float, horizon: float, n_steps: float) -> float:
    """Ziegler et al. (2019)'s proportional controller: the error clip(kl / target - 1, -0.2, 0.2) moves beta by
    the factor 1 + error x n_steps / horizon (n_steps: episodes in the batch just taken)."""
    if not math.isfinite(kl):
        return beta
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return beta * (1.0 + error * n_steps / horizon)
