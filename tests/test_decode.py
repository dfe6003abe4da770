"""posttrain's decode loop (rollout/decode.py) against `transformers`' `model.generate` on every tiny architecture:
the same greedy tokens (rows that stop early leave the batch or hand their slot to the next prompt, the cache
compacted or not), log-probs equal to a plain forward pass of the finished sequences (sampled, top-p, a prompt
repeated for n samples sharing its prefill), top-p equal to `TopPLogitsWarper`, the inverse-CDF sampler drawing
the softmax's frequencies, and samples that depend on neither the batch size, nor compaction, nor the path
(preallocated slots or the model's own forward).

Seeded random-init tiny models (hidden 32, 2 layers) with the session's BPE tokenizer; nothing is downloaded.
"""

from __future__ import annotations

import pytest
import torch
from transformers import TopPLogitsWarper

from posttrain.models.tiny import ARCHS, tiny_model
from posttrain.rollout import decode as D

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"llama": True, "qwen2": True, "mistral": True, "gpt2": False, "gpt_neox": False}


@pytest.fixture(scope="module")
def models(tok):
    return {arch: tiny_model(arch, tok, seed=0, hidden=32, layers=2, heads=4).eval() for arch in ARCHS}


def prompts_of(tok) -> list[list[int]]:
    texts = ["hi", "What is 2 + 3?", "Reverse the word stone, then list three words that rhyme with it.", "ok",
             "List 2 words."]
    return [tok(t).input_ids for t in texts]


def hf_greedy(model, prompts, pad_id, stop_ids, max_new):
    """`model.generate` greedy on the left-padded batch: each row's new tokens up to and with its stop token."""
    ids, mask = D._left_padded(prompts, pad_id, "cpu")
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                         eos_token_id=stop_ids, pad_token_id=pad_id, top_k=None, top_p=None, temperature=None)
    rows = []
    for row in out[:, ids.shape[1]:].tolist():
        cut = next((j for j, t in enumerate(row) if t in stop_ids), None)
        rows.append(row if cut is None else row[:cut + 1])
    return rows


def early_stops(model, prompts, pad_id, max_new) -> list[int]:
    """Stop tokens that end the rows at different steps: tokens the model emits greedily, chosen from the rows'
    continuations without stops (a random model seldom emits its EOS)."""
    free = hf_greedy(model, prompts, pad_id, [10**9], max_new)
    picks = {row[min(2 + 3 * i, len(row) - 1)] for i, row in enumerate(free[:3])}
    return sorted(picks)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("compact,batch_size", [(0.0, None), (1.0, None), (0.0, 2)])
def test_greedy_equals_generate(models, tok, arch, compact, batch_size, monkeypatch):
    model, prompts, pad = models[arch], prompts_of(tok), tok.pad_token_id
    assert D.fast_path(model, 64) is FAST[arch]
    stops = early_stops(model, prompts, pad, 12)
    monkeypatch.setattr(D, "COMPACT_BELOW", compact)       # 1.0: compact whenever a row stops; 0.0: never
    ours = D.decode(model, prompts, pad, stops, 12, batch_size=batch_size)   # 2: slots refilled as rows stop
    ref = hf_greedy(model, prompts, pad, stops, 12)
    assert [r.tokens for r in ours] == ref
    assert [r.stopped for r in ours] == [row[-1] in stops for row in ref]
    assert len({len(r) for r in ref}) > 1                   # rows really did end at different steps


def forward_logprobs(model, prompt: list[int], tokens: list[int]) -> list[float]:
    ids = torch.tensor([prompt + tokens])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(tokens)[:, None])[:, 0].tolist()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_sampled_logprobs_equal_a_plain_forward_pass(models, tok, arch, top_p):
    model, pad = models[arch], tok.pad_token_id
    prompts = [p for p in prompts_of(tok) for _ in range(3)]        # n = 3: each prompt's rows share one prefill
    stops = early_stops(model, prompts_of(tok), pad, 10)
    rows = D.decode(model, prompts, pad, stops, 10, temperature=1.0, top_p=top_p, seeds=range(100, 115),
                    logprobs=True, batch_size=4)
    with torch.no_grad():
        for p, r in zip(prompts, rows):
            assert r.logprobs == pytest.approx(forward_logprobs(model, p, r.tokens), abs=1e-5)
    assert len({tuple(r.tokens) for r in rows}) > len(prompts_of(tok))   # the repeats sampled differently


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_samples_depend_on_neither_batch_size_nor_compaction_nor_path(models, tok, arch, monkeypatch):
    model, pad = models[arch], tok.pad_token_id
    prompts = prompts_of(tok) * 2
    stops = early_stops(model, prompts_of(tok), pad, 10)
    runs = []
    for compact, batch_size, fast in [(0.0, None, True), (1.0, None, True), (0.0, 3, True), (1.0, 1, True),
                                      (0.0, 4, False), (1.0, None, False)]:
        monkeypatch.setattr(D, "COMPACT_BELOW", compact)
        monkeypatch.setattr(D, "_FAST_TYPES", D._FAST_TYPES if fast else ())
        rows = D.decode(model, prompts, pad, stops, 10, temperature=1.5, seeds=range(7, 17), batch_size=batch_size)
        runs.append([(r.tokens, r.stopped) for r in rows])
    assert all(run == runs[0] for run in runs[1:])
    assert runs[0][:5] != runs[0][5:]                               # the same prompts, other seeds: other samples
    again = D.decode(model, prompts, pad, stops, 10, temperature=1.5, seeds=range(7, 17))
    assert [(r.tokens, r.stopped) for r in again] == runs[0]


def test_top_p_filter_equals_transformers():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=g) * 3
    for p in (0.1, 0.5, 0.9, 0.999):
        ours = D.top_p_filter(logits, p)
        ref = TopPLogitsWarper(top_p=p)(None, logits.clone())
        assert torch.equal(torch.isinf(ours), torch.isinf(ref))
        assert torch.equal(ours[~torch.isinf(ours)], logits[~torch.isinf(ref)])
    assert D.top_p_filter(logits, 1.0) is logits


def test_inverse_cdf_sampler_draws_the_softmax():
    logits = torch.tensor([[2.0, 0.0, -1.0, 1.0, -9.0]]).repeat(4000, 1)
    probs = torch.softmax(logits[0] / 0.7, -1)
    sampler = D._Sampler(0.7, 1.0, False, 5)
    u = sampler.uniforms(range(4000))                               # (4000 rows, 5 tokens)
    counts = sum(torch.bincount(sampler(logits, u[:, t])[0], minlength=5) for t in range(5))
    freq = counts / counts.sum()
    assert torch.allclose(freq, probs, atol=0.01)                  # 20k draws: standard error <= 0.0035
    top = D._Sampler(1.0, 0.5, False, 5)(logits, u[:, 0])[0]
    assert set(top.tolist()) == {0}                                 # top-p 0.5 keeps the 0.61 token alone


def test_empty_prompt_is_refused(models, tok):
    with pytest.raises(ValueError, match="at least one token"):
        D.decode(models["llama"], [[5], []], tok.pad_token_id, [2], 4)
