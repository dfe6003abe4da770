"""Supervised fine-tuning loss: masked next-token cross-entropy, normalised by trained tokens.

The loss of one optimizer step is `sum of token NLLs over the whole global batch / trained tokens in
the whole global batch`. `nll_sum` gives the numerator of one micro-batch; `token_mean` divides by the
global count that the caller computes once per step, so gradient accumulation and data parallelism
give exactly the loss and gradients of one big batch (a per-micro-batch mean would weight short
micro-batches more).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def nll_sum(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood of the targets.

    logits: (B, K, V) scores for K positions; targets: (B, K) token ids, -100 where not trained.
    Returns (per-example NLL sum (B,), per-example trained-token count (B,)), computed in float32.
    """
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="none")
    nll = nll.view(targets.shape)
    return nll.sum(-1), (targets != IGNORE).sum(-1)


def token_mean(nll_sums: torch.Tensor, global_tokens: int | torch.Tensor) -> torch.Tensor:
    """Reduce per-example NLL sums (B,) to this micro-batch's share of the global token mean."""
    return nll_sums.sum() / global_tokens
