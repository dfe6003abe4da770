"""Pretraining: document tokenisation, every token trained, a short run writes a loadable model with its card."""

from __future__ import annotations

import json

import pytest
import torch

from posttrain.config import load_config
from posttrain.errors import UserError
from posttrain.recipes import pretrain
from posttrain.recipes.pretrain import PretrainConfig, tokenize_documents


def test_documents_are_bos_text_eos_and_cut_into_pieces(tok):
    docs = tokenize_documents(["apple river", "stone " * 30], tok, max_len=8)
    first = tok("apple river", add_special_tokens=False).input_ids
    assert docs[0].input_ids == [tok.bos_token_id, *first, tok.eos_token_id]
    assert docs[0].labels == docs[0].input_ids  # every token is a target
    long = [tok.bos_token_id, *tok("stone " * 30, add_special_tokens=False).input_ids, tok.eos_token_id]
    rest = [d.input_ids for d in docs[1:]]
    assert all(len(p) <= 8 for p in rest)
    assert [rest[0][0]] + [t for p in rest for t in p[1:]] == long  # pieces overlap by one token
    assert sum(d.n_trained for d in docs[1:]) == len(long) - 1  # every token after BOS is a target once


def corpus(tmp_path, n=60):
    words = ["apple", "river", "stone", "cloud", "tiger", "piano", "garden", "ocean"]
    rows = [{"text": f"The {words[i % 8]} is near the {words[(i * 3) % 8]}. " * (1 + i % 4)} for i in range(n)]
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_short_run_learns_and_saves(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    cfg = load_config(PretrainConfig, None, [f"data={corpus(tmp_path)}", f"output_dir={out}", "max_steps=6",
                                             "batch_size=4", "micro_batch_size=2", "model.hidden=32", "model.layers=2",
                                             "model.vocab_size=300", "optim.lr=1e-2", "log_every=1",
                                             "data.max_seq_len=64", "save_dtype=float16"])
    pretrain.main(cfg)
    losses = [json.loads(x)["train/loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and losses[-1] < losses[0]
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tok = AutoTokenizer.from_pretrained(out / "model")
    assert tok.chat_template and "<|assistant|>" in tok.get_vocab()  # ready for SFT
    assert model.config.use_cache is True
    card = (out / "model" / "README.md").read_text()
    assert "seed: 0" in card and "final training loss" in card and "max_steps: 6" in card

    # Shipped in half precision (half the bytes); posttrain loads it back in float32 for training.
    from safetensors import safe_open

    from posttrain.models.load import load_model
    with safe_open(str(out / "model" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert {p.dtype for p in load_model(str(out / "model")).parameters()} == {torch.float32}


def _run(tmp_path, name, *overrides):
    out = tmp_path / name
    cfg = load_config(PretrainConfig, None, [f"data={corpus(tmp_path)}", f"output_dir={out}", "batch_size=4",
                                             "micro_batch_size=2", "model.hidden=32", "model.layers=2",
                                             "model.vocab_size=300", "optim.lr=1e-2", "log_every=1",
                                             "data.max_seq_len=64", "save_dtype=float16", *overrides])
    pretrain.main(cfg)
    return out, [json.loads(x)["train/loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_mid_training_continues_a_model_with_its_tokenizer(tmp_path):
    """`model.init`: the weights and tokenizer of an existing model, trained further (mid-training)."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    first, first_losses = _run(tmp_path, "first", "max_steps=8")
    # lr 0: the saved weights are exactly the ones loaded (fp16 -> fp32 -> fp16), not a new random init.
    frozen, frozen_losses = _run(tmp_path, "frozen", f"model.init={first / 'model'}", "max_steps=2", "optim.lr=0",
                                 "model.hidden=64", "model.vocab_size=500")  # size keys are unused with init
    before, after = load_file(first / "model" / "model.safetensors"), load_file(frozen / "model" / "model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert AutoTokenizer.from_pretrained(frozen / "model").get_vocab() == AutoTokenizer.from_pretrained(
        first / "model").get_vocab()
    # It starts where the first run ended, far below a fresh model's first loss.
    assert frozen_losses[0] < first_losses[0] - 1.0, (frozen_losses, first_losses)
    _, more = _run(tmp_path, "more", f"model.init={first / 'model'}", "max_steps=4")
    assert more[-1] < more[0]
    card = (frozen / "model" / "README.md").read_text()
    assert f"continued from: {first / 'model'}" in card
    assert "## Before: the model it continued" in card and card.count("max_steps: 8") == 1


def test_corpus_without_text_field_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    cfg = load_config(PretrainConfig, None, [f"data={bad}", f"output_dir={tmp_path / 'o'}"])
    with pytest.raises(UserError, match=r"bad.jsonl:2: field 'text' is missing"):
        pretrain.main(cfg)


def _weights(out):
    from safetensors.torch import load_file

    return load_file(out / "model" / "model.safetensors")


def test_batch_times_accumulation_invariance(tmp_path):
    """batch 4 as 4x1 and 1x4 (micro x accumulation) trains to the same weights: the loss divides by the
    global token count, as in SFT (fp32 summation order is the only difference)."""
    a, la = _run(tmp_path, "a", "max_steps=3", "micro_batch_size=4", "save_dtype=float32")
    b, lb = _run(tmp_path, "b", "max_steps=3", "micro_batch_size=1", "save_dtype=float32")
    wa, wb = _weights(a), _weights(b)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 2e-5
    assert la == pytest.approx(lb, abs=1e-5)


def test_resume_continues_exactly(tmp_path, interrupt_at):
    """Killed after the step-2 checkpoint, a rerun resumes at step 2 and ends bit for bit where an uninterrupted
    run ends, with no step logged twice."""
    full, full_losses = _run(tmp_path, "full", "max_steps=4", "save_every=2", "save_dtype=float32")
    with interrupt_at(3):
        _run(tmp_path, "cut", "max_steps=4", "save_every=2", "save_dtype=float32")
    cut, cut_losses = _run(tmp_path, "cut", "max_steps=4", "save_every=2", "save_dtype=float32")
    wa, wb = _weights(full), _weights(cut)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert cut_losses == full_losses and json.loads((cut / "result.json").read_text())["steps"] == 4


def test_nan_stops_without_overwriting_the_good_checkpoint(tmp_path, monkeypatch):
    from posttrain.errors import TrainingDiverged
    from posttrain.recipes import common

    calls = {"n": 0}
    real = common.nll_sum

    def nan_from_step_3(logits, targets):
        calls["n"] += 1
        s, n = real(logits, targets)
        return (s * float("nan") if calls["n"] > 4 else s), n  # 2 micro-batches a step: NaN from step 3

    monkeypatch.setattr(common, "nll_sum", nan_from_step_3)
    with pytest.raises(TrainingDiverged, match="step 3.*step-0000002"):
        _run(tmp_path, "n", "max_steps=4", "save_every=1")
    assert sorted(p.name for p in (tmp_path / "n" / "checkpoints").iterdir()) == ["step-0000001", "step-0000002"]
    assert not (tmp_path / "n" / "model").exists() and not (tmp_path / "n" / "result.json").exists()
