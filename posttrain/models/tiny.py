"""Tiny random-init models of the common architectures, built from configs (tests, demos, benchmarks)."""

from __future__ import annotations

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from posttrain.errors import UserError, did_you_mean

ARCHS = ("llama", "qwen2", "mistral", "gpt2", "gpt_neox")


def tiny_config(arch: str, vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4, max_len: int = 512,
                **special: int) -> PretrainedConfig:
    """A small config of `arch`; `special` passes bos/eos/pad token ids."""
    if arch not in ARCHS:
        raise UserError(f"unknown architecture '{arch}'{did_you_mean(arch, ARCHS)}; choose one of {', '.join(ARCHS)}")
    if arch == "gpt2":
        return AutoConfig.for_model("gpt2", vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads,
                                    n_positions=max_len, resid_pdrop=0.0, embd_pdrop=0.0,
                                    attn_pdrop=0.0, **special)
    common = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2 + hidden // 2 * 3,
                  num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=max_len, **special)
    if arch == "gpt_neox":
        return AutoConfig.for_model("gpt_neox", **common)
    return AutoConfig.for_model(arch, num_key_value_heads=max(1, heads // 2), tie_word_embeddings=False, **common)


def tiny_model(arch: str, tokenizer: PreTrainedTokenizerBase, seed: int = 0, **size: int) -> PreTrainedModel:
    """A seeded random-init causal LM of `arch` sized for `tokenizer`."""
    special = {k: getattr(tokenizer, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")
               if getattr(tokenizer, k) is not None}
    config = tiny_config(arch, vocab_size=len(tokenizer), **size, **special)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def example_texts(examples) -> list[str]:
    """Every message text of a list of canonical examples (for training a tokenizer)."""
    out = []
    for ex in examples:
        for name in ("messages", "prompt", "chosen", "rejected", "completion"):
            out += [m.content for m in getattr(ex, name, [])]
    return out


def stand_in_tokenizer(examples, limit: int = 5000, vocab_size: int = 4096) -> PreTrainedTokenizerBase:
    """A byte-level BPE tokenizer (posttrain's chat template) trained on the text of the first `limit`
    examples: what `posttrain data check` renders with when no `--model` is given."""
    from posttrain.models.tokenizer import train_tokenizer

    return train_tokenizer(example_texts(examples[:limit]), vocab_size=vocab_size)


def build_tiny(arch: str, data_path: str, out_dir: str, vocab_size: int = 2048, seed: int = 0, **size: int) -> None:
    """Train a BPE tokenizer on a data file's text and save it with a seeded random-init `arch` model."""
    from posttrain.data.formats import load_examples
    from posttrain.io import atomic_dir
    from posttrain.models.tokenizer import train_tokenizer

    _, examples = load_examples(data_path)
    tok = train_tokenizer(example_texts(examples), vocab_size=vocab_size)
    model = tiny_model(arch, tok, seed=seed, **size)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
