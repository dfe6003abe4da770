"""Offline preference losses: DPO (and cDPO), IPO, hinge, SimPO, ORPO, KTO, and a dispatcher.

Every function here is a pure function of tensors. Its inputs are per-example sequence log-probabilities
already reduced over the response tokens (SUMS over response tokens, never averages: a function that needs
an average takes the token counts `chosen_tokens` / `rejected_tokens` and divides itself). Its output is
`(losses (B,), metrics)`: one loss per example, and a dict of detached 0-d float32 tensors (batch means;
call `.item()` once per logged step, not per micro-batch). The metric names are TRL's.

All math runs in float32 whatever the input dtype, and no input is modified. Reducing the per-example
losses to the loss of one optimizer step is `example_mean`, with the global number of examples of that step
counted up front, so gradient accumulation and data parallelism cannot change it.

The formulas, the defaults people use, and where TRL 1.16 / open-instruct / OpenRLHF differ are in
`docs/preference-losses.md`.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F

Metrics = dict[str, torch.Tensor]
LOSSES = ("dpo", "cdpo", "ipo", "hinge", "simpo", "orpo")
_REFERENCE_BASED = ("dpo", "cdpo", "ipo", "hinge")
_LOG_HALF = -math.log(2.0)
# ORPO: log(1 - p) is taken at min(logp, -1e-6) so a sequence the model predicts with probability 1 (every
# token's log-prob exactly 0 in float32) gives log odds of about 13.8 instead of inf (and a NaN gradient).
_ORPO_MAX_LOGP = -1e-6


def _f32(x: torch.Tensor | float) -> torch.Tensor:
    return torch.as_tensor(x).float()


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.detach().float().mean()


def _pair_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                  chosen_logps: torch.Tensor, rejected_logps: torch.Tensor) -> Metrics:
    """TRL's six pairwise metrics, batch means, detached."""
    return {
        "rewards/chosen": _mean(chosen_rewards),
        "rewards/rejected": _mean(rejected_rewards),
        "rewards/accuracies": _mean((chosen_rewards > rejected_rewards).float()),
        "rewards/margins": _mean(chosen_rewards - rejected_rewards),
        "logps/chosen": _mean(chosen_logps),
        "logps/rejected": _mean(rejected_logps),
    }


def _per_token(logps: torch.Tensor, tokens: torch.Tensor | int) -> torch.Tensor:
    """Sum over response tokens (B,) -> average per response token (B,); a count of 0 divides by 1 (as TRL)."""
    return _f32(logps) / _f32(tokens).clamp(min=1.0)


def example_mean(losses: torch.Tensor, global_examples: int | torch.Tensor) -> torch.Tensor:
    """Reduce per-example losses (B,) to this micro-batch's share of the step's mean over examples.

    `global_examples` is the number of examples (pairs, or KTO completions) in the whole optimizer step, across
    accumulation and processes; summing the shares of every micro-batch gives the mean over the step.
    """
    return losses.sum() / global_examples


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, Metrics]:
    """DPO (sigmoid) loss, and cDPO when `label_smoothing` (eps) > 0.

    Inputs: (B,) log-probabilities SUMMED over response tokens, policy and reference.
    h = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected);
    loss = (1 - eps) * -logsigmoid(beta * h) + eps * -logsigmoid(-beta * h)   (eps = 0: DPO).

    TRL 1.16 silently ignores `label_smoothing` with its default `loss_type="sigmoid"`: in
    `trl/trainer/dpo_trainer.py` (`DPOTrainer._compute_loss`) the sigmoid branch is
    `-F.logsigmoid(self.beta * delta_score)` and `label_smoothing` is read only by the `exo_pair`, `robust`,
    `aot` and `aot_unpaired` branches, with no warning. Here it is applied.

    Returns (losses (B,), metrics): rewards = beta * (policy - reference) summed log-ratio, logps = policy sums.
    """
    pc, pr = _f32(policy_chosen_logps), _f32(policy_rejected_logps)
    rc, rr = _f32(reference_chosen_logps), _f32(reference_rejected_logps)
    chosen_ratio, rejected_ratio = pc - rc, pr - rr
    z = beta * (chosen_ratio - rejected_ratio)
    losses = -F.logsigmoid(z)
    if label_smoothing:
        losses = (1.0 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-z)
    return losses, _pair_metrics(beta * chosen_ratio, beta * rejected_ratio, pc, pr)


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    chosen_tokens: torch.Tensor | int,
    rejected_tokens: torch.Tensor | int,
    *,
    beta: float,
) -> tuple[torch.Tensor, Metrics]:
    """IPO loss (Azar et al. 2023, Eq. 17, with beta = tau): (h - 1 / (2 * beta))^2.

    Inputs: (B,) log-probabilities SUMMED over response tokens and the response token counts (B,) (or ints).
    h uses log-ratios AVERAGED over response tokens, as TRL 1.16 does (`DPOTrainer._compute_loss`, `ipo`
    branch, whose comment says the IPO authors confirmed the normalised form):
    h = (policy_chosen - reference_chosen) / chosen_tokens - (policy_rejected - reference_rejected) / rejected_tokens.

    Returns (losses (B,), metrics). As in TRL, the metrics use the summed log-ratios
    (rewards = beta * (policy - reference) sums) and the policy sums.
    """
    pc, pr = _f32(policy_chosen_logps), _f32(policy_rejected_logps)
    rc, rr = _f32(reference_chosen_logps), _f32(reference_rejected_logps)
    h = _per_token(pc - rc, chosen_tokens) - _per_token(pr - rr, rejected_tokens)
    losses = (h - 1.0 / (2.0 * beta)) ** 2
    return losses, _pair_metrics(beta * (pc - rc), beta * (pr - rr), pc, pr)


def hinge_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    *,
    beta: float,
) -> tuple[torch.Tensor, Metrics]:
    """Hinge (SLiC / RSO) loss: relu(1 - beta * h), h as in `dpo_loss` (log-probs SUMMED over response tokens).

    Returns (losses (B,), metrics): rewards = beta * (policy - reference) summed log-ratio, logps = policy sums.
    """
    pc, pr = _f32(policy_chosen_logps), _f32(policy_rejected_logps)
    rc, rr = _f32(reference_chosen_logps), _f32(reference_rejected_logps)
    losses = torch.relu(1.0 - beta * ((pc - rc) - (pr - rr)))
    return losses, _pair_metrics(beta * (pc - rc), beta * (pr - rr), pc, pr)


def simpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    chosen_tokens: torch.Tensor | int,
    rejected_tokens: torch.Tensor | int,
    *,
    beta: float,
    gamma: float,
) -> tuple[torch.Tensor, Metrics]:
    """SimPO loss (Meng et al. 2024): -logsigmoid(beta * (a_chosen - a_rejected) - gamma); no reference model.

    Inputs: (B,) policy log-probabilities SUMMED over response tokens and the response token counts (B,);
    a = sum / tokens is the length-normalised log-probability. `gamma` is the absolute target margin (TRL's
    `simpo_gamma`); the SimPO repository and open-instruct configure `gamma_beta_ratio` = gamma / beta instead.
    No SFT term: TRL's CPOTrainer adds `cpo_alpha` (default 1.0) times an NLL unless `cpo_alpha=0`.

    Returns (losses (B,), metrics): rewards = beta * a (the implicit reward TRL's CPO/SimPO logs), logps = a.
    """
    a_c, a_r = _per_token(policy_chosen_logps, chosen_tokens), _per_token(policy_rejected_logps, rejected_tokens)
    losses = -F.logsigmoid(beta * (a_c - a_r) - gamma)
    return losses, _pair_metrics(beta * a_c, beta * a_r, a_c, a_r)


def log_odds(avg_logps: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)) of p = exp(avg_logps) (B,), computed as logp - log1mexp(logp) without cancellation.

    log1mexp(x) = log(1 - e^x) is log(-expm1(x)) for x > -log 2 and log1p(-exp(x)) below; x is capped at -1e-6
    inside log1mexp only, so p = 1 gives a large finite value and the gradient through `logp` itself is kept.
    """
    x = avg_logps.float()
    capped = x.clamp(max=_ORPO_MAX_LOGP)
    log1mexp = torch.where(capped > _LOG_HALF, torch.log(-torch.expm1(capped)), torch.log1p(-torch.exp(capped)))
    return x - log1mexp


def orpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    chosen_tokens: torch.Tensor | int,
    rejected_tokens: torch.Tensor | int,
    *,
    lam: float,
) -> tuple[torch.Tensor, Metrics]:
    """ORPO loss (Hong et al. 2024): -a_chosen + lam * -logsigmoid(log odds(y_c) - log odds(y_r)); no reference.

    Inputs: (B,) policy log-probabilities SUMMED over response tokens and the response token counts (B,).
    a = sum / tokens; odds(y) = p / (1 - p) with p = exp(a), the per-token average probability of the paper
    (geometric mean). The NLL term is -a_chosen: the chosen response's mean NLL per response token, one per
    pair (TRL's ORPOTrainer instead takes one token mean over the whole batch, prompt tokens included).
    `lam` is the paper's lambda (TRL's `beta`, the official code's `alpha`).

    Returns (losses (B,), metrics): rewards = lam * a (TRL's ORPO), logps = a, plus TRL's `nll_loss`,
    `log_odds_ratio` (mean of logsigmoid(log odds ratio)) and `log_odds_chosen` (mean log odds ratio).
    """
    a_c, a_r = _per_token(policy_chosen_logps, chosen_tokens), _per_token(policy_rejected_logps, rejected_tokens)
    ratio = log_odds(a_c) - log_odds(a_r)
    log_sig = F.logsigmoid(ratio)
    losses = -a_c - lam * log_sig
    metrics = _pair_metrics(lam * a_c, lam * a_r, a_c, a_r)
    metrics.update({"nll_loss": _mean(-a_c), "log_odds_ratio": _mean(log_sig), "log_odds_chosen": _mean(ratio)})
    return losses, metrics


def with_nll(
    losses: torch.Tensor,
    metrics: Metrics,
    policy_chosen_logps: torch.Tensor,
    chosen_tokens: torch.Tensor | int,
    *,
    alpha: float,
) -> tuple[torch.Tensor, Metrics]:
    """A pairwise loss plus alpha x the chosen response's NLL (RPO: Pang et al. 2024, "Iterative Reasoning
    Preference Optimization"; Liu et al. 2024): losses + alpha * -(sum / tokens) of the chosen side, one mean
    NLL per response token per pair, so the step's loss is still a mean over pairs (`example_mean`). It keeps the
    chosen responses likely while the margin grows, where the pairwise term alone can lower both sides.
    TRL 1.16 (`loss_type=["sigmoid", "sft"]`, `loss_weights=[1, alpha]`) takes one token mean over the whole
    batch's chosen tokens instead (longer responses weigh more). Adds TRL's metric `nll_loss`."""
    nll = -_per_token(policy_chosen_logps, chosen_tokens)
    return losses + alpha * nll, {**metrics, "nll_loss": _mean(nll)}


def kto_reference_point(kl_policy_logps: torch.Tensor, kl_reference_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z0: mean over mismatched (prompt, completion) pairs (M,) of the summed log-ratio
    policy - reference, clamped at 0 and detached (no gradient flows through it), a 0-d float32 tensor."""
    return (_f32(kl_policy_logps) - _f32(kl_reference_logps)).mean().clamp(min=0.0).detach()


def kto_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl_policy_logps: torch.Tensor,
    kl_reference_logps: torch.Tensor,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, Metrics]:
    """KTO loss (Ethayarajh et al. 2024) on unpaired examples.

    Inputs: policy_logps, reference_logps (B,) SUMMED over response tokens; desirable (B,) bool;
    kl_policy_logps, kl_reference_logps (M,) summed log-probs of mismatched pairs (each prompt with another
    example's completion; TRL rotates completions by one within the batch) for z0 = `kto_reference_point`.
    r = policy - reference; desirable: w_D * (1 - sigmoid(beta * (r - z0)));
    undesirable: w_U * (1 - sigmoid(beta * (z0 - r))).

    z0 is this call's estimate. TRL 1.16 averages it over processes before clamping; a data-parallel recipe
    that wants the same must do that reduction itself.

    Returns (losses (B,) in input order, metrics): `kl` (z0), and for each group present `rewards/chosen`
    (mean beta * r over desirable), `logps/chosen`, `rewards/rejected`, `logps/rejected` (undesirable), and
    `rewards/margins` when both are present. TRL's KTO logs no accuracies.
    """
    p, ref = _f32(policy_logps), _f32(reference_logps)
    desirable = torch.as_tensor(desirable, dtype=torch.bool, device=p.device)
    z0 = kto_reference_point(kl_policy_logps, kl_reference_logps)
    r = p - ref
    losses = torch.where(desirable,
                         desirable_weight * torch.sigmoid(-beta * (r - z0)),
                         undesirable_weight * torch.sigmoid(-beta * (z0 - r)))
    metrics: Metrics = {"kl": z0}
    for name, mask in (("chosen", desirable), ("rejected", ~desirable)):
        if bool(mask.any()):
            metrics[f"rewards/{name}"] = _mean(beta * r[mask])
            metrics[f"logps/{name}"] = _mean(p[mask])
    if "rewards/chosen" in metrics and "rewards/rejected" in metrics:
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return losses, metrics


def needs_reference(name: str) -> bool:
    """Whether loss `name` (one of LOSSES) needs reference-model log-probabilities."""
    if name not in LOSSES:
        raise ValueError(f"unknown preference loss {name!r}; expected one of {', '.join(LOSSES)}")
    return name in _REFERENCE_BASED


def preference_loss(name: str, **kwargs) -> tuple[torch.Tensor, Metrics]:
    """Run the pairwise loss `name` (one of LOSSES) on keyword tensors and parameters.

    `chosen_tokens` / `rejected_tokens` are facts about the batch and are dropped for the losses that use sums
    (dpo, cdpo, hinge); any other argument the loss does not take raises ValueError, so a setting is never
    silently ignored. `dpo` refuses a non-zero `label_smoothing` and `cdpo` requires one.
    """
    needs_reference(name)  # unknown names raise here
    match name:
        case "dpo":
            if kwargs.get("label_smoothing", 0.0):
                raise ValueError("loss 'dpo' takes no label_smoothing; use 'cdpo'")
            fn = dpo_loss
        case "cdpo":
            if not kwargs.get("label_smoothing"):
                raise ValueError("loss 'cdpo' needs label_smoothing > 0")
            fn = dpo_loss
        case "ipo":
            fn = ipo_loss
        case "hinge":
            fn = hinge_loss
        case "simpo":
            fn = simpo_loss
        case "orpo":
            fn = orpo_loss
    params = inspect.signature(fn).parameters
    if "chosen_tokens" not in params:
        kwargs = {k: v for k, v in kwargs.items() if k not in ("chosen_tokens", "rejected_tokens")}
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ValueError(f"loss {name!r} does not take {', '.join(unknown)}")
    return fn(**kwargs)
