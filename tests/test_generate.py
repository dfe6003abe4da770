"""Sampling: greedy is deterministic and batch-independent, stop tokens end a response, raw prompts skip
the chat template, seeded sampling repeats, n samples per prompt, log-probs equal a plain forward pass,
bad arguments are user errors, and the `posttrain generate --json` command line.

A tiny seeded random-init Llama (hidden 32, 2 layers) with a BPE tokenizer trained here; nothing is
downloaded.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from posttrain.data.render import Renderer
from posttrain.data.types import Message
from posttrain.errors import UserError
from posttrain.models.tiny import tiny_model
from posttrain.models.tokenizer import train_tokenizer
from posttrain.rollout.generate import generate

NAMES = ["ada", "bob", "cy", "dee", "eve", "fay", "gus", "hal"]
THINGS = ["apples", "books", "cats", "dogs", "eggs", "figs", "hats", "keys"]
PROMPTS = ["hi", "how many cats does ada have?",
           "bob has 3 figs and 4 hats, not keys. how many eggs does eve have?"]


# --- builders ------------------------------------------------------------------------------------


def make_tokenizer():
    """A ~300-token BPE tokenizer trained on a few hundred short chat strings."""
    texts = [f"how many {t} does {n} have?" for n in NAMES for t in THINGS]
    texts += [f"{n} has {i + j} {t}." for i, n in enumerate(NAMES) for j, t in enumerate(THINGS)]
    texts += [f"{n} likes {t}, not {u}." for n in NAMES for t in THINGS for u in THINGS[:3]] + ["hi", "hello"]
    return train_tokenizer(texts, vocab_size=400)


def make_model(tok, seed: int = 0):
    return tiny_model("llama", tok, seed=seed, hidden=32, layers=2, heads=4).eval()


def bias_head(model, bias: dict[int, float]) -> None:
    """An output head with zero weight: the logits are the bias (0 except `bias`) at every position, whatever
    the prompt."""
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        for token_id, value in bias.items():
            head.bias[token_id] = value
    model.lm_head = head


def force_token(model, token_id: int) -> None:
    """Make `token_id` the argmax at every position: a one-hot bias of 10."""
    bias_head(model, {token_id: 10.0})


CORE = ("text", "ids", "stopped")


def core(rows: list[dict]) -> list[dict]:
    """The keys `generate` has always returned."""
    return [{k: r[k] for k in CORE} for r in rows]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gen_tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def gen_model(gen_tok):
    return make_model(gen_tok)


# --- greedy --------------------------------------------------------------------------------------


def test_greedy_is_deterministic_and_batched_equals_one_at_a_time(gen_model, gen_tok):
    batched = generate(gen_model, gen_tok, PROMPTS, max_new_tokens=8, batch_size=3)
    again = generate(gen_model, gen_tok, PROMPTS, max_new_tokens=8, batch_size=3)
    single = [generate(gen_model, gen_tok, [p], max_new_tokens=8, batch_size=1)[0] for p in PROMPTS]
    assert [r["ids"] for r in batched] == [r["ids"] for r in again]
    assert [r["ids"] for r in batched] == [r["ids"] for r in single]
    assert [r["text"] for r in batched] == [r["text"] for r in single]
    assert [r["stopped"] for r in batched] == [r["stopped"] for r in single]
    assert any(r["ids"] for r in batched)
    # the prompts have different lengths, so the batch really was left-padded
    assert len({len(gen_tok(p).input_ids) for p in PROMPTS}) == 3
    # greedy ignores the seed
    assert generate(gen_model, gen_tok, PROMPTS, max_new_tokens=8, seed=123) == batched


def test_message_lists_and_strings_are_the_same_prompt(gen_model, gen_tok):
    as_text = generate(gen_model, gen_tok, ["hi"], max_new_tokens=4)
    as_msgs = generate(gen_model, gen_tok, [[Message("user", "hi")]], max_new_tokens=4)
    assert as_text == as_msgs


# --- stopping ------------------------------------------------------------------------------------


def test_generation_stops_at_the_stop_token(gen_tok):
    model = make_model(gen_tok)
    force_token(model, gen_tok.eos_token_id)
    out = generate(model, gen_tok, PROMPTS, max_new_tokens=5)
    assert core(out) == [{"text": "", "ids": [], "stopped": True}] * 3
    assert [r["token_ids"] for r in out] == [[gen_tok.eos_token_id]] * 3


def test_generation_without_a_stop_token_runs_to_max_new_tokens(gen_tok):
    """A head that always says 'a': five 'a' tokens, not stopped."""
    model = make_model(gen_tok)
    (a,) = gen_tok("a", add_special_tokens=False).input_ids
    force_token(model, a)
    out = generate(model, gen_tok, PROMPTS[:2], max_new_tokens=5)
    assert core(out) == [{"text": "aaaaa", "ids": [a] * 5, "stopped": False}] * 2
    assert [r["token_ids"] for r in out] == [[a] * 5] * 2


def test_the_templates_space_before_a_response_is_not_part_of_it(gen_tok):
    """posttrain's template writes "A: {content}": a model that says " a a" answered "a a" in chat, and " a a"
    when prompted raw (no template, nothing to remove)."""
    model = make_model(gen_tok)
    (space_a,) = gen_tok(" a", add_special_tokens=False).input_ids  # one token, "Ġa"
    force_token(model, space_a)
    assert generate(model, gen_tok, PROMPTS[:1], max_new_tokens=2)[0]["text"] == "a a"
    assert generate(model, gen_tok, PROMPTS[:1], max_new_tokens=2, raw=True)[0]["text"] == " a a"


# --- prompts -------------------------------------------------------------------------------------


def _prompt_ids(model, tok, monkeypatch, prompts, **kw) -> list[list[int]]:
    """The (unpadded) input ids `generate` hands to the decode loop, and (engine="hf") to `model.generate`."""
    import posttrain.rollout.generate as gen_module

    seen, seen_hf = [], []
    real, real_hf = gen_module.decode, model.generate

    def spy(model, prompts, *args, **kwargs):
        seen.extend(list(p) for p in prompts)
        return real(model, prompts, *args, **kwargs)

    def spy_hf(**kwargs):
        for ids, mask in zip(kwargs["input_ids"].tolist(), kwargs["attention_mask"].tolist()):
            seen_hf.append([t for t, m in zip(ids, mask) if m])
        return real_hf(**kwargs)

    monkeypatch.setattr(gen_module, "decode", spy)
    monkeypatch.setattr(model, "generate", spy_hf)
    generate(model, tok, prompts, max_new_tokens=2, **kw)
    generate(model, tok, prompts, max_new_tokens=2, engine="hf", **kw)
    assert seen == seen_hf
    return seen


def test_raw_feeds_plain_text_and_chat_applies_the_template(gen_model, gen_tok, monkeypatch):
    text = "how many cats does ada have?"
    plain = gen_tok(text, add_special_tokens=False).input_ids
    assert gen_tok(text).input_ids == plain  # this tokenizer adds no BOS on its own
    assert _prompt_ids(gen_model, gen_tok, monkeypatch, [text], raw=True) == [plain]
    special = gen_tok.convert_tokens_to_ids(["<|bos|>", "<|user|>", "<|end|>", "<|assistant|>"])
    bos, user, end, assistant = special
    q, a = (gen_tok(s, add_special_tokens=False).input_ids for s in ("Q: ", "A:"))
    # posttrain's template: <|bos|><|user|>Q: TEXT<|end|><|assistant|>A:
    chat = gen_tok("Q: " + text, add_special_tokens=False).input_ids
    assert chat[: len(q)] == q
    assert _prompt_ids(gen_model, gen_tok, monkeypatch, [text]) == [[bos, user, *chat, end, assistant, *a]]


# --- sampling ------------------------------------------------------------------------------------


def test_sampling_repeats_with_a_seed_and_varies_across_seeds(gen_model, gen_tok):
    prompts = PROMPTS + ["how many dogs does hal have?"]
    first = generate(gen_model, gen_tok, prompts, max_new_tokens=8, temperature=1.0, seed=1)
    second = generate(gen_model, gen_tok, prompts, max_new_tokens=8, temperature=1.0, seed=1)
    other = generate(gen_model, gen_tok, prompts, max_new_tokens=8, temperature=1.0, seed=2)
    assert first == second
    # a near-uniform random model over ~300 tokens: two seeds agreeing on all 4 x 8 tokens is ~impossible
    assert [r["ids"] for r in first] != [r["ids"] for r in other]
    greedy = generate(gen_model, gen_tok, prompts, max_new_tokens=8)
    assert [r["ids"] for r in first] != [r["ids"] for r in greedy]


# --- n samples, log-probs ------------------------------------------------------------------------


def forward_logprobs(model, prompt_ids: list[int], token_ids: list[int], temperature: float = 1.0) -> list[float]:
    """Reference: one unpadded sequence `prompt_ids + token_ids` (1, T) through a plain forward pass; the
    log-softmax of logits / temperature at the positions that predict `token_ids`."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids + token_ids])).logits[0].float()  # (T, V)
    p = len(prompt_ids)
    lp = torch.log_softmax(logits[p - 1 : p - 1 + len(token_ids)] / temperature, dim=-1)
    return lp.gather(1, torch.tensor(token_ids)[:, None])[:, 0].tolist()


def max_diff(rows: list[dict], reference: list[list[float]]) -> float:
    return max(abs(a - b) for r, ref in zip(rows, reference) for a, b in zip(r["logprobs"], ref, strict=True))


@pytest.mark.parametrize("temperature, top_p, n", [(0.7, 0.9, 2), (0.0, 1.0, 1)], ids=["sampled", "greedy"])
def test_logprobs_equal_a_plain_forward_pass(gen_model, gen_tok, temperature, top_p, n):
    """Prompts of 3 lengths in batches of 4 rows (left-padded, a prompt's samples split across batches): each
    sample's `logprobs` are the temperature-1 log-softmax of an unpadded forward pass at its response positions,
    not the log-probs of the processed (temperature 0.7) distribution it was sampled from."""
    out = generate(gen_model, gen_tok, PROMPTS, max_new_tokens=8, temperature=temperature, top_p=top_p, n=n,
                   batch_size=4, seed=3, return_logprobs=True)
    assert len(out) == 3 * n
    assert all(len(r["logprobs"]) == len(r["token_ids"]) for r in out)
    assert sum(len(r["token_ids"]) for r in out) >= 8 * n  # the comparison covers real tokens
    ref = [forward_logprobs(gen_model, r["prompt_ids"], r["token_ids"]) for r in out]
    assert max_diff(out, ref) < 1e-5
    if temperature:  # the check tells temperature-1 log-probs from those of the sampling distribution
        tempered = [forward_logprobs(gen_model, r["prompt_ids"], r["token_ids"], temperature) for r in out]
        assert max_diff(out, tempered) > 0.05  # measured 0.12


def test_token_ids_end_with_the_stop_token_exactly_when_stopped(gen_tok):
    """Flat logits with a bias log(50) on EOS (vocab 332): at temperature 1, p(EOS) = 50 / (50 + 331) = 50/381,
    so log p(EOS) = log(50/381) = -2.030776 and every other token has log(1/381) = -5.942799, the same at every
    position. Sampling at temperature 1.5 (p(EOS) = 50^(1/1.5) / (50^(1/1.5) + 331) = 0.039 a step, so about a
    third of 10-token samples stop) does not change these temperature-1 values."""
    model = make_model(gen_tok)
    eos = gen_tok.eos_token_id
    assert model.config.vocab_size == 332
    bias_head(model, {eos: math.log(50.0)})
    out = generate(model, gen_tok, PROMPTS, max_new_tokens=10, temperature=1.5, n=4, seed=0, return_logprobs=True)
    assert {r["stopped"] for r in out} == {True, False}  # both cases occur
    renderer = Renderer(gen_tok)
    for r in out:
        assert r["prompt_ids"] == renderer.prompt_ids([Message("user", PROMPTS[r["prompt_index"]])])
        if r["stopped"]:
            assert r["token_ids"] == r["ids"] + [eos]
        else:
            assert r["token_ids"] == r["ids"] and len(r["ids"]) == 10 and eos not in r["ids"]
        expected = [-2.030776 if t == eos else -5.942799 for t in r["token_ids"]]
        assert max(abs(a - b) for a, b in zip(r["logprobs"], expected, strict=True)) < 1e-5


def test_n_samples_are_prompt_major_distinct_and_repeat_with_a_seed(gen_tok):
    """A flat head (all logits 0): uniform over 332 tokens, so 3 samples of 4 tokens agreeing has probability
    332^-8. 2 prompts x 3 samples in batches of 4 rows: prompt 1's samples straddle two batches."""
    model = make_model(gen_tok)
    bias_head(model, {})
    prompts = PROMPTS[:2]
    kw = dict(max_new_tokens=4, temperature=1.0, n=3, batch_size=4, seed=5)
    out = generate(model, gen_tok, prompts, **kw)
    assert len(out) == len(prompts) * 3
    assert [(r["prompt_index"], r["sample_index"]) for r in out] == [(p, s) for p in range(2) for s in range(3)]
    renderer = Renderer(gen_tok)
    assert [r["prompt_ids"] for r in out] == [renderer.prompt_ids([Message("user", p)]) for p in prompts for _ in "abc"]
    for p in range(2):
        assert len({tuple(r["token_ids"]) for r in out[3 * p : 3 * p + 3]}) == 3
    assert generate(model, gen_tok, prompts, **kw) == out
    with_lp = generate(model, gen_tok, prompts, **kw, return_logprobs=True)
    assert [{k: v for k, v in r.items() if k != "logprobs"} for r in with_lp] == out
    assert "logprobs" not in out[0]
    # n=1: one dict per prompt
    single = generate(model, gen_tok, prompts, **{**kw, "n": 1})
    assert [(r["prompt_index"], r["sample_index"]) for r in single] == [(0, 0), (1, 0)]


def test_sampled_tokens_do_not_depend_on_returning_logprobs(gen_model, gen_tok):
    kw = dict(max_new_tokens=8, temperature=0.7, top_p=0.9, n=2, batch_size=4, seed=3)
    plain = generate(gen_model, gen_tok, PROMPTS, **kw)
    with_lp = generate(gen_model, gen_tok, PROMPTS, **kw, return_logprobs=True)
    assert [r["token_ids"] for r in plain] == [r["token_ids"] for r in with_lp]
    assert core(plain) == core(with_lp)
    assert len({tuple(r["token_ids"]) for r in plain}) == 6  # really sampled: 6 different responses


def test_samples_do_not_depend_on_the_batch_size_and_the_hf_engine_samples_too(gen_model, gen_tok):
    kw = dict(max_new_tokens=8, temperature=1.0, n=3, seed=4)
    runs = [generate(gen_model, gen_tok, PROMPTS, batch_size=b, **kw) for b in (1, 4, 9)]
    assert runs[0] == runs[1] == runs[2]
    # the n=1 sample of prompt i is the first of its n samples: its stream is (seed, i, 0) either way
    assert [r["token_ids"] for r in generate(gen_model, gen_tok, PROMPTS, batch_size=4, **{**kw, "n": 1})] == \
        [r["token_ids"] for r in runs[0][::3]]
    hf = generate(gen_model, gen_tok, PROMPTS, batch_size=4, engine="hf", **kw)
    assert len({tuple(r["token_ids"]) for r in hf}) == 9                # the reference engine samples as well
    with pytest.raises(UserError, match="engine must be one of posttrain, hf"):
        generate(gen_model, gen_tok, PROMPTS, engine="vllm")


@pytest.mark.parametrize("kw, message", [
    ({"n": 0}, "generate: n must be >= 1, got 0"),
    ({"max_new_tokens": 0}, "generate: max_new_tokens must be >= 1, got 0"),
    ({"batch_size": 0}, "generate: batch_size must be >= 1, got 0"),
    ({"temperature": -0.5}, "generate: temperature must be >= 0, got -0.5"),
    ({"top_p": 2.0}, "generate: top_p must be in (0, 1], got 2.0"),
    ({"top_p": 0.0}, "generate: top_p must be in (0, 1], got 0.0"),
])
def test_bad_arguments_are_user_errors(gen_model, gen_tok, kw, message):
    with pytest.raises(UserError) as err:
        generate(gen_model, gen_tok, ["hi"], **kw)
    assert str(err.value) == message


# --- command line --------------------------------------------------------------------------------


def test_generate_cli_prints_json(gen_tok, tmp_path):
    make_model(gen_tok).save_pretrained(tmp_path / "m")
    gen_tok.save_pretrained(tmp_path / "m")
    exe = Path(sys.executable).with_name("posttrain")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "posttrain"]
    proc = subprocess.run([*cmd, "generate", "--model", str(tmp_path / "m"), "--prompt", "hi",
                           "--max-new-tokens", "4", "--json"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert isinstance(out, list) and len(out) == 1
    assert set(out[0]) == {"prompt", "response", "stopped"}
    assert out[0]["prompt"] == "hi" and isinstance(out[0]["response"], str)
    # the same model in-process gives the same response
    model = make_model(gen_tok)
    expected = generate(model, gen_tok, ["hi"], max_new_tokens=4)[0]
    assert out[0]["response"] == expected["text"] and out[0]["stopped"] == expected["stopped"]
