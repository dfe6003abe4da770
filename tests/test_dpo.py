"""The DPO family recipe: at step 1 the policy is the reference, so the DPO loss is exactly log 2; the cached
reference log-probs equal a live reference; batch x accumulation invariance; exact resume; every variant trains;
LoRA; a golden loss curve; bad input."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from conftest import preference_rows, read_metrics, train_losses, write_jsonl
from safetensors.torch import load_file

from posttrain.config import load_config
from posttrain.errors import UserError
from posttrain.recipes import dpo
from posttrain.recipes.dpo import DPOConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def pref_file(tmp_path):
    return write_jsonl(tmp_path / "prefs.jsonl", preference_rows(scores=False))


def run(model_dir, data, out, *overrides) -> dict:
    cfg = load_config(DPOConfig, None, [f"model={model_dir}", f"data={data}", f"output_dir={out}", "optim.lr=1e-3",
                                        "batch_size=8", "micro_batch_size=4", "max_steps=3", "data.max_seq_len=64",
                                        *overrides])
    return dpo.main(cfg)


def metrics(out) -> list[dict]:
    return read_metrics(out)


def losses(out) -> list[float]:
    return train_losses(out)


def test_step_one_is_log_2_with_zero_rewards(model_dir, pref_file, tmp_path):
    """Before the first update the policy is the reference: h = 0, so every pair's loss is log 2 and the
    rewards and margins are 0 (the cache was computed with the same weights)."""
    run(model_dir, pref_file, tmp_path / "d", "max_steps=1")
    first = metrics(tmp_path / "d")[0]
    assert first["train/loss"] == pytest.approx(math.log(2), abs=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert first[key] == pytest.approx(0.0, abs=1e-6), key
    assert first["rewards/accuracies"] == 0.0  # no pair has chosen > rejected yet
    assert {"logps/chosen", "logps/rejected", "train/pairs_per_s"} <= set(first)


def test_rpo_alpha_adds_the_chosen_nll_at_its_weight(model_dir, pref_file, tmp_path):
    """Step 1: the DPO term is log 2 (policy == reference), so the loss is log 2 + alpha x nll_loss (the mean
    over pairs of the chosen side's NLL per token), and nll_loss is logged as TRL names it; its gradient makes
    the run differ from plain DPO from step 2 on."""
    run(model_dir, pref_file, tmp_path / "r", "max_steps=2", "rpo_alpha=0.5")
    first = metrics(tmp_path / "r")[0]
    assert first["nll_loss"] > 1.0  # a random-init model: several nats per token
    assert first["train/loss"] == pytest.approx(math.log(2) + 0.5 * first["nll_loss"], abs=1e-5)
    run(model_dir, pref_file, tmp_path / "d", "max_steps=2")
    assert "nll_loss" not in metrics(tmp_path / "d")[0]
    assert metrics(tmp_path / "r")[1]["rewards/margins"] != metrics(tmp_path / "d")[1]["rewards/margins"]


def test_cached_reference_equals_a_live_reference(model_dir, tok, pref_file, tmp_path):
    """The reference log-probs computed once (reference/logps.pt) equal those of a second, live copy of the
    starting model on the training micro-batches, to 1e-6 in fp32."""
    from posttrain.models.load import load_model
    from posttrain.recipes import common

    out = tmp_path / "c"
    run(model_dir, pref_file, out, "max_steps=1")
    cached = torch.load(out / "reference" / "logps.pt")["train"]
    cfg = load_config(DPOConfig, None, [f"model={model_dir}", f"data={pref_file}", "data.max_seq_len=64"])
    pairs, _, _ = dpo.build_data(cfg, tok)
    acc = common.make_accelerator("fp32", 0)
    live = load_model(str(model_dir)).eval()
    stream = common.DataStream(len(pairs), 8, 0)
    worst = 0.0
    for step in range(3):
        for chunk in common.shard(stream.step_units(step), 0, 1, 4):
            with torch.no_grad():
                logps, _ = dpo.pair_logps(live, acc, pairs, chunk, tok.pad_token_id)
            worst = max(worst, (logps - cached[chunk]).abs().max().item())
    assert worst <= 1e-6, worst


@pytest.mark.parametrize("micro", [8, 1])
def test_batch_times_accumulation_invariance(model_dir, pref_file, tmp_path, micro):
    """batch 8 as 8x1 and 1x8 (micro x accumulation) and 2x4: the same weights and losses (fp32 rounding)."""
    run(model_dir, pref_file, tmp_path / "ref", "micro_batch_size=2")
    run(model_dir, pref_file, tmp_path / "x", f"micro_batch_size={micro}")
    a, b = load_file(tmp_path / "ref" / "model" / "model.safetensors"), load_file(tmp_path / "x" / "model" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 2e-5
    assert losses(tmp_path / "ref") == pytest.approx(losses(tmp_path / "x"), abs=1e-5)


def test_resume_continues_exactly(model_dir, pref_file, tmp_path, interrupt_at):
    run(model_dir, pref_file, tmp_path / "full", "max_steps=4", "save_every=2")
    with interrupt_at(3):
        run(model_dir, pref_file, tmp_path / "cut", "max_steps=4", "save_every=2")
    run(model_dir, pref_file, tmp_path / "cut", "max_steps=4", "save_every=2")
    a, b = load_file(tmp_path / "full" / "model" / "model.safetensors"), load_file(tmp_path / "cut" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")


def test_a_resume_without_the_reference_cache_recomputes_it_from_the_starting_model(model_dir, pref_file, tmp_path,
                                                                                    interrupt_at):
    run(model_dir, pref_file, tmp_path / "full", "max_steps=4", "save_every=2")
    with interrupt_at(3):
        run(model_dir, pref_file, tmp_path / "cut", "max_steps=4", "save_every=2")
    shutil.rmtree(tmp_path / "cut" / "reference")
    run(model_dir, pref_file, tmp_path / "cut", "max_steps=4", "save_every=2")
    ref = {k: torch.load(tmp_path / d / "reference" / "logps.pt") for k, d in (("a", "full"), ("b", "cut"))}
    assert torch.equal(ref["a"]["train"], ref["b"]["train"])
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")


@pytest.mark.parametrize("loss, extra", [("dpo", []), ("cdpo", ["label_smoothing=0.1"]), ("ipo", []),
                                         ("hinge", []), ("simpo", ["beta=2.0"]), ("orpo", []),
                                         ("dpo", ["rpo_alpha=1.0"])])
def test_every_variant_trains_on_one_fixed_batch(model_dir, pref_file, tmp_path, loss, extra):
    """The whole data set (24 pairs) is every step's batch, so the loss must fall; the held-out metrics are
    logged; SimPO and ORPO write no reference cache."""
    out = tmp_path / (loss + "".join(extra))
    m = run(model_dir, pref_file, out, f"loss={loss}", "batch_size=24", "micro_batch_size=8", "max_steps=4",
            "optim.lr=3e-3", "data.eval_fraction=0.2", *extra)
    got = losses(out)
    assert len(got) == 4 and got[-1] < got[0], got
    assert "eval/loss" in m and "eval/rewards/accuracies" in m
    assert (out / "reference").exists() == (loss not in ("simpo", "orpo"))


def test_lora_trains_adapters_against_the_base_as_reference(model_dir, pref_file, tmp_path):
    out = tmp_path / "lora"
    run(model_dir, pref_file, out, "lora.enabled=true", "lora.r=4", "optim.lr=1e-2", "max_steps=2")
    assert losses(out)[0] == pytest.approx(math.log(2), abs=1e-6)  # zero-init adapters: the policy is the base
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "model" / "config.json").exists()


def test_golden_loss_curve(model_dir, pref_file, tmp_path):
    """A fixed-init tiny Llama on fixed pairs: the first four DPO losses are pinned (fp32, CPU)."""
    run(model_dir, pref_file, tmp_path / "g", "max_steps=4")
    assert losses(tmp_path / "g") == pytest.approx(GOLDEN, abs=2e-5)


GOLDEN = [0.693147, 0.714001, 0.720612, 0.67852]  # step 1 is log 2 (policy == reference)


def test_bad_input(model_dir, pref_file, chat_file, tmp_path):
    with pytest.raises(UserError, match="needs preference pairs"):
        run(model_dir, chat_file, tmp_path / "e")
    with pytest.raises(UserError, match="loss=cdpo needs label_smoothing > 0"):
        run(model_dir, pref_file, tmp_path / "e", "loss=cdpo")
    with pytest.raises(UserError, match="does not use it"):
        run(model_dir, pref_file, tmp_path / "e", "label_smoothing=0.1")
    with pytest.raises(UserError, match="loss=orpo has one already"):
        run(model_dir, pref_file, tmp_path / "e", "loss=orpo", "rpo_alpha=1.0")
    same = write_jsonl(tmp_path / "same.jsonl", [{"prompt": "hi", "chosen": "a", "rejected": "a"}] * 3
                       + [{"prompt": "hi", "chosen": "", "rejected": "b"}])
    with pytest.raises(UserError, match="no preference pairs left.*3 identical chosen and rejected.*1 chosen: "
                                        "empty assistant turn"):
        run(model_dir, same, tmp_path / "e")
