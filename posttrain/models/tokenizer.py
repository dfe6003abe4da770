"""Tokenizers: chat-template defaults, and a small BPE trainer (the `tokenizers` library) for tiny models."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# posttrain's own chat format, used by the tokenizers posttrain trains: role markers are special tokens,
# non-assistant turns close with <|end|>, assistant turns close with the EOS token (so generation stops there).
# User turns open with "Q: " and assistant turns with "A: ", the way questions and answers sit on the web pages
# a base model read: the first answer token is predicted after "A:", a context pretraining knows, instead of
# after a chat token it never saw. (On the shipped base this took SFT gold from 0.239 to 0.309 at step 500 of
# pretraining; the README has the measurements.)
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
POSTTRAIN_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}<|assistant|>A: {{ m['content'] }}{{ eos_token }}"
    "{% elif m['role'] == 'user' %}<|user|>Q: {{ m['content'] }}<|end|>"
    "{% else %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>A:{% endif %}"
)

# For tokenizers that ship no chat template (GPT-2, most base models): plain-text role markers, and every
# assistant turn closed by the tokenizer's EOS token.
DEFAULT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}{{ 'Assistant: ' + m['content'] + eos_token + '\n\n' }}"
    "{% elif m['role'] == 'system' %}{{ 'System: ' + m['content'] + '\n\n' }}"
    "{% else %}{{ 'User: ' + m['content'] + '\n\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with posttrain's chat special tokens and chat template."""
    tok = Tokenizer(models.BPE())
    # Digits are single tokens (as in Llama and nanochat), so "31" and " 131" share their digits and
    # arithmetic is learnable; everything else follows the byte-level GPT-2 split.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>"
    )
    fast.chat_template = POSTTRAIN_TEMPLATE
    return fast
