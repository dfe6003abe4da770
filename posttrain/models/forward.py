"""Forward passes that compute logits only where a loss needs them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

IGNORE = -100
_NOT_MODEL_INPUTS = ("labels", "doc_ids")


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
    inputs = {k: v for k, v in batch.items() if k not in _NOT_MODEL_INPUTS}
    try:
        logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits
    except TypeError:  # a model without logits_to_keep: full logits, then select
        logits = model(**inputs, use_cache=False).logits[:, keep]
    return logits, labels[:, keep + 1]


def sequence_logps(model: PreTrainedModel, batch: dict[str, torch.Tensor], n_docs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each document's summed log-probability of its trained tokens, and how many there are.

    batch: as `response_logits` takes it, plus doc_ids (B, T): the document of each position (-1 on padding;
    `data.collate.packed_batch(..., doc_ids=True)`), numbered 0 .. n_docs - 1. The target at position t + 1 is
    counted for the document of that target. Returns (n_docs,) float32 sums and (n_docs,) token counts: the
    sequence log-probabilities that DPO and its family compare (`losses.preference`). The output head runs only
    where a trained token is predicted.
    """
    logits, targets = response_logits(model, batch)
    docs = batch["doc_ids"][:, target_positions(batch["labels"]) + 1]
    logp = -F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                            reduction="none").view(targets.shape)
    trained = targets != IGNORE
    sums = torch.zeros(n_docs, dtype=torch.float32, device=logp.device).index_add(0, docs[trained], logp[trained])
    counts = torch.zeros(n_docs, dtype=torch.long, device=logp.device).index_add(
        0, docs[trained], torch.ones_like(docs[trained]))
    return sums, counts


def token_logps(model: PreTrainedModel, batch: dict[str, torch.Tensor], n_docs: int,
                with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Each document's per-token log-probabilities of its trained tokens, laid out (n_docs, T) with T the most
    trained tokens of any document: what PPO and GRPO ratios and KL penalties are computed on.

    batch: as `sequence_logps` takes it (input_ids, labels, doc_ids and position_ids or attention_mask; a document
    lies within one row, documents numbered row by row). Returns (logps (n_docs, T) float32, mask (n_docs, T) bool:
    token t of document d is trained, entropy (n_docs, T) of the model's next-token distribution there, or None).
    Token t of a document is its t-th trained token in order; positions past a document's tokens are 0 and masked.
    """
    logits, targets = response_logits(model, batch)
    docs = batch["doc_ids"][:, target_positions(batch["labels"]) + 1]
    trained = targets != IGNORE
    logits_t = logits[trained].float()                                   # (N, V): row-major, so by document
    lp = -F.cross_entropy(logits_t, targets[trained], reduction="none")
    d = docs[trained]
    counts = torch.zeros(n_docs, dtype=torch.long, device=lp.device).index_add(0, d, torch.ones_like(d))
    starts = counts.cumsum(0) - counts
    j = torch.arange(len(d), device=lp.device) - starts[d]
    width = max(int(counts.max()) if n_docs else 0, 1)
    out = torch.zeros(n_docs, width, dtype=torch.float32, device=lp.device).index_put((d, j), lp)
    mask = torch.zeros(n_docs, width, dtype=torch.bool, device=lp.device).index_put(
        (d, j), torch.ones_like(lp, dtype=torch.bool))
    entropy = None
    if with_entropy:
        with torch.no_grad():
            logz = torch.logsumexp(logits_t, -1)
            ent = logz - (logits_t.softmax(-1) * logits_t).sum(-1)
            entropy = torch.zeros(n_docs, width, device=lp.device).index_put((d, j), ent)
    return out, mask, entropy
