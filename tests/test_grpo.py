"""The GRPO recipe on a tiny random-init Llama: per-token log-probs of packed sequences equal each sequence alone;
step 1 is the hand value -sum(A_i n_i) / N (ratio 1, beta 0, token mean) from rollouts reproduced outside the
recipe; the KL to the reference is 0 at step 1; micro-batch invariance; exact resume; a short run learns a
reward; LoRA; bad rewards are one line and exit 2, and a NaN reward drops its sample."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import cli_fails, read_metrics, resumed_equals_uninterrupted, train_losses
from safetensors.torch import load_file

from posttrain.config import load_config
from posttrain.data.collate import packed_batch
from posttrain.data.render import IGNORE, Rendered
from posttrain.losses.rl import group_advantages
from posttrain.models.forward import token_logps
from posttrain.recipes import grpo
from posttrain.recipes.grpo import GRPOConfig

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = ["batch_size=3", "group_size=4", "max_steps=2", "max_new_tokens=12", "prompts.pool=12", "optim.lr=1e-3",
        "optim.warmup_steps=0", "micro_batch_size=12", "max_seq_len=256", "log_samples=100"]


def run(model_dir, out, *overrides) -> dict:
    cfg = load_config(GRPOConfig, None, [f"model={model_dir}", f"output_dir={out}", *BASE, *overrides])
    return grpo.main(cfg)


def weights(out):
    return load_file(out / "model" / "model.safetensors")


def test_token_logps_of_packed_sequences_equal_each_alone(model_dir):
    from posttrain.models.load import load_model

    model = load_model(str(model_dir)).eval()
    seqs = [([5, 6, 7], [8, 9]), ([10, 11], [12, 13, 14, 15]), ([16], [17])]
    rendered = [Rendered(p + r, [IGNORE] * len(p) + r) for p, r in seqs]
    batch = packed_batch([rendered[:2], rendered[2:]], 0, doc_ids=True)
    with torch.no_grad():
        lp, mask, ent = token_logps(model, batch, 3, with_entropy=True)
        assert lp.shape == (3, 4) and mask.sum(1).tolist() == [2, 4, 1]
        for d, (p, r) in enumerate(seqs):
            logits = model(input_ids=torch.tensor([p + r])).logits[0, len(p) - 1:-1].float()
            alone = torch.log_softmax(logits, -1).gather(1, torch.tensor(r)[:, None])[:, 0]
            assert torch.allclose(lp[d, :len(r)], alone, atol=1e-5)
            probs = logits.softmax(-1)
            assert torch.allclose(ent[d, :len(r)], -(probs * probs.log()).sum(-1), atol=1e-4)
        assert torch.all(lp[~mask] == 0)


def test_a_groups_prompt_once_equals_each_sample_alone(model_dir):
    """GRPO's samples of one prompt laid out with the prompt once (`samples_batch(share_prompts=True)`, a 4-D
    mask): the same per-token log-probs as each sample alone, in fewer tokens; no repeated prompt: plain packing."""
    from posttrain.models.load import load_model
    from posttrain.rollout.generate import samples_batch

    model = load_model(str(model_dir)).eval()
    prompts = [[5, 6, 7, 8], [10, 11], [16]]
    responses = [[20, 21], [22], [23, 24, 25], [26, 27], [28, 29, 30, 31], [32]]
    samples = [{"prompt_ids": prompts[i // 2], "token_ids": r} for i, r in enumerate(responses)]
    chunk = [4, 0, 1, 2, 5, 3]
    shared, order = samples_batch(samples, chunk, 0, share_prompts=True)
    plain, plain_order = samples_batch(samples, chunk, 0)
    assert shared["attention_mask"].dim() == 4 and sorted(order) == sorted(chunk)
    assert int((shared["input_ids"] != 0).sum()) == sum(len(p) - 1 for p in prompts) + sum(map(len, responses)) + 6
    with torch.no_grad():
        lp, mask, _ = token_logps(model, shared, len(order))
        lp_plain, _, _ = token_logps(model, plain, len(plain_order))
    for k, i in enumerate(order):
        r = responses[i]
        assert mask[k].sum() == len(r)
        assert torch.allclose(lp[k, :len(r)], lp_plain[plain_order.index(i), :len(r)], atol=1e-5)
    alone, alone_order = samples_batch(samples, [0, 2, 4], 0, share_prompts=True)   # three prompts, once each
    assert "attention_mask" not in alone and sorted(alone_order) == [0, 2, 4]


def test_step_one_is_the_hand_value(model_dir, tok, tmp_path, monkeypatch):
    """With beta 0 and one iteration the ratio is 1, so the token-mean loss is -sum_i A_i n_i / N over the step's
    samples. The rollouts are drawn again outside the recipe (same policy, prompts and seed)."""
    from posttrain.models.load import load_model
    from posttrain.recipes import common
    from posttrain.rollout.generate import generate
    from posttrain.world import sample_tasks

    out = tmp_path / "h"
    m = run(model_dir, out, "beta=0", "max_steps=1", "rewards=[grpo_rewards:letters]")
    pool = sample_tasks(12, "train", seed=0, families=grpo.VERIFIABLE, distinct=True)

    tasks = [pool[i] for i in common.DataStream(len(pool), 3, 0).step_units(0)]
    samples = generate(load_model(str(model_dir)), tok, [t.messages for t in tasks], max_new_tokens=12,
                       temperature=1.0, seed=grpo.step_seed(0, 0), n=4)
    logged = [s["response"] for s in json.loads((out / "samples.jsonl").read_text().splitlines()[0])["samples"]]
    assert logged == [s["text"] for s in samples]                 # the recipe sampled exactly these
    r = torch.tensor([s["text"].count("e") / max(len(s["text"]), 1) for s in samples])
    adv = group_advantages(r, 4, "grpo")
    n = torch.tensor([len(s["token_ids"]) for s in samples], dtype=torch.float32)
    assert m["train/loss"] == pytest.approx(float(-(adv * n).sum() / n.sum()), abs=1e-5)
    assert m["reward"] == pytest.approx(float(r.mean()), abs=1e-6)
    assert m["completions/mean_length"] == pytest.approx(float(n.mean()))
    assert "kl" not in m


def test_kl_to_the_reference_is_zero_at_step_one_and_grows(model_dir, tmp_path):
    out = tmp_path / "kl"
    run(model_dir, out, "beta=0.1", "max_steps=3", "optim.lr=3e-3", "rewards=[grpo_rewards:letters]")
    kls = [r["kl"] for r in read_metrics(out)]
    assert kls[0] == pytest.approx(0.0, abs=1e-7) and kls[-1] > 1e-5, kls


def test_micro_batch_invariance(model_dir, tmp_path):
    run(model_dir, tmp_path / "one", "micro_batch_size=12", "rewards=[grpo_rewards:letters]")
    run(model_dir, tmp_path / "three", "micro_batch_size=4", "rewards=[grpo_rewards:letters]")
    norms = [[r["train/grad_norm"] for r in read_metrics(tmp_path / d)] for d in ("one", "three")]
    assert norms[0] == pytest.approx(norms[1], rel=1e-5) and min(norms[0]) > 0.01
    assert train_losses(tmp_path / "one") == pytest.approx(train_losses(tmp_path / "three"), abs=1e-6)
    a, b = weights(tmp_path / "one"), weights(tmp_path / "three")   # Adam divides by tiny second moments:
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 2e-5   # rounding shows at 1e-5 of lr 1e-3


@pytest.mark.parametrize("extra", [[], ["iterations=2", "lora.enabled=true", "advantage=rloo",
                                        "loss_aggregation=constant"]])
def test_resume_continues_exactly(model_dir, tmp_path, interrupt_at, extra):
    args = ["max_steps=4", "save_every=2", "rewards=[grpo_rewards:letters]", *extra]
    run(model_dir, tmp_path / "full", *args)
    with interrupt_at(3):                                   # in rollout step 3 (its first update with iterations)
        run(model_dir, tmp_path / "cut", *args)
    run(model_dir, tmp_path / "cut", *args)
    resumed_equals_uninterrupted(tmp_path / "full", tmp_path / "cut", "model" if not extra else "adapter")


def test_a_short_run_learns_the_reward(model_dir, tmp_path):
    out = tmp_path / "learn"
    run(model_dir, out, "max_steps=8", "optim.lr=1e-2", "beta=0", "batch_size=4", "micro_batch_size=16",
        "rewards=[grpo_rewards:short]", "max_new_tokens=24")
    rewards = [r["reward"] for r in read_metrics(out)]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.05, rewards


def fails_in_the_run(capsys, argv: list[str]) -> str:
    """A run that stops at its first step: exit 2, no traceback, the last stderr line `error: ...` (the lines
    before it are the run's progress bars)."""
    from posttrain.cli import main as cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err[-1].startswith("error: "), err
    assert not any("Traceback" in line for line in err), err
    return err[-1]


def test_bad_rewards(model_dir, tmp_path, capsys):
    def argv(name, *more):
        return ["grpo", f"model={model_dir}", f"output_dir={tmp_path / name}", *BASE, *more]

    err = fails_in_the_run(capsys, argv("boom", "rewards=[grpo_rewards:boom]"))
    assert "rewards: 'grpo_rewards:boom' raised RuntimeError: the reward server is down" in err, err
    err = fails_in_the_run(capsys, argv("str", "rewards=[grpo_rewards:not_a_number]"))
    assert "returned '0.5' (str), not a number" in err, err
    err = cli_fails(capsys, argv("imp", "rewards=[no_such_module:f]"))
    assert "rewards: cannot import 'no_such_module:f' (ModuleNotFoundError" in err, err
    assert "is not world, similarity, rm:PATH or module:function" in cli_fails(capsys, argv("name", "rewards=[gold]"))
    err = cli_fails(capsys, argv("w", "rewards=[world,grpo_rewards:short]", "reward_weights=[1.0]"))
    assert "reward_weights: 1 weights for 2 rewards" in err, err


def test_a_nan_reward_drops_its_sample(model_dir, tmp_path):
    m = run(model_dir, tmp_path / "nan", "max_steps=1", "rewards=[grpo_rewards:nan_for_empty_meta]")
    assert m["rewards/dropped"] > 0 and m["train/loss"] == m["train/loss"]   # counted, and the loss is finite


def test_a_nan_reward_takes_its_groups_mean():
    r = torch.tensor([1.0, float("nan"), 0.0, 0.5, float("nan"), float("nan"), float("nan"), float("nan")])
    assert grpo.impute_group_mean(r, 4).tolist() == [1.0, 0.5, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0]


def test_a_kl_above_max_kl_stops_the_run_and_keeps_the_last_checkpoint(model_dir, tmp_path):
    from posttrain.errors import TrainingDiverged

    out = tmp_path / "kl"
    args = ["beta=0.1", "max_steps=4", "save_every=1", "optim.lr=3e-2", "rewards=[grpo_rewards:letters]"]
    with pytest.raises(TrainingDiverged, match=r"KL to the reference .* > max_kl=1e-06 at step 2; stopped without "
                                               r"saving; the last good checkpoint is .*step-0000001"):
        run(model_dir, out, *args, "max_kl=1e-6")                  # step 1: KL 0 (policy == reference)
    assert not (out / "model").exists() and not (out / "result.json").exists()


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
@pytest.mark.parametrize("mode", [[], ["lora.enabled=true"]])
def test_other_archs_train_full_and_lora(arch, mode, tok, tmp_path):
    """GRPO steps on tiny Qwen2 and GPT-2 (Llama: the tests above), full and LoRA (reference = base, adapters off);
    the saved model loads with plain transformers."""
    from transformers import AutoModelForCausalLM

    from posttrain.models.tiny import tiny_model

    d = tmp_path / arch
    tiny_model(arch, tok, seed=0, hidden=32, layers=2, heads=4).save_pretrained(d)
    tok.save_pretrained(d)
    m = run(d, tmp_path / "run", "rewards=[grpo_rewards:letters]", "beta=0.1", *mode)
    curve = train_losses(tmp_path / "run")
    assert len(curve) == 2 and all(c == c for c in curve) and m["kl"] == m["kl"]
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model") is not None


def test_similarity_reward_is_partial_credit_towards_the_reference():
    from posttrain.world import sample_tasks

    tasks = {t.family: t for t in sample_tasks(60, "train", 0, families=["arithmetic", "sort_words", "list_n"])}
    arith, sort, lst = tasks["arithmetic"], tasks["sort_words"], tasks["list_n"]

    def r(task, text, stopped=True):
        return grpo.similarity_reward(task.messages, text, {"task": task, "stopped": stopped})

    assert r(arith, arith.reference) == 1.0 and r(sort, f"  {sort.reference}\n") == 1.0
    wrong = arith.reference[:-2] + ("0" if arith.reference[-2] != "0" else "1") + "."   # one digit off
    n = len(arith.reference)
    assert r(arith, wrong) == pytest.approx(2 * (n - 1) / (2 * n))                   # 2 x matched / total length
    assert r(arith, "") == 0.0 and r(arith, arith.reference, stopped=False) == 0.0   # no stop: nothing
    assert r(lst, lst.reference) == 0.0          # many right answers: no reference to be close to
    first_word = sort.reference.split(", ")[0]
    assert 0 < r(sort, first_word) < r(sort, ", ".join(sort.reference.split(", ")[:2])) < 1
