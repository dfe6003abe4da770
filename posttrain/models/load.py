"""Load and save any Hugging Face causal LM and its tokenizer, with clear errors and safe tokenizer defaults;
the base model that ships inside posttrain."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from posttrain.data.loading import short_reason
from posttrain.errors import UserError
from posttrain.io import atomic_dir
from posttrain.models.tokenizer import DEFAULT_TEMPLATE

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def is_local(path: str) -> bool:
    """Whether `path` means a local folder (it exists, or is not shaped like a hub id 'org/name')."""
    return Path(path).expanduser().exists() or path.startswith((".", "/", "~")) or path.count("/") > 1


def has_tokenizer(folder: str) -> bool:
    return any((Path(folder) / f).exists() for f in TOKENIZER_FILES)


def _check_path(path: str, what: str) -> None:
    """A path that is neither an existing folder nor shaped like a hub id ('org/name') is an error."""
    if is_local(path) and not Path(path).expanduser().exists():
        raise UserError(f"{what}: no such folder '{path}'")


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """Tokenizer with a chat template (DEFAULT_TEMPLATE when it has none) and a pad token (EOS when it has none).

    EOS doubling as pad is safe here: padding is masked by sequence length, never by comparing ids.
    """
    _check_path(path, "model")
    if Path(path).is_dir() and not has_tokenizer(path):
        raise UserError(f"model: '{path}' has no tokenizer (tokenizer.json or tokenizer_config.json)")
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(f"model: cannot load a tokenizer from '{path}' (not a local folder, nor on the hub): {short_reason(e)}") from None
    if tok.eos_token is None:
        raise UserError(f"model: the tokenizer in '{path}' has no eos_token; posttrain needs one to end responses")
    if not tok.chat_template:
        tok.chat_template = DEFAULT_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained` with a one-line error for a missing or unreadable model."""
    _check_path(path, "model")
    if Path(path).is_dir() and not (Path(path) / "config.json").exists():
        raise UserError(f"model: '{path}' has no config.json (is it a model folder?)")
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as e:
        raise UserError(f"model: cannot load '{path}' (not a local folder, nor on the hub): {short_reason(e)}") from None


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path,
               stop_ids: list[int] | None = None) -> None:
    """Save a plain Hugging Face model folder (weights, config, tokenizer) atomically.

    `stop_ids` go into generation_config.eos_token_id, so plain `generate` stops at the end of a turn.
    """
    if stop_ids:
        model.generation_config.eos_token_id = stop_ids if len(stop_ids) > 1 else stop_ids[0]
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def shipped_base() -> Path:
    """The folder of the base model shipped inside the package (`posttrain/assets/base`, built by `make base`)."""
    return Path(__file__).resolve().parent.parent / "assets" / "base"


def check_model_folder(path: str, what: str = "model") -> str:
    """`path` when it is a local model folder with a tokenizer (or shaped like a hub id, left to the loader);
    else a one-line `UserError` naming `what`. Used before any work starts."""
    if not is_local(path):
        return path
    if not (Path(path) / "config.json").exists():
        raise UserError(f"{what}: '{path}' is not a model folder (no config.json there)")
    if not has_tokenizer(path):
        raise UserError(f"{what}: '{path}' has no tokenizer (tokenizer.json / tokenizer_config.json)")
    return path
