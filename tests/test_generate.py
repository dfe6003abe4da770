"""Sampling: greedy is deterministic and batch-independent, stop tokens end a response, raw prompts skip
the chat template, seeded sampling repeats, and the `posttrain generate --json` command line.

A tiny seeded random-init Llama (hidden 32, 2 layers) with a BPE tokenizer trained here; nothing is
downloaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from posttrain.data.types import Message
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


def force_token(model, token_id: int) -> None:
    """Make `token_id` the argmax at every position: an output head with zero weight and a one-hot bias."""
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[token_id] = 10.0
    model.lm_head = head


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
    assert out == [{"text": "", "ids": [], "stopped": True}] * 3


def test_generation_without_a_stop_token_runs_to_max_new_tokens(gen_tok):
    """A head that always says 'a': five 'a' tokens, not stopped."""
    model = make_model(gen_tok)
    (a,) = gen_tok("a", add_special_tokens=False).input_ids
    force_token(model, a)
    out = generate(model, gen_tok, PROMPTS[:2], max_new_tokens=5)
    assert out == [{"text": "aaaaa", "ids": [a] * 5, "stopped": False}] * 2


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
    """The (unpadded) input ids `generate` hands to `model.generate`."""
    seen = []
    real = model.generate

    def spy(**kwargs):
        for ids, mask in zip(kwargs["input_ids"].tolist(), kwargs["attention_mask"].tolist()):
            seen.append([t for t, m in zip(ids, mask) if m])
        return real(**kwargs)

    monkeypatch.setattr(model, "generate", spy)
    generate(model, tok, prompts, max_new_tokens=2, **kw)
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
