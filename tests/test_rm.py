"""The reward-model recipe: the reward is read at the response's last content token; step 1's loss is Bradley-Terry of
a separate forward pass of the same initial model (with margin and centring too); plain Hugging Face loads the saved
model and scores at the same position, with pad == EOS; batch x accumulation invariance; exact resume; a fixed batch
is learned; the gold accuracy by hand; `rm score` on both formats; bad input."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import cli_fails, launch_failure, preference_rows, read_metrics, train_losses, write_jsonl
from safetensors.torch import load_file

from posttrain.cli import run as cli_run
from posttrain.config import load_config
from posttrain.data.render import Renderer
from posttrain.data.types import Conversation, Message
from posttrain.errors import TrainingDiverged, UserError
from posttrain.recipes import common, rm
from posttrain.recipes.rm import RMConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def pref_file(tmp_path):
    return write_jsonl(tmp_path / "prefs.jsonl", preference_rows(scores=True))


def run(model_dir, data, out, *overrides) -> dict:
    cfg = load_config(RMConfig, None, [f"model={model_dir}", f"data={data}", f"output_dir={out}", "optim.lr=1e-3",
                                       "batch_size=8", "micro_batch_size=4", "max_steps=3", "data.max_seq_len=64",
                                       *overrides])
    return rm.main(cfg)


def metrics(out) -> list[dict]:
    return read_metrics(out)


def losses(out) -> list[float]:
    return train_losses(out)


def weights(out) -> dict[str, torch.Tensor]:
    return load_file(out / "model" / "model.safetensors")


def test_the_reward_is_read_at_the_last_content_token(tok):
    """posttrain's template ends an assistant turn with EOS: the scored tokens are the render without it. With a
    template that writes text after the stop token (DEFAULT_TEMPLATE's blank line) that goes too; an EOS closing an
    earlier turn stays; a pad id at the end is removed (HF would skip it)."""
    from posttrain.models.tokenizer import DEFAULT_TEMPLATE

    conv = Conversation([Message("user", "Reverse the word tiger."), Message("assistant", "regit")])
    r = Renderer(tok).render(conv)
    got = rm.scored(r, {tok.eos_token_id}, tok.pad_token_id)
    assert r.input_ids[-1] == tok.eos_token_id and got == r.input_ids[:-1]
    assert tok.decode(got).endswith("A: regit")

    plain = copy.deepcopy(tok)
    plain.chat_template = DEFAULT_TEMPLATE
    rp = Renderer(plain).render(conv)
    got = rm.scored(rp, {plain.eos_token_id}, plain.pad_token_id)
    cut = rp.input_ids.index(plain.eos_token_id)
    assert len(rp.input_ids) > cut + 1 and got == rp.input_ids[:cut]  # the blank line after EOS goes too
    assert plain.decode(got).endswith("Assistant: regit")

    two = Conversation([Message("user", "List 2 words."), Message("assistant", "apple, river."),
                        Message("user", "Now in upper case."), Message("assistant", "APPLE, RIVER.")])
    r2 = Renderer(tok).render(two)
    got = rm.scored(r2, {tok.eos_token_id}, tok.pad_token_id)
    assert got == r2.input_ids[:-1] and tok.eos_token_id in got  # the first turn's EOS is inside
    pad_end = copy.deepcopy(r)
    pad_end.input_ids[-2] = tok.pad_token_id  # a response whose last content token is the pad id
    assert rm.scored(pad_end, {tok.eos_token_id}, tok.pad_token_id) == r.input_ids[:-2]


@pytest.mark.parametrize("extra", [[], ["margin_scale=0.5", "center_coef=0.01"]])
def test_step_one_loss_is_bradley_terry_of_a_separate_forward_pass(model_dir, tok, pref_file, tmp_path, extra):
    """The same initial model (body from model_dir, head after seeding with 0), loaded here with plain HF: each of
    step 1's 8 pairs scored alone (unpadded, so at its last token); -logsigmoid(r_c - r_r - margin) (+ centring)
    averaged by hand equals the run's step-1 loss to 1e-6. The margin is 0.5 x (score_chosen - score_rejected)."""
    from transformers import AutoModelForSequenceClassification

    got = run(model_dir, pref_file, tmp_path / "r", "max_steps=1", *extra)
    cfg = load_config(RMConfig, None, [f"model={model_dir}", f"data={pref_file}", "data.max_seq_len=64", *extra])
    pairs, _, _ = rm.build_data(cfg, tok)
    torch.manual_seed(0)
    live = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    rows = preference_rows(scores=True)
    scale, coef = (0.5, 0.01) if extra else (0.0, 0.0)
    total = 0.0
    for i in common.DataStream(len(pairs), 8, 0).step_units(0):
        with torch.no_grad():
            rc, rr = (live(input_ids=torch.tensor([s])).logits[0, 0].item() for s in pairs.seqs[i])
        margin = scale * (rows[i]["score_chosen"] - rows[i]["score_rejected"])
        total += -F.logsigmoid(torch.tensor(rc - rr - margin, dtype=torch.float64)).item() + coef * (rc + rr) ** 2
    assert got["train/loss"] == pytest.approx(total / 8, abs=1e-6)
    assert metrics(tmp_path / "r")[0]["train/loss"] == pytest.approx(total / 8, abs=1e-6)
    assert {"accuracy", "margin", "mean_reward", "min_reward", "max_reward", "train/pairs_per_s"} <= set(got)


@pytest.fixture(scope="module")
def eos_pad_model_dir(tok, tmp_path_factory):
    """A tiny Llama whose tokenizer pads with its EOS (as Llama and Qwen checkpoints often do), saved without a
    pad_token_id in its config (as most causal LMs are)."""
    from posttrain.models.tiny import tiny_model

    t = copy.deepcopy(tok)
    t.pad_token = t.eos_token
    model = tiny_model("llama", t, seed=0, hidden=32, layers=2, heads=4)
    model.config.pad_token_id = None
    d = tmp_path_factory.mktemp("eos_pad")
    model.save_pretrained(d)
    t.save_pretrained(d)
    return d


def test_plain_hf_scores_at_the_same_position_with_pad_equal_to_eos(eos_pad_model_dir, pref_file, tmp_path, capsys):
    """Trained with pad == EOS, saved; plain `AutoModelForSequenceClassification` loads model/ (pad_token_id saved)
    and scores a right-padded batch of 5 sequences of different lengths (one with an EOS inside, closing an earlier
    turn) as `posttrain rm score` does, and as each sequence alone, to 1e-5."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "r"
    run(eos_pad_model_dir, pref_file, out, "max_steps=2", "optim.lr=1e-2")
    rows = [{"prompt": "What is 2 + 3?", "completion": "2 + 3 = 5."},
            {"prompt": "Reverse the word tiger.", "completion": "regit"},
            {"prompt": [{"role": "user", "content": "List 2 words."}, {"role": "assistant", "content": "apple, river."},
                        {"role": "user", "content": "Now in upper case."}], "completion": "APPLE, RIVER."},
            {"prompt": "List 3 words.", "completion": "apple, river, stone."},
            {"prompt": "Hi", "completion": "ok"}]
    data = write_jsonl(tmp_path / "pc.jsonl", rows)
    capsys.readouterr()
    assert rm.score_cli(["--model", str(out / "model"), "--data", str(data), "--json"]) == 0
    ours = torch.tensor([r["score"] for r in json.loads(capsys.readouterr().out)])

    hf = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    tok = AutoTokenizer.from_pretrained(out / "model")
    assert hf.config.pad_token_id == tok.eos_token_id == tok.pad_token_id
    from posttrain.data.formats import load_examples

    _, examples = load_examples(str(data))
    renderer = Renderer(tok)
    seqs = [rm.scored(renderer.render(e), set(renderer.stop_token_ids()), tok.pad_token_id) for e in examples]
    assert len({len(s) for s in seqs}) == 5 and tok.eos_token_id in seqs[2]
    batch = tok.pad({"input_ids": seqs}, padding_side="right", return_tensors="pt")
    with torch.no_grad():
        padded = hf(**batch).logits[:, 0]
        alone = torch.tensor([hf(input_ids=torch.tensor([s])).logits[0, 0].item() for s in seqs])
    assert (padded - ours).abs().max().item() < 1e-5
    assert (alone - ours).abs().max().item() < 1e-5
    assert ours.std().item() > 1e-3  # the rows score differently: the comparison can fail


@pytest.mark.parametrize("micro", [8, 1])
def test_batch_times_accumulation_invariance(model_dir, pref_file, tmp_path, micro):
    """batch 8 as 8x1, 1x8 and 2x4 (micro x accumulation): the same weights and losses (fp32 rounding)."""
    run(model_dir, pref_file, tmp_path / "ref", "micro_batch_size=2")
    run(model_dir, pref_file, tmp_path / "x", f"micro_batch_size={micro}")
    a, b = weights(tmp_path / "ref"), weights(tmp_path / "x")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 2e-5
    assert losses(tmp_path / "ref") == pytest.approx(losses(tmp_path / "x"), abs=1e-5)
    assert len(set(losses(tmp_path / "ref"))) == 3


def test_resume_continues_exactly(model_dir, pref_file, tmp_path, interrupt_at):
    run(model_dir, pref_file, tmp_path / "full", "max_steps=4", "save_every=2")
    with interrupt_at(3):
        run(model_dir, pref_file, tmp_path / "cut", "max_steps=4", "save_every=2")
    assert not (tmp_path / "cut" / "model").exists()
    run(model_dir, pref_file, tmp_path / "cut", "max_steps=4", "save_every=2")
    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")


def test_lora_resume_continues_exactly(model_dir, pref_file, tmp_path, interrupt_at):
    """With LoRA the checkpoint holds the adapters and the head (trained in full, `modules_to_save`), not the frozen
    original head: the resumed run ends as the uninterrupted one (adapter/, merged model/, losses). `rm score` on
    adapter/ points to model/; the head as a LoRA target is refused."""
    lora = ("max_steps=4", "save_every=2", "lora.enabled=true", "lora.r=4")
    run(model_dir, pref_file, tmp_path / "full", *lora)
    with interrupt_at(3):
        run(model_dir, pref_file, tmp_path / "cut", *lora)
    assert not (tmp_path / "cut" / "model").exists()
    saved = torch.load(common.latest_checkpoint(tmp_path / "cut" / "checkpoints") / "state.pt",
                       weights_only=False)["models"]["model"]
    assert any("lora_A" in k for k in saved) and any("lora_B" in k for k in saved)
    assert [k for k in saved if "score" in k] == ["base_model.model.score.modules_to_save.default.weight"]
    run(model_dir, pref_file, tmp_path / "cut", *lora)
    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    a, b = (load_file(tmp_path / d / "adapter" / "adapter_model.safetensors") for d in ("full", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
    assert len(set(losses(tmp_path / "full"))) == 4

    with pytest.raises(UserError, match="is a LoRA adapter; score with the merged reward model"):
        rm.score_cli(["--model", str(tmp_path / "full" / "adapter"), "--data", str(pref_file)])
    with pytest.raises(UserError, match="lora.target_modules: 'score' is the reward head"):
        run(model_dir, pref_file, tmp_path / "e", "lora.enabled=true", "lora.target_modules=q_proj,score")
    assert not (tmp_path / "e").exists()


def test_a_fixed_batch_is_learned(model_dir, pref_file, tmp_path):
    """All 24 pairs are every step's batch: the loss falls and the accuracy rises; the saved model is a reward
    model (one label, the pad id in its config); a golden curve pins the first losses (fp32, CPU)."""
    out = tmp_path / "f"
    run(model_dir, pref_file, out, "batch_size=24", "micro_batch_size=8", "max_steps=10", "optim.lr=2e-3")
    ms = metrics(out)
    assert ms[-1]["train/loss"] < ms[0]["train/loss"] - 0.1, [m["train/loss"] for m in ms]
    assert ms[-1]["accuracy"] > ms[0]["accuracy"] + 0.2, [m["accuracy"] for m in ms]
    assert losses(out)[:4] == pytest.approx(GOLDEN, abs=2e-5)
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and config["pad_token_id"] is not None
    assert len(config["id2label"]) == 1


GOLDEN = [0.694849, 0.698235, 0.674501, 0.674377]  # step 1: the seeded head on the fixed-init body


@pytest.mark.slow
def test_two_processes_equal_one(model_dir, pref_file, tmp_path):
    """`accelerate launch --num_processes 2` on CPU (gloo): the same weights, losses, step metrics (gathered over
    the processes) and held-out metrics (reduced over them) as one process."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    args = [f"model={model_dir}", f"data={pref_file}", "max_steps=3", "batch_size=8", "micro_batch_size=2",
            "optim.lr=3e-3", "data.max_seq_len=64", "data.eval_fraction=0.25"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    two = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "posttrain", "rm",
                          f"output_dir={tmp_path / 'two'}", *args], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, launch_failure(two)
    assert "2 processes" in two.stdout
    cfg = load_config(RMConfig, None, [*args, f"output_dir={tmp_path / 'one'}"])
    rm.main(cfg)
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    for key in ("train/loss", "accuracy", "margin", "min_reward", "max_reward"):
        assert [m[key] for m in one[:3]] == pytest.approx([m[key] for m in two[:3]], abs=3e-6), key
    assert {k: v for k, v in one[-1].items() if k.startswith("eval/")} == pytest.approx(
        {k: v for k, v in two[-1].items() if k.startswith("eval/")}, abs=3e-6)


def test_gold_accuracy_by_hand():
    """Rewards (1, 0), (0, 1), (2, 1), (0, 3), (1, 1) against gold (1, 0), (1, 0), (0, 1), (0, 1), (.5, .5):
    pairs 1 and 4 agree with gold, 2 and 3 do not, 5 has equal gold and is left out: 2/4. The labels (chosen
    has the higher gold) are right on pairs 1 and 2: 2/4. A reward tie counts as wrong."""
    r = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0], [1.0, 1.0]])
    gold = [(1.0, 0.0), (1.0, 0.0), (0.0, 1.0), (0.0, 1.0), (0.5, 0.5)]
    assert rm.gold_accuracy(r, gold) == {"gold_accuracy": 0.5, "label_gold_accuracy": 0.5, "gold_pairs": 4}
    assert rm.gold_accuracy(r, [*gold[:4], None]) == rm.gold_accuracy(r, gold)
    assert rm.gold_accuracy(torch.tensor([[1.0, 1.0]]), [(1.0, 0.0)])["gold_accuracy"] == 0.0
    assert rm.gold_accuracy(r, [None] * 5) == {}


def test_gold_accuracy_of_world_rows(model_dir, pref_file, tmp_path):
    """An eval file of world rows: the rejected side has the higher gold in 1 of 4 pairs, a fifth pair has equal
    gold. eval/accuracy and eval/gold_accuracy equal those computed by hand from the saved model's scores;
    eval/label_gold_accuracy is 3/4."""
    gold = [(1.0, 0.0), (0.8, 0.2), (0.0, 1.0), (0.9, 0.5), (0.5, 0.5)]
    held = [{**{k: v for k, v in r.items() if not k.startswith("score")}, "world": {"gold_chosen": g, "gold_rejected": h}}
            for r, (g, h) in zip(preference_rows(30, scores=True)[24:], gold)]
    eval_file = write_jsonl(tmp_path / "held.jsonl", held)
    out = tmp_path / "g"
    m = run(model_dir, pref_file, out, f"data.eval_path={eval_file}", "optim.lr=3e-3")
    model, tok, pad = rm.load_scorer(str(out / "model"))
    from posttrain.data.formats import load_examples

    s = rm.score_examples(model, tok, load_examples(str(eval_file))[1], pad, max_seq_len=64)
    right = [(x["chosen"] > x["rejected"]) for x in s]
    agree = [(x["chosen"] - x["rejected"]) * (g - h) > 0 for x, (g, h) in zip(s, gold)][:4]
    assert m["eval/accuracy"] == pytest.approx(sum(right) / 5)
    assert m["eval/gold_accuracy"] == pytest.approx(sum(agree) / 4)
    assert m["eval/label_gold_accuracy"] == 0.75 and m["eval/gold_pairs"] == 4
    logged = metrics(out)[-1]
    assert logged["eval/gold_accuracy"] == pytest.approx(sum(agree) / 4, abs=1e-6)


def test_rm_score_on_both_formats(model_dir, pref_file, tmp_path, capsys):
    """Preference rows: both sides scored, a table with their difference and the share the chosen wins; the JSON
    and --out objects hold the same numbers as the training run's own scoring. Prompt/completion rows: one score
    each; an empty completion is skipped with its reason."""
    out = tmp_path / "r"
    run(model_dir, pref_file, out, "max_steps=2", "optim.lr=1e-2")
    model = str(out / "model")
    capsys.readouterr()
    cli_main_ok = cli_run(["rm", "score", "--model", model, "--data", str(pref_file), "--json",
                           "--out", str(tmp_path / "s.jsonl")])
    assert cli_main_ok == 0
    got = json.loads(capsys.readouterr().out)
    assert len(got) == 24 and set(got[0]) == {"where", "chosen", "rejected"}
    assert [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()] == got
    cfg = load_config(RMConfig, None, [f"model={model}", f"data={pref_file}", "data.max_seq_len=1024"])
    m, tok, pad = rm.load_scorer(model)
    pairs, _, _ = rm.build_data(cfg, tok)
    with torch.no_grad():
        ref = rm.pair_rewards(m, pairs, list(range(24)), pad, "cpu")
    assert torch.tensor([[g["chosen"], g["rejected"]] for g in got]) == pytest.approx(ref, abs=1e-5)

    cli_run(["rm", "score", "--model", model, "--data", str(pref_file)])
    table = capsys.readouterr().out.splitlines()
    wins = int((ref[:, 0] > ref[:, 1]).sum())
    assert table[0].split() == ["row", "chosen", "rejected", "c", "-", "r"] and len(table) == 26
    assert table[-1].startswith(f"chosen scored higher on {wins} of 24 pairs")

    pc = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "What is 2 + 3?", "completion": "2 + 3 = 5."},
                                              {"prompt": "Hi", "completion": ""}])
    cli_run(["rm", "score", "--model", model, "--data", str(pc), "--json"])
    one, empty = json.loads(capsys.readouterr().out)
    assert isinstance(one["score"], float) and empty == {"where": f"{pc}:2", "score": None,
                                                         "skipped": "score: empty assistant turn"}
    cli_run(["rm", "score", "--model", model, "--data", str(pc)])
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[1] == f"{one['score']:.4f}" and "(score: empty assistant turn)" in table[2]


def test_bad_input(model_dir, pref_file, chat_file, tmp_path, capsys):
    """Chat data, an empty file, a margin without scores, a pair that renders to nothing: one line, exit 2."""
    err = cli_fails(capsys, ["rm", f"model={model_dir}", f"data={chat_file}", f"output_dir={tmp_path / 'e'}"])
    assert "is messages data; a reward model trains on preference pairs" in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UserError, match="no examples"):
        run(model_dir, empty, tmp_path / "e")
    with pytest.raises(UserError, match="no examples"):
        rm.score_cli(["--model", str(model_dir), "--data", str(empty)])
    bare = write_jsonl(tmp_path / "bare.jsonl", [{"prompt": "hi", "chosen": "a", "rejected": "b"}])
    with pytest.raises(UserError, match=r"bare.jsonl:1: margin_scale=1 needs a number in 'margin'"):
        run(model_dir, bare, tmp_path / "e", "margin_scale=1")
    with pytest.raises(UserError, match="data.eval_path.*is messages data"):
        run(model_dir, pref_file, tmp_path / "e", f"data.eval_path={chat_file}")
    same = write_jsonl(tmp_path / "same.jsonl", [{"prompt": "hi", "chosen": "a", "rejected": "a"}] * 3
                       + [{"prompt": "hi", "chosen": "", "rejected": "b"}])
    with pytest.raises(UserError, match="no preference pairs left.*3 identical chosen and rejected.*1 chosen: "
                                        "empty assistant turn"):
        run(model_dir, same, tmp_path / "e")
    assert not (tmp_path / "e" / "config.yaml").exists()  # refused before the run started


def test_rm_score_checks_before_the_model_loads(model_dir, pref_file, tmp_path, capsys):
    """Numbers, the output path, the model folder and the data are checked first; a causal LM is not a reward
    model."""
    base = ["rm", "score", "--model", str(model_dir), "--data", str(pref_file)]
    assert "--batch-size: must be >= 1, got 0" in cli_fails(capsys, [*base, "--batch-size", "0"])
    assert "--max-seq-len: must be >= 2, got 1" in cli_fails(capsys, [*base, "--max-seq-len", "1"])
    (tmp_path / "dir").mkdir()
    assert "--out: " in cli_fails(capsys, [*base, "--out", str(tmp_path / "dir")])
    assert "no config.json" in cli_fails(capsys, ["rm", "score", "--model", str(tmp_path), "--data", str(pref_file)])
    text = write_jsonl(tmp_path / "t.jsonl", [{"text": "plain words"}])
    assert "is text data; rm score reads" in cli_fails(capsys, ["rm", "score", "--model", str(model_dir), "--data",
                                                             str(text)])
    assert "is not a reward model (config.json: LlamaForCausalLM, 2 labels)" in cli_fails(capsys, base)


def test_a_model_that_emits_nan(model_dir, tok, pref_file, tmp_path):
    """NaN weights: training stops at step 1 with nothing saved (common.optimizer_step's guard); `rm score`
    refuses the NaN scores with one line."""
    from transformers import AutoModelForCausalLM

    bad = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        bad.model.norm.weight.fill_(float("nan"))
    bad.save_pretrained(tmp_path / "nan")
    tok.save_pretrained(tmp_path / "nan")
    with pytest.raises(TrainingDiverged, match="non-finite loss or gradient .* at step 1"):
        run(tmp_path / "nan", pref_file, tmp_path / "d")
    assert not (tmp_path / "d" / "model").exists() and not (tmp_path / "d" / "result.json").exists()

    good = tmp_path / "r"
    run(model_dir, pref_file, good, "max_steps=1")
    w = weights(good)
    w["model.norm.weight"].fill_(float("nan"))
    from safetensors.torch import save_file

    save_file(w, good / "model" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError, match="non-finite score \\(nan\\) for .*prefs.jsonl:"):
        rm.score_cli(["--model", str(good / "model"), "--data", str(pref_file)])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_prompt_rewards_equal_each_side_alone(model_dir, tok, pref_file, attn):
    """Both sides of a pair in one row, their common start computed once (sdpa's boolean mask, eager's additive
    one): every reward equals the side scored alone by plain HF (one unpadded row), also when one side is the
    other's start ("Yes" against "Yes, it is."), which leaves it a segment of one token."""
    from transformers import AutoModelForSequenceClassification

    cfg = load_config(RMConfig, None, [f"model={model_dir}", f"data={pref_file}", "data.max_seq_len=64"])
    pairs, _, _ = rm.build_data(cfg, tok)
    prefix = write_jsonl(Path(str(pref_file) + ".prefix.jsonl"),
                         [{"prompt": "Is it raining?", "chosen": "Yes", "rejected": "Yes, it is."}])
    extra, _ = rm.build_pairs(rm._load_rows(str(prefix), "auto", None, "data"), Renderer(tok, 64), 0.0)
    assert extra.seqs[0][1][:len(extra.seqs[0][0])] == extra.seqs[0][0]  # chosen is the start of rejected
    pairs.seqs += extra.seqs
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, attn_implementation=attn).eval()
    chunk = list(range(len(pairs)))[-9:]
    with torch.no_grad():
        got = rm.pair_rewards(model, pairs, chunk, tok.pad_token_id, "cpu")
        want = torch.tensor([[model(input_ids=torch.tensor([s])).logits[0, 0].item() for s in pairs.seqs[i]]
                             for i in chunk])
    assert got.shape == (9, 2) and torch.allclose(got, want, atol=1e-5)
