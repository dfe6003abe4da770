"""Forward passes that compute logits only where a loss needs them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

IGNORE = -100
_NOT_MODEL_INPUTS = ("labels", "doc_ids")
CUSTOM_MASK_ATTENTION = ("sdpa", "eager")  # attention implementations that take a 4-D mask as it is given


def attention_implementation(model: torch.nn.Module) -> str:
    """The attention implementation a (possibly wrapped: DDP, peft) transformers model runs."""
    model = getattr(model, "module", model)
    return getattr(getattr(model, "config", None), "_attn_implementation", None) or "eager"


def takes_custom_mask(model: torch.nn.Module) -> bool:
    """Whether `model` attends through a 4-D mask it is given (`data.collate.shared_prompt_batch`): sdpa and
    eager do; flash attention and flex attention do not."""
    return attention_implementation(model) in CUSTOM_MASK_ATTENTION


def model_inputs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch's model inputs: without labels and doc_ids, and a 4-D boolean mask made additive (0 / the
    dtype's lowest) for eager attention, which adds its mask to the scores (sdpa takes booleans)."""
    inputs = {k: v for k, v in batch.items() if k not in _NOT_MODEL_INPUTS}
    mask = inputs.get("attention_mask")
    if mask is not None and mask.dim() == 4 and mask.dtype == torch.bool and attention_implementation(model) == "eager":
        dtype = next(model.parameters()).dtype
        inputs["attention_mask"] = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(dtype).min)
    return inputs


def target_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions t (1-D) whose next token labels[:, t+1] is trained in at least one row of the batch."""
    return (labels[:, 1:] != IGNORE).any(0).nonzero().squeeze(-1)


def response_logits(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the positions that predict trained tokens, and those tokens.

    batch: input_ids and labels (B, T), plus attention_mask or position_ids (B, T), or both with a 4-D
    attention_mask (`data.collate.shared_prompt_batch`).
    Returns logits (B, K, V) and targets (B, K), K = positions with a trained next token in any row.
    The output head runs on those K positions only (`logits_to_keep`), which skips the vocabulary
    projection for prompt tokens: most of the cost of a small model with a large vocabulary.
    """
    labels = batch["labels"]
    keep = target_positions(labels)
    inputs = model_inputs(model, batch)
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
    lay_out = _by_document(docs[trained], n_docs)
    out, mask = lay_out(lp)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            logz = torch.logsumexp(logits_t, -1)
            entropy = lay_out(logz - (logits_t.softmax(-1) * logits_t).sum(-1))[0]
    return out, mask, entropy


def _by_document(d: torch.Tensor, n_docs: int):
    """A function laying values (N,) of the trained positions, whose documents are `d` (N,) in row-major order,
    out as (n_docs, T) by document (token t = the document's t-th trained token), with the mask."""
    counts = torch.zeros(n_docs, dtype=torch.long, device=d.device).index_add(0, d, torch.ones_like(d))
    starts = counts.cumsum(0) - counts
    j = torch.arange(len(d), device=d.device) - starts[d]
    width = max(int(counts.max()) if n_docs else 0, 1)

    def lay_out(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.zeros(n_docs, width, dtype=torch.float32, device=x.device).index_put((d, j), x.float())
        mask = torch.zeros(n_docs, width, dtype=torch.bool, device=x.device).index_put(
            (d, j), torch.ones_like(x, dtype=torch.bool))
        return out, mask

    return lay_out


def token_values(backbone: torch.nn.Module, head: torch.nn.Module, batch: dict[str, torch.Tensor],
                 n_docs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A value model's estimate at every trained token of each document, laid out as `token_logps` lays out
    log-probs: (values (n_docs, T) float32, mask). The value of token t is read where token t is predicted (the
    position before it: the state the policy chose it in), `head(backbone(...).last_hidden_state)`; `backbone` is
    a sequence classifier's body (`model.base_model`) and `head` its `score` (or any hidden -> 1 module)."""
    labels = batch["labels"]
    keep = target_positions(labels)
    inputs = model_inputs(backbone, batch)
    hidden = backbone(**inputs, use_cache=False).last_hidden_state[:, keep]
    values = head(hidden).squeeze(-1)
    trained = labels[:, keep + 1] != IGNORE
    docs = batch["doc_ids"][:, keep + 1]
    return _by_document(docs[trained], n_docs)(values[trained])
