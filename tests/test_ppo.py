"""The PPO recipe on tiny random-init models: values of packed sequences equal each sequence alone, read where each
token is predicted; step 1 is the hand value (KL 0, gamma = lambda = 1: every return is the score, so the loss is
vf_coef x 0.5 mean (V - score)^2, the whitened advantages' mean 0) from rollouts and values reproduced outside the
recipe, with the missing-EOS penalty; the KL is 0 at step 1 and grows; micro-batch invariance; exact resume (also
shared LoRA + PPO-ptx + adaptive beta); a short run learns the reward; the shared mode keeps one base and trains
both adapters; value_lr trains the value model alone, as freeze_policy_steps does first; Llama, Qwen2 and GPT-2,
full and shared; bad settings are one line and exit 2."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import (
    chat_rows,
    cli_fails,
    read_metrics,
    resumed_equals_uninterrupted,
    train_losses,
    write_jsonl,
)
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from posttrain.config import load_config
from posttrain.data.collate import packed_batch
from posttrain.data.render import IGNORE, Rendered
from posttrain.models.forward import token_values
from posttrain.models.tiny import tiny_config, tiny_model
from posttrain.recipes import ppo
from posttrain.recipes.ppo import PPOConfig

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = ["batch_size=6", "mini_batch_size=3", "ppo_epochs=2", "max_steps=2", "max_new_tokens=12", "prompts.pool=12",
        "optim.lr=1e-3", "optim.warmup_steps=0", "micro_batch_size=6", "max_seq_len=256", "log_samples=100",
        "rewards=[grpo_rewards:letters]"]


def run(model_dir, out, *overrides) -> dict:
    cfg = load_config(PPOConfig, None, [f"model={model_dir}", f"output_dir={out}", *BASE, *overrides])
    return ppo.main(cfg)


@pytest.fixture(scope="module")
def value_dir(tok, tmp_path_factory):
    """A saved tiny Llama sequence classifier (a fixed head): a value model a test can reproduce outside."""
    torch.manual_seed(3)
    config = tiny_config("llama", len(tok), hidden=32, layers=2, heads=4, pad_token_id=tok.pad_token_id)
    config.num_labels = 1
    d = tmp_path_factory.mktemp("value")
    AutoModelForSequenceClassification.from_config(config).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_token_values_of_packed_sequences_equal_each_alone(value_dir):
    model = AutoModelForSequenceClassification.from_pretrained(value_dir).eval()
    seqs = [([5, 6, 7], [8, 9]), ([10, 11], [12, 13, 14, 15]), ([16], [17])]
    rendered = [Rendered(p + r, [IGNORE] * len(p) + r) for p, r in seqs]
    batch = packed_batch([rendered[:2], rendered[2:]], 0, doc_ids=True)
    with torch.no_grad():
        v, mask = token_values(model.base_model, model.score, batch, 3)
        assert v.shape == (3, 4) and mask.sum(1).tolist() == [2, 4, 1]
        for d, (p, r) in enumerate(seqs):
            hidden = model.base_model(input_ids=torch.tensor([p + r])).last_hidden_state
            alone = model.score(hidden)[0, len(p) - 1:-1, 0]   # the state each response token is chosen in
            assert torch.allclose(v[d, :len(r)], alone, atol=1e-5)
        assert torch.all(v[~mask] == 0)


def test_step_one_is_the_hand_value(model_dir, value_dir, tok, tmp_path):
    """KL is 0 at step 1 and gamma = lambda = 1, so every token's return is its sample's score (letters minus 0.5
    when it did not stop) and its advantage score - V; whitened, the advantages average 0 over the tokens, and with
    ratio 1 (one update) the loss is vf_coef x 0.5 x the token mean of (V - score)^2."""
    from posttrain.models.load import load_model
    from posttrain.recipes import common
    from posttrain.recipes.grpo import step_seed
    from posttrain.rollout.generate import generate
    from posttrain.world import FAMILIES, sample_tasks

    out = tmp_path / "h"
    m = run(model_dir, out, "max_steps=1", "ppo_epochs=1", "mini_batch_size=0", "gamma=1", "lam=1",
            "missing_eos_penalty=0.5", "vf_coef=0.3", f"value_model={value_dir}", "optim.max_grad_norm=0")
    pool = sample_tasks(12, "train", seed=0, families=list(FAMILIES), distinct=True)
    tasks = [pool[i] for i in common.DataStream(len(pool), 6, 0).step_units(0)]
    samples = generate(load_model(str(model_dir)), tok, [t.messages for t in tasks], max_new_tokens=12,
                       temperature=1.0, seed=step_seed(0, 0))
    logged = [s["response"] for s in json.loads((out / "samples.jsonl").read_text().splitlines()[0])["samples"]]
    assert logged == [s["text"] for s in samples]
    score = [s["text"].count("e") / max(len(s["text"]), 1) - (0.0 if s["stopped"] else 0.5) for s in samples]
    vm = AutoModelForSequenceClassification.from_pretrained(value_dir).eval()
    se, n, returns, values = 0.0, 0, [], []
    with torch.no_grad():
        for s, sc in zip(samples, score):
            ids = s["prompt_ids"] + s["token_ids"]
            v = vm.score(vm.base_model(input_ids=torch.tensor([ids])).last_hidden_state)[0, :, 0]
            v = v[len(s["prompt_ids"]) - 1:len(ids) - 1]
            se += float(((v - sc) ** 2).sum())
            n += len(s["token_ids"])
            returns += [sc] * len(v)
            values += v.tolist()
    r, v = torch.tensor(returns, dtype=torch.float64), torch.tensor(values, dtype=torch.float64)
    assert m["val/explained_variance"] == pytest.approx(1 - float((r - v).var() / r.var()), abs=1e-5)
    assert m["train/loss"] == pytest.approx(0.3 * 0.5 * se / n, abs=2e-5)
    assert m["loss/value_avg"] == pytest.approx(0.5 * se / n, abs=2e-5)
    assert m["objective/scores"] == pytest.approx(sum(score) / 6, abs=1e-6)
    assert m["objective/kl"] == pytest.approx(0.0, abs=1e-7) and m["val/ratio"] == pytest.approx(1.0, abs=1e-6)
    assert m["val/num_eos_tokens"] == sum(s["stopped"] for s in samples)


def test_kl_is_zero_at_step_one_and_grows(model_dir, tmp_path):
    out = tmp_path / "kl"
    run(model_dir, out, "max_steps=3", "optim.lr=3e-3", "kl_estimator=k3")
    kls = [r["objective/kl"] for r in read_metrics(out)]
    assert kls[0] == pytest.approx(0.0, abs=1e-7) and kls[-1] > 1e-4, kls


def test_micro_batch_invariance(model_dir, tmp_path):
    run(model_dir, tmp_path / "one", "micro_batch_size=6")
    run(model_dir, tmp_path / "three", "micro_batch_size=1")
    a, b = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "three")
    assert [r["train/grad_norm"] for r in a] == pytest.approx([r["train/grad_norm"] for r in b], rel=1e-4)
    assert train_losses(tmp_path / "one") == pytest.approx(train_losses(tmp_path / "three"), abs=1e-6)


@pytest.mark.parametrize("extra", [[], ["lora.enabled=true", "shared=true", "target_kl=0.01", "kl_horizon=10",
                                        "ptx_coef=0.5", "ptx_batch_size=2"]])
def test_resume_continues_exactly(model_dir, tmp_path, interrupt_at, extra):
    ptx = write_jsonl(tmp_path / "ptx.jsonl", chat_rows(8))
    args = ["max_steps=4", "save_every=2", f"ptx_data={ptx}", *extra]
    run(model_dir, tmp_path / "full", *args)
    with interrupt_at(3):                                   # in rollout step 3, at its first update
        run(model_dir, tmp_path / "cut", *args)
    run(model_dir, tmp_path / "cut", *args)
    full, cut = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "cut")
    assert [r["beta"] for r in cut] == [r["beta"] for r in full]
    if extra:
        assert full[-1]["beta"] != 0.05 and "loss/ptx_avg" in full[-1]    # the controller moved it; ptx ran
    resumed_equals_uninterrupted(tmp_path / "full", tmp_path / "cut", "model" if not extra else "adapter")


def test_a_short_run_learns_the_reward(model_dir, tmp_path):
    out = tmp_path / "learn"
    run(model_dir, out, "max_steps=10", "optim.lr=1e-2", "beta=0", "rewards=[grpo_rewards:short]",
        "max_new_tokens=24", "missing_eos_penalty=0", "batch_size=8", "mini_batch_size=4", "micro_batch_size=8")
    scores = [r["objective/scores"] for r in read_metrics(out)]
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3 + 0.05, scores


def test_shared_mode_keeps_one_base_and_trains_both_adapters(model_dir, tmp_path, monkeypatch):
    """One peft model: both adapters change, the base does not; the saved adapter is the policy's alone; the
    reference log-probs are the base's (KL 0 at step 1)."""
    seen = {}
    real = ppo.SharedAdapters.__init__

    def spy(self, model):
        real(self, model)
        seen["start"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        real_delete = model.delete_adapter

        def delete(name):  # the value adapter goes before the policy is saved: look at the weights then
            seen["end"] = {n: p.detach().clone() for n, p in model.named_parameters()}
            real_delete(name)

        model.delete_adapter = delete

    monkeypatch.setattr(ppo.SharedAdapters, "__init__", spy)
    out = tmp_path / "shared"
    m = run(model_dir, out, "lora.enabled=true", "shared=true", "optim.lr=1e-2", "max_steps=2")
    start, end = seen["start"], seen["end"]
    assert start.keys() == end.keys()
    moved = {n for n in start if not torch.equal(start[n], end[n])}
    assert any(".lora_B.default." in n for n in moved) and any(".lora_B.value." in n for n in moved)
    assert not any("lora_" not in n for n in moved), sorted(n for n in moved if "lora_" not in n)[:3]
    assert read_metrics(out)[0]["objective/kl"] == pytest.approx(0.0, abs=1e-7) and m["loss/value_avg"] > 0
    saved = load_file(out / "adapter" / "adapter_model.safetensors")
    assert saved and not any(".value." in k for k in saved)
    assert AutoModelForCausalLM.from_pretrained(out / "model") is not None


@pytest.mark.parametrize("mode", [[], ["lora.enabled=true", "shared=true"]])
def test_value_lr_is_the_value_models_own(model_dir, tmp_path, mode):
    """optim.lr=0 with value_lr > 0: the policy stays where it started (KL 0, the same samples as a run where
    nothing trains) and the value model (a model of its own, or the shared base's value adapter and head) trains:
    step 2's value loss on those same samples differs from the frozen run's."""
    one = ["optim.lr=0", "max_steps=2", "ppo_epochs=1", "mini_batch_size=0", *mode]  # one update a step
    run(model_dir, tmp_path / "frozen", *one)
    run(model_dir, tmp_path / "vlr", "value_lr=1e-2", *one)
    frozen, vlr = read_metrics(tmp_path / "frozen"), read_metrics(tmp_path / "vlr")
    assert [r["objective/kl"] for r in vlr] == pytest.approx([0.0, 0.0], abs=1e-7)
    assert [r["objective/scores"] for r in vlr] == [r["objective/scores"] for r in frozen]
    assert vlr[0]["loss/value_avg"] == pytest.approx(frozen[0]["loss/value_avg"], abs=1e-7)
    assert abs(vlr[1]["loss/value_avg"] - frozen[1]["loss/value_avg"]) > 1e-4


@pytest.mark.parametrize("mode", [[], ["lora.enabled=true", "shared=true"]])
def test_freeze_policy_steps_trains_the_value_model_alone_first(model_dir, tmp_path, mode):
    """freeze_policy_steps=1: step 1 leaves the policy as it was (KL 0 again at step 2, where an unfrozen run has
    moved) and trains the value model (step 2's value loss differs from a run with lr 0); from step 2 on both."""
    one = ["ppo_epochs=1", "mini_batch_size=0", *mode]
    run(model_dir, tmp_path / "free", "max_steps=3", "optim.lr=3e-3", *one)
    run(model_dir, tmp_path / "frozen1", "max_steps=3", "optim.lr=3e-3", "freeze_policy_steps=1", *one)
    run(model_dir, tmp_path / "still", "max_steps=2", "optim.lr=0", *one)
    free, frozen1, still = (read_metrics(tmp_path / d) for d in ("free", "frozen1", "still"))
    assert free[1]["objective/kl"] > 1e-4
    assert [r["objective/kl"] for r in frozen1[:2]] == pytest.approx([0.0, 0.0], abs=1e-7)
    assert frozen1[1]["objective/scores"] == still[1]["objective/scores"]      # the same samples as no training
    assert abs(frozen1[1]["loss/value_avg"] - still[1]["loss/value_avg"]) > 1e-4
    assert frozen1[2]["objective/kl"] > 1e-4


def test_the_shared_modes_value_group_is_the_value_adapter_and_head(model_dir, tmp_path):
    from posttrain.recipes import common

    cfg = load_config(PPOConfig, None, [f"model={model_dir}", f"output_dir={tmp_path}", *BASE, "lora.enabled=true",
                                        "shared=true", "value_lr=1e-2"])
    models = ppo.Models(cfg, common.make_accelerator("fp32", 0, 0), 0)
    names = {id(p): n for n, p in models.model.named_parameters()}
    policy, value = models.groups
    assert value["lr"] == 1e-2 and "lr" not in policy
    assert policy["params"] and all(".default." in names[id(p)] for p in policy["params"])
    lora = [names[id(p)] for p in value["params"] if id(p) in names]
    assert lora and all(".value." in n for n in lora) and len(lora) == len(policy["params"])
    assert any(p is models.value.weight for p in value["params"])


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("mode", [[], ["lora.enabled=true", "shared=true"]])
def test_every_arch_trains_full_and_shared(arch, mode, tok, tmp_path):
    d = tmp_path / arch
    tiny_model(arch, tok, seed=0, hidden=32, layers=2, heads=4).save_pretrained(d)
    tok.save_pretrained(d)
    run(d, tmp_path / "run", "max_steps=2", *mode)
    curve = train_losses(tmp_path / "run")
    assert len(curve) == 2 and all(c == c for c in curve)
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model") is not None


def test_the_value_model_starts_from_the_reward_model():
    def cfg(*o):
        return load_config(PPOConfig, None, ["model=SFT", *o])

    assert ppo.value_start(cfg("rewards=[rm:RM]")) == "RM"
    assert ppo.value_start(cfg("rewards=[rm:RM,world]")) == "SFT"
    assert ppo.value_start(cfg("rewards=[world]")) == "SFT"
    assert ppo.value_start(cfg("rewards=[rm:RM]", "value_model=V")) == "V"


def test_a_new_value_head_starts_at_zero(model_dir, value_dir):
    """On a causal LM's body the head is new and zeroed (the first values are 0); a reward model keeps its own."""
    assert torch.count_nonzero(ppo._load_value_model(str(model_dir)).score.weight) == 0
    kept = ppo._load_value_model(str(value_dir)).score.weight
    assert torch.equal(kept, AutoModelForSequenceClassification.from_pretrained(value_dir).score.weight)
    assert torch.count_nonzero(kept) > 0


def test_bad_settings(model_dir, tmp_path, capsys):
    def argv(name, *more):
        return ["ppo", f"model={model_dir}", f"output_dir={tmp_path / name}", *BASE, *more]

    assert "set lora.enabled=true" in cli_fails(capsys, argv("s", "shared=true"))
    assert "mini_batch_size=4 does not divide batch_size=6" in cli_fails(capsys, argv("m", "mini_batch_size=4"))
    assert "ptx_coef > 0 needs ptx_data" in cli_fails(capsys, argv("p", "ptx_coef=0.1"))
    err = cli_fails(capsys, argv("imp", "rewards=[no_such_module:f]"))
    assert "rewards: cannot import 'no_such_module:f'" in err, err


def test_a_kl_above_max_kl_stops_the_run_and_keeps_the_last_checkpoint(model_dir, tmp_path):
    from posttrain.errors import TrainingDiverged

    out = tmp_path / "kl"
    with pytest.raises(TrainingDiverged, match=r"KL to the reference .* > max_kl=1e-06 at step 2; stopped without "
                                               r"saving; the last good checkpoint is .*step-0000001"):
        run(model_dir, out, "max_steps=4", "save_every=1", "optim.lr=3e-2", "max_kl=1e-6", "kl_estimator=k3")
    assert not (out / "model").exists() and not (out / "result.json").exists()


def test_a_lora_reward_model_scores_on_the_shared_base_as_its_merged_model(model_dir, tmp_path):
    """`rewards=rm:ADAPTER` in the shared mode loads the reward adapter onto the policy's base (a third adapter, no
    second model); its scores of the step's samples equal `posttrain rm score`'s on the merged reward model."""
    from conftest import preference_rows

    from posttrain.data.types import Conversation, Message
    from posttrain.recipes import rm

    prefs = write_jsonl(tmp_path / "prefs.jsonl", preference_rows(12))
    cfg = load_config(rm.RMConfig, None, [f"model={model_dir}", f"data={prefs}", f"output_dir={tmp_path / 'rm'}",
                                          "optim.lr=1e-2", "batch_size=4", "micro_batch_size=4", "max_steps=3",
                                          "data.max_seq_len=64", "lora.enabled=true"])
    rm.main(cfg)
    out = tmp_path / "ppo"
    m = run(model_dir, out, "lora.enabled=true", "shared=true", f"rewards=[rm:{tmp_path / 'rm' / 'adapter'}]",
            "missing_eos_penalty=0", "max_steps=1", "ppo_epochs=1", "mini_batch_size=0")
    logged = json.loads((out / "samples.jsonl").read_text().splitlines()[0])["samples"]
    from posttrain.recipes import common
    from posttrain.world import FAMILIES, sample_tasks

    pool = sample_tasks(12, "train", seed=0, families=list(FAMILIES), distinct=True)
    tasks = [pool[i] for i in common.DataStream(len(pool), 6, 0).step_units(0)]
    scorer, stok, pad = rm.load_scorer(str(tmp_path / "rm" / "model"))
    convs = [Conversation([*t.messages, Message("assistant", s["response"])]) for t, s in zip(tasks, logged)]
    want = [r["score"] for r in rm.score_examples(scorer, stok, convs, pad, 256)]
    assert [s["score"] for s in logged] == pytest.approx(want, abs=1e-5)
    assert m["objective/scores"] == pytest.approx(sum(want) / 6, abs=1e-5)
    with pytest.raises(Exception, match="is on .* not on the policy"):
        run(tmp_path / "ppo" / "model", tmp_path / "ppo2", "lora.enabled=true", "shared=true",
            f"rewards=[rm:{tmp_path / 'rm' / 'adapter'}]", "max_steps=1")
