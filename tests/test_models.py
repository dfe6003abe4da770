"""Models: SFT (full and LoRA) on every tiny architecture, merging adapters, and one-line load errors.

Every model is a seeded random-init tiny model (hidden 32, 2 layers) with a BPE tokenizer trained here;
nothing is downloaded. The SFT runs are cached per module (one full and one LoRA run per architecture),
so the parametrized checks share them.
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
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import posttrain.models.lora as lora_mod
import posttrain.recipes.sft as sft_mod
from posttrain.config import load_config
from posttrain.errors import UserError
from posttrain.models.load import load_model, load_tokenizer
from posttrain.models.lora import lora_target_modules, merge_adapter
from posttrain.models.tiny import ARCHS, tiny_model
from posttrain.models.tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["ada", "bob", "cy", "dee", "eve", "fay", "gus", "hal"]
THINGS = ["apples", "books", "cats", "dogs", "eggs", "figs", "hats", "keys"]

# Hand-written from each architecture's module names: every linear layer inside the blocks, no output head.
EXPECTED_TARGETS = {
    "llama": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
    "qwen2": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
    "mistral": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
    "gpt2": ["c_attn", "c_fc", "c_proj"],
    "gpt_neox": ["dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"],
}
# Adapted modules per block: llama-likes 7; gpt2 4 (c_proj is in both attention and MLP); gpt_neox 4.
MODULES_PER_LAYER = {"llama": 7, "qwen2": 7, "mistral": 7, "gpt2": 4, "gpt_neox": 4}
# Architectures whose default config trains with dropout (gpt2: 0.1 on embeddings, residuals, attention).
DROPOUT = {"gpt2"}


# --- builders ------------------------------------------------------------------------------------


def chat_pair(k: int) -> tuple[str, str]:
    n, t = NAMES[k % 8], THINGS[(k * 3) % 8]
    return f"how many {t} does {n} have?", f"{n} has {k % 8 + (k * 3) % 8} {t}."


def make_tokenizer():
    """A ~300-token BPE tokenizer trained on a few hundred short chat strings."""
    texts = [s for k in range(64) for s in chat_pair(k)]
    texts += [f"{n} likes {t}, not {u}." for n in NAMES for t in THINGS for u in THINGS[:3]]
    return train_tokenizer(texts, vocab_size=400)


def make_model_dir(arch: str, tok, path: Path, seed: int = 0) -> Path:
    tiny_model(arch, tok, seed=seed, hidden=32, layers=2, heads=4).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_chat_file(path: Path, n: int = 32) -> Path:
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in map(chat_pair, range(n))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln]
    return [r["train/loss"] for r in rows if "train/loss" in r]


def params(model) -> dict[str, torch.Tensor]:
    """Named parameters (a tied weight appears once)."""
    return {n: p.detach() for n, p in model.named_parameters()}


def adapted(name: str, targets: list[str]) -> bool:
    """Whether a base parameter name is the weight of an adapted module (LoRA never touches biases)."""
    parts = name.split(".")
    return parts[-1] == "weight" and parts[-2] in targets


def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def merged_from_files(run: dict):
    """The run's base model with its saved adapter merged in by peft."""
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(run["base"])
    return PeftModel.from_pretrained(base, str(run["out"] / "adapter")).merge_and_unload()


def posttrain_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("posttrain")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "posttrain"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models_tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def sft_run(models_tok, tmp_path_factory):
    """`sft_run(arch, lora)` -> dict(base, out, init): one cached 3-step SFT run per (arch, lora).

    For LoRA runs `init` is every parameter of the peft-wrapped model right after `apply_lora` and
    `trainable` the names that require grad (recorded by wrapping `apply_lora`).
    """
    root = tmp_path_factory.mktemp("sft")
    data = make_chat_file(root / "chat.jsonl")
    cache: dict = {}

    def get(arch: str, lora: bool) -> dict:
        if (arch, lora) in cache:
            return cache[arch, lora]
        base = root / arch
        if not base.exists():
            make_model_dir(arch, models_tok, base)
        out = root / f"{arch}-{'lora' if lora else 'full'}"
        run: dict = {"base": base, "out": out}
        real = lora_mod.apply_lora

        def recording(model, *args, **kwargs):
            wrapped = real(model, *args, **kwargs)
            run["init"] = {n: p.detach().clone() for n, p in wrapped.named_parameters()}
            run["trainable"] = sorted(n for n, p in wrapped.named_parameters() if p.requires_grad)
            return wrapped

        overrides = [f"model={base}", f"data={data}", f"output_dir={out}", "max_steps=3", "batch_size=4",
                     "micro_batch_size=2", "optim.lr=1e-2", f"lora.enabled={str(lora).lower()}"]
        cfg = load_config(sft_mod.SFTConfig, None, overrides)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(lora_mod, "apply_lora", recording)
            mp.setattr(sft_mod, "apply_lora", recording, raising=False)  # in case sft imports it at the top
            sft_mod.main(cfg)
        cache[arch, lora] = run
        return run

    return get


# --- lora_target_modules -------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_target_modules_cover_every_block_linear_and_skip_the_head(arch, models_tok):
    model = tiny_model(arch, models_tok, hidden=32, layers=2, heads=4)
    assert lora_target_modules(model) == EXPECTED_TARGETS[arch]


# --- SFT on every architecture -------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_sft_full_finetune_changes_every_parameter(arch, sft_run, models_tok):
    run = sft_run(arch, lora=False)
    curve = losses(run["out"])
    assert len(curve) == 3 and all(math.isfinite(x) for x in curve)
    # Random init with std 0.02 predicts almost uniformly: the first loss is ~ln V.
    assert curve[0] == pytest.approx(math.log(len(models_tok)), abs=0.1)
    assert curve[2] < curve[0]

    base = AutoModelForCausalLM.from_pretrained(run["base"])
    tuned = AutoModelForCausalLM.from_pretrained(run["out"] / "model")
    before, after = params(base), params(tuned)
    assert sorted(before) == sorted(after)
    unchanged = [n for n in before if torch.equal(before[n], after[n])]
    assert unchanged == []
    # gpt2 ties its output head to the input embeddings; the saved model keeps them tied (and trained).
    tied = arch == "gpt2"
    assert (tuned.get_output_embeddings().weight is tuned.get_input_embeddings().weight) == tied
    # generation stops at the end of an assistant turn: EOS for posttrain's own template
    assert json.loads((run["out"] / "model" / "generation_config.json").read_text())["eos_token_id"] == \
        models_tok.eos_token_id


@pytest.mark.parametrize("arch", ARCHS)
def test_sft_lora_trains_only_the_adapter(arch, sft_run, models_tok):
    run, full = sft_run(arch, lora=True), sft_run(arch, lora=False)
    curve = losses(run["out"])
    assert len(curve) == 3 and all(math.isfinite(x) for x in curve)
    assert curve[2] < curve[0]
    # LoRA B starts at zero, so step 1 sees exactly the base model: the full run's first loss (up to dropout).
    assert curve[0] == pytest.approx(losses(full["out"])[0], abs=5e-3 if arch in DROPOUT else 1e-5)

    targets = lora_target_modules(AutoModelForCausalLM.from_pretrained(run["base"]))
    cfg = json.loads((run["out"] / "adapter" / "adapter_config.json").read_text())
    assert sorted(cfg["target_modules"]) == targets == EXPECTED_TARGETS[arch]
    assert cfg["fan_in_fan_out"] == (arch == "gpt2")

    # Only lora_A / lora_B are trainable: 2 per adapted module, 2 layers; each one changed (B from zero).
    n_lora = 2 * 2 * MODULES_PER_LAYER[arch]
    assert len(run["trainable"]) == n_lora
    assert all(".lora_A." in n or ".lora_B." in n for n in run["trainable"])
    saved = load_file(run["out"] / "adapter" / "adapter_model.safetensors")
    assert len(saved) == n_lora
    for name in run["trainable"]:
        start, end = run["init"][name], saved[name.replace(".default.", ".")]
        if ".lora_B." in name:
            assert not start.any(), name
        assert not torch.equal(start, end), name

    # model/ is the merged model: it differs from the base exactly in the adapted weights, and those
    # equal base + the saved adapter merged again (so the base weights stayed frozen during training).
    base = params(AutoModelForCausalLM.from_pretrained(run["base"]))
    merged_model = AutoModelForCausalLM.from_pretrained(run["out"] / "model")
    merged = params(merged_model)
    assert sorted(merged) == sorted(base)
    changed = sorted(n for n in base if not torch.equal(base[n], merged[n]))
    assert changed == sorted(n for n in base if adapted(n, targets))
    assert len(changed) == 2 * MODULES_PER_LAYER[arch]
    remerged = params(merged_from_files(run))
    for n in changed:
        torch.testing.assert_close(merged[n], remerged[n], rtol=0, atol=1e-6)

    # the merged model generates with plain `generate`
    text = models_tok.apply_chat_template([{"role": "user", "content": "how many cats does ada have?"}],
                                          add_generation_prompt=True, tokenize=False)
    prompt = torch.tensor([models_tok(text, add_special_tokens=False).input_ids])
    out = merged_model.generate(prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 1 and prompt.shape[1] < out.shape[1] <= prompt.shape[1] + 4
    assert torch.equal(out[0, : prompt.shape[1]], prompt[0])


# --- merging an adapter --------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_merge_adapter_gives_the_peft_models_logits(arch, sft_run, tmp_path):
    from peft import PeftModel

    run = sft_run(arch, lora=True)
    adapter = run["out"] / "adapter"
    merge_adapter(str(adapter), str(tmp_path / "merged"))
    ids = torch.tensor([[1, 4, 20, 31, 42, 53, 6, 5, 60, 70]])
    base_logits = logits_of(AutoModelForCausalLM.from_pretrained(run["base"]), ids)
    peft_logits = logits_of(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(run["base"]),
                                                      str(adapter)), ids)
    merged_logits = logits_of(AutoModelForCausalLM.from_pretrained(tmp_path / "merged"), ids)
    assert (peft_logits - base_logits).abs().max() > 1e-3  # the adapter does something
    torch.testing.assert_close(merged_logits, peft_logits, rtol=0, atol=1e-5)
    # the recipe's own merged model/ is the same model
    torch.testing.assert_close(logits_of(AutoModelForCausalLM.from_pretrained(run["out"] / "model"), ids),
                               merged_logits, rtol=0, atol=1e-5)
    assert (tmp_path / "merged" / "tokenizer.json").exists()


def test_merge_cli_writes_the_same_model(sft_run, tmp_path, capsys):
    from posttrain.cli import main as cli_main

    adapter = sft_run("llama", lora=True)["out"] / "adapter"
    merge_adapter(str(adapter), str(tmp_path / "direct"))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["merge", "--adapter", str(adapter), "--out", str(tmp_path / "cli")])
    assert exit_info.value.code == 0
    assert f"merged model saved to {tmp_path / 'cli'}" in capsys.readouterr().out
    direct = params(AutoModelForCausalLM.from_pretrained(tmp_path / "direct"))
    cli = params(AutoModelForCausalLM.from_pretrained(tmp_path / "cli"))
    assert sorted(direct) == sorted(cli)
    assert all(torch.equal(direct[n], cli[n]) for n in direct)


def test_merge_adapter_rejects_a_folder_without_adapter_config(tmp_path):
    with pytest.raises(UserError, match="has no adapter_config.json"):
        merge_adapter(str(tmp_path), str(tmp_path / "out"))


# --- load errors ---------------------------------------------------------------------------------


def test_load_model_missing_folder():
    with pytest.raises(UserError, match="no such folder '/nonexistent/x'"):
        load_model("/nonexistent/x")


def test_load_model_folder_without_config(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(UserError, match="has no config.json"):
        load_model(str(tmp_path))


def test_load_tokenizer_folder_with_a_model_but_no_tokenizer(tmp_path, models_tok):
    tiny_model("llama", models_tok, hidden=32, layers=2, heads=4).save_pretrained(tmp_path)
    assert isinstance(load_model(str(tmp_path)), torch.nn.Module)
    with pytest.raises(UserError, match="has no tokenizer"):
        load_tokenizer(str(tmp_path))


def test_cli_bad_input_is_one_error_line_and_exit_2_and_debug_shows_the_traceback(tmp_path):
    """Both runs start at once (each pays the torch import)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    argv = [*posttrain_cmd(), "sft", "model=/nonexistent", "data=x.jsonl"]
    procs = [subprocess.Popen(a, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for a in (argv, [*argv, "--debug"])]
    (out, err), (_, debug_err) = (p.communicate(timeout=120) for p in procs)
    plain, debug = procs

    assert plain.returncode == 2
    assert err.strip().splitlines() == ["error: model: no such folder '/nonexistent'"]
    assert "Traceback" not in err and out == ""

    assert debug.returncode not in (0, 2)
    assert "Traceback (most recent call last)" in debug_err
    assert "UserError: model: no such folder '/nonexistent'" in debug_err
