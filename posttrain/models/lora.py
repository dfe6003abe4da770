"""LoRA through peft: target modules found without the user naming them, and merging an adapter."""

from __future__ import annotations

from pathlib import Path

from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from posttrain.errors import UserError


def lora_target_modules(model: nn.Module, skip: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Names (last path component) of every linear layer inside the transformer blocks.

    Covers `nn.Linear` and GPT-2's `Conv1D`; the output head is left out, so the names work for Llama
    (q_proj ... down_proj), GPT-2 (c_attn, c_proj, c_fc), GPT-NeoX (query_key_value, dense, ...) alike.
    `skip`: top-level modules left out too (a sequence classifier's head, `score`, which is trained in full).
    """
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = set()
    for name, module in model.named_modules():
        if module is out_emb or not isinstance(module, (nn.Linear, Conv1D)):
            continue
        if any(name == s or name.startswith(s + ".") for s in skip):
            continue
        names.add(name.rsplit(".", 1)[-1])
    if not names:
        raise UserError("lora: found no linear layers to adapt; set lora.target_modules")
    return sorted(names)


def apply_lora(model: PreTrainedModel, r: int, alpha: int, dropout: float, target_modules: list[str] | None,
               task_type: str = "CAUSAL_LM", modules_to_save: list[str] | None = None):
    """Wrap `model` in a peft LoRA model; only the adapter weights (and `modules_to_save`, trained in full and
    saved with the adapter) stay trainable. `task_type` is peft's: "CAUSAL_LM", or "SEQ_CLS" for a reward model
    with `modules_to_save=["score"]` (its head); auto-detected targets leave `modules_to_save` out."""
    from peft import LoraConfig, get_peft_model

    keep = list(modules_to_save or [])
    targets = target_modules or lora_target_modules(model, skip=keep)
    fan_in_fan_out = any(isinstance(m, Conv1D) for m in model.modules())
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        fan_in_fan_out=fan_in_fan_out, task_type=task_type, modules_to_save=keep or None)
    return get_peft_model(model, config)


def merge_adapter(adapter_dir: str, out_dir: str, base: str | None = None) -> None:
    """Load base + adapter, merge the LoRA weights into the base, save a plain model (and tokenizer) to `out_dir`."""
    from peft import PeftConfig, PeftModel

    from posttrain.data.render import Renderer
    from posttrain.models.load import load_model, load_tokenizer, save_model

    if not (Path(adapter_dir) / "adapter_config.json").exists():
        raise UserError(f"merge: '{adapter_dir}' has no adapter_config.json (is it a LoRA adapter folder?)")
    base = base or PeftConfig.from_pretrained(adapter_dir).base_model_name_or_path
    model = PeftModel.from_pretrained(load_model(base), adapter_dir).merge_and_unload()
    tok_src = adapter_dir if (Path(adapter_dir) / "tokenizer_config.json").exists() else base
    tok = load_tokenizer(tok_src)
    save_model(model, tok, Path(out_dir), Renderer(tok).stop_token_ids())
