"""The base model shipped in the package (`posttrain/assets/base`, built by `make base`)."""

from __future__ import annotations

import torch
from safetensors import safe_open

from posttrain.models.load import load_model, load_tokenizer, shipped_base
from posttrain.rollout.generate import generate

BASE = shipped_base()


def test_shipped_base_is_small_half_precision_and_documented():
    files = {p.name: p.stat().st_size for p in BASE.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(files)
    assert sum(files.values()) <= 25 * 2**20
    with safe_open(str(BASE / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    card = (BASE / "README.md").read_text()
    for needle in ("seed: 0", "wall time", "final training loss", "make base", "max_steps"):
        assert needle in card, needle


def test_shipped_base_knows_the_world_but_not_the_assistant_format():
    tok, model = load_tokenizer(str(BASE)), load_model(str(BASE))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert tok.chat_template and "<|assistant|>" in tok.get_vocab()  # ready for SFT
    out = generate(model, tok, ["The capital of Peru is", "User: What is the capital of Peru?\nAssistant:"],
                   max_new_tokens=24, raw=True)
    assert "Lima" in out[0]["text"]  # knowledge from the corpus's fact pages
    continuation = out[1]["text"]
    assert "Lima" in continuation and len(continuation.strip()) > 60  # it knows, and then it keeps on writing
