"""How far a policy has moved from a reference: KL(policy || reference) over whole responses, estimated from the
policy's own samples.

For each prompt the policy samples one response at temperature 1 (`rollout.generate`, which returns the sampled
tokens' log-probs under the policy); the reference scores the same tokens (`models.forward.token_logps` on the
packed sequences). The estimate is the mean over prompts of sum_t (log pi(y_t) - log ref(y_t)): the k1 estimator
of the sequence-level KL, unbiased (its terms can be negative; their mean cannot be, in expectation). It is what
the gold-against-KL chart of the report puts on its x axis, beside best-of-n's analytic log n - (n - 1) / n.
"""

from __future__ import annotations

import torch

from posttrain.eval.stats import bootstrap_ci
from posttrain.models.forward import token_logps
from posttrain.rollout.generate import generate, samples_batch


@torch.no_grad()
def reference_logps(reference, samples: list[dict], pad_id: int, micro: int = 32) -> list[float]:
    """Each sample's summed log-prob of its `token_ids` after its `prompt_ids` under `reference`."""
    was = reference.training
    reference.eval()
    device = next(reference.parameters()).device
    out = [0.0] * len(samples)
    for start in range(0, len(samples), micro):
        batch, order = samples_batch(samples, list(range(start, min(start + micro, len(samples)))), pad_id)
        lp, mask, _ = token_logps(reference, {k: v.to(device) for k, v in batch.items()}, len(order))
        for i, total in zip(order, (lp * mask).sum(1).tolist()):
            out[i] = total
    reference.train(was)
    return out


def kl_to_reference(policy, reference, tokenizer, prompts: list, max_new_tokens: int = 128, seed: int = 0,
                    batch_size: int = 32) -> dict:
    """{"kl": mean sequence KL in nats, "kl_ci": 95% bootstrap interval over prompts, "prompts": n,
    "mean_length": mean sampled tokens} (see the module docstring)."""
    samples = generate(policy, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=1.0, seed=seed,
                       batch_size=batch_size, return_logprobs=True)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ref = reference_logps(reference, samples, pad_id)
    per = [sum(s["logprobs"]) - r for s, r in zip(samples, ref)]
    return {"kl": sum(per) / len(per), "kl_ci": bootstrap_ci(per), "prompts": len(per),
            "mean_length": sum(len(s["token_ids"]) for s in samples) / len(samples)}
