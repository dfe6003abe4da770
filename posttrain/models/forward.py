"""Forward passes that compute logits only where a loss needs them."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

IGNORE = -100


def target_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions t (1-D) whose next token labels[:, t+1] is trained in at least one row of the batch."""
    return (labels[:, 1:] != IGNORE).any(0).nonzero().squeeze(-1)


def response_logits(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the positions that predict trained tokens, and those tokens.

    batch: input_ids and labels (B, T), plus attention_mask or position_ids (B, T).
    Returns logits (B, K, V) and targets (B, K), K = positions with a trained next token in any row.
    The output head runs on those K positions only (`logits_to_keep`), which skips the vocabulary
    projection for prompt tokens: most of the cost of a small model with a large vocabulary.
    """
    labels = batch["labels"]
    keep = target_positions(labels)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    try:
        logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits
    except TypeError:  # a model without logits_to_keep: full logits, then select
        logits = model(**inputs, use_cache=False).logits[:, keep]
    return logits, labels[:, keep + 1]
