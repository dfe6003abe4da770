"""Reward-model loss: Bradley-Terry on pairs of scalar rewards.

A pure function of tensors: rewards in, per-pair losses and detached metrics out. Reduce the losses of one
optimizer step with `posttrain.losses.preference.example_mean` and the global number of pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    margin: torch.Tensor | float | None = None,
    center_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair Bradley-Terry loss: -logsigmoid(r_chosen - r_rejected - margin) + center_coef * (r_chosen + r_rejected)^2.

    r_chosen, r_rejected: (B,) scalar rewards of the chosen and rejected responses; margin: (B,) or a scalar
    (None: 0), the dataset's required gap; center_coef: TRL's `center_rewards_coefficient` (Eisenstein et al.
    2023, Eq. 2; TRL recommends 0.01, default off), which pulls the rewards towards mean zero. TRL 1.16
    (`RewardTrainer.compute_loss`) adds `center_rewards_coefficient * mean((r_c + r_r)^2)` to the batch mean,
    which is the batch mean of these per-pair losses. Math in float32.

    Returns (losses (B,), metrics of detached 0-d float32 tensors, TRL's names): `accuracy` (share of pairs with
    r_chosen > r_rejected), `margin` (mean r_chosen - r_rejected, without the dataset margin), `mean_reward`,
    `min_reward`, `max_reward` (over both responses).
    """
    rc, rr = r_chosen.float(), r_rejected.float()
    diff = rc - rr
    if margin is not None:
        diff = diff - torch.as_tensor(margin, device=rc.device).float()
    losses = -F.logsigmoid(diff)
    if center_coef:
        losses = losses + center_coef * (rc + rr) ** 2
    both = torch.cat([rc, rr]).detach()
    metrics = {
        "accuracy": (rc > rr).float().mean().detach(),
        "margin": (rc - rr).mean().detach(),
        "mean_reward": both.mean(),
        "min_reward": both.min(),
        "max_reward": both.max(),
    }
    return losses, metrics
