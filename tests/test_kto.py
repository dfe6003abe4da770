"""The KTO recipe: the cached reference log-probs (matched and mismatched sequences) equal a live reference; at
step 1 the policy is the reference, so each completion's loss is weight x (1 - sigmoid(0)); a short run learns;
batch x accumulation invariance; exact resume; bad input is one line and exit 2; LoRA."""

from __future__ import annotations

import pytest
import torch
from conftest import cli_fails, preference_rows, read_metrics, train_losses, write_jsonl
from safetensors.torch import load_file

from posttrain.cli import main as cli_main
from posttrain.config import load_config
from posttrain.recipes import kto
from posttrain.recipes.kto import KTOConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def unpaired_rows(n_pairs: int = 12) -> list[dict]:
    """Each test preference pair as two unpaired rows: its chosen answer desirable, its rejected one not."""
    return [row for p in preference_rows(n_pairs)
            for row in ({"prompt": p["prompt"], "completion": p["chosen"], "label": True},
                        {"prompt": p["prompt"], "completion": p["rejected"], "label": False})]


@pytest.fixture
def kto_file(tmp_path):
    return write_jsonl(tmp_path / "unpaired.jsonl", unpaired_rows())  # 24 rows, 12 of each label


def run(model_dir, data, out, *overrides) -> dict:
    cfg = load_config(KTOConfig, None, [f"model={model_dir}", f"data={data}", f"output_dir={out}", "optim.lr=1e-3",
                                        "batch_size=8", "micro_batch_size=4", "max_steps=2", "data.max_seq_len=64",
                                        *overrides])
    return kto.main(cfg)


def weights(out):
    return load_file(out / "model" / "model.safetensors")


def test_cached_reference_equals_a_live_reference(model_dir, tok, kto_file, tmp_path):
    """reference/logps.pt (computed once, both sequences of an example packed in one row) equals a second, live
    copy of the starting model run as the loop runs it (one kind of sequence per packed batch, micro-batches of
    the first steps), to 1e-6 of its size in fp32 (a few ulps: how packed rows are summed differs by CPU), for the
    matched and the mismatched sequences."""
    from posttrain.models.load import load_model
    from posttrain.recipes import common

    out = tmp_path / "c"
    run(model_dir, kto_file, out, "max_steps=1")
    cached = torch.load(out / "reference" / "logps.pt")["train"]
    cfg = load_config(KTOConfig, None, [f"model={model_dir}", f"data={kto_file}", "data.max_seq_len=64"])
    data, _, _ = kto.build_data(cfg, tok)
    assert cached.shape == (len(data.seqs), 2)
    acc = common.make_accelerator("fp32", 0)
    live = load_model(str(model_dir)).eval()
    stream = common.DataStream(len(data.seqs), 8, 0)
    worst = 0.0
    for step in range(3):
        for chunk in common.shard(stream.step_units(step), 0, 1, 4):
            for which in (kto.MATCHED, kto.MISMATCHED):
                with torch.no_grad():
                    logps, _ = kto.completion_logps(live, acc, data.seqs, chunk, which, tok.pad_token_id)
                c = cached[chunk, which]
                worst = max(worst, ((logps - c).abs() / c.abs().clamp(min=1.0)).max().item())
    assert worst <= 1e-6, worst  # relative: a sum of log-probs near -50 has an fp32 ulp of 3.8e-6


def test_mismatched_pairing_is_one_seeded_cycle(model_dir, tok, kto_file):
    """Example i's KL sequence is its prompt with the completion of partner[i]: a single cycle (never itself),
    fixed by the seed, so the cached reference stays valid for every batch."""
    p = kto.kl_partners(24, 0)
    assert sorted(p) == list(range(24)) and all(p[i] != i for i in range(24))
    i, seen = 0, set()
    while i not in seen:
        seen.add(i)
        i = p[i]
    assert len(seen) == 24 and p == kto.kl_partners(24, 0) and p != kto.kl_partners(24, 1)


def test_step_one_is_the_hand_value_with_zero_rewards_and_kl(model_dir, kto_file, tmp_path):
    """Before the first update the policy is the reference: r = 0 and z0 = max(0, 0) = 0, so each completion's
    loss is weight x (1 - sigmoid(0)) = weight / 2. All 24 rows in the step, 12 desirable (w_D = 1) and 12
    undesirable (w_U = 2): (12 x 0.5 + 12 x 1.0) / 24 = 0.75."""
    run(model_dir, kto_file, tmp_path / "s", "max_steps=1", "batch_size=24", "micro_batch_size=8",
        "undesirable_weight=2.0")
    first = read_metrics(tmp_path / "s")[0]
    assert first["train/loss"] == pytest.approx(0.75, abs=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "kl"):
        assert first[key] == pytest.approx(0.0, abs=1e-6), key
    assert {"logps/chosen", "logps/rejected", "train/completions_per_s"} <= set(first)
    assert "rewards/accuracies" not in first  # TRL's KTO logs none


def test_a_short_run_learns(model_dir, kto_file, tmp_path):
    """Every step's batch is the whole training set: the loss falls and the reward margin grows; held-out
    metrics are logged."""
    out = tmp_path / "learn"
    m = run(model_dir, kto_file, out, "batch_size=20", "micro_batch_size=10", "max_steps=4", "optim.lr=3e-3",
            "data.eval_fraction=0.2")
    rows = [r for r in read_metrics(out) if "train/loss" in r]
    assert len(rows) == 4 and rows[-1]["train/loss"] < rows[0]["train/loss"], rows
    assert rows[-1]["rewards/margins"] > rows[0]["rewards/margins"], rows
    assert {"eval/loss", "eval/kl", "eval/rewards/margins", "eval/logps/chosen"} <= set(m)


def test_batch_times_accumulation_invariance(model_dir, kto_file, tmp_path):
    """batch 8 as one micro-batch of 8 and as 4 micro-batches of 2: z0 is the step's, the loss the mean over the
    step's completions, so the first loss and the weights after 2 steps agree (fp32 rounding only)."""
    run(model_dir, kto_file, tmp_path / "one", "micro_batch_size=8")
    run(model_dir, kto_file, tmp_path / "four", "micro_batch_size=2")
    a, b = weights(tmp_path / "one"), weights(tmp_path / "four")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 5e-6   # Adam's g / sqrt(v) amplifies fp32 rounding
    assert train_losses(tmp_path / "one")[0] == pytest.approx(train_losses(tmp_path / "four")[0], abs=1e-6)


def test_resume_continues_exactly(model_dir, kto_file, tmp_path, interrupt_at):
    run(model_dir, kto_file, tmp_path / "full", "max_steps=4", "save_every=2")
    with interrupt_at(3):
        run(model_dir, kto_file, tmp_path / "cut", "max_steps=4", "save_every=2")
    run(model_dir, kto_file, tmp_path / "cut", "max_steps=4", "save_every=2")
    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert train_losses(tmp_path / "cut") == train_losses(tmp_path / "full")


def test_bad_input(model_dir, tok, tmp_path, capsys):
    base = ["kto", f"model={model_dir}", f"output_dir={tmp_path / 'e'}"]
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(4))
    assert "is preference data; kto needs unpaired rows" in cli_fails(capsys, [*base, f"data={pairs}"])
    assert "use posttrain dpo" in cli_fails(capsys, [*base, f"data={pairs}"])
    good_file = write_jsonl(tmp_path / "all.jsonl", unpaired_rows(4))
    msg = cli_fails(capsys, [*base, f"data={good_file}", f"data.eval_path={pairs}"])
    assert msg.startswith("error: data.eval_path: ") and "is preference data" in msg, msg
    good = [r for r in unpaired_rows(4) if r["label"]]
    only_good = write_jsonl(tmp_path / "good.jsonl", good + [{"prompt": "hi", "completion": " ", "label": False}])
    err = cli_fails(capsys, [*base, f"data={only_good}"])
    assert f"'{only_good}' has no undesirable rows (label false) (1 empty assistant turn dropped)" in err, err
    assert "undesirable_weight=0" in err
    assert "both 0" in cli_fails(capsys, [*base, f"data={only_good}", "desirable_weight=0", "undesirable_weight=0"])
    # With its weight at 0 the missing side is fine; the empty row is dropped and counted.
    cfg = load_config(KTOConfig, None, [f"model={model_dir}", f"data={only_good}", "undesirable_weight=0"])
    data, held, dropped = kto.build_data(cfg, tok)
    assert len(data.seqs) == 4 and bool(data.desirable.all()) and dropped == {"empty assistant turn": 1}
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["kto", "--help"])
    assert exit_info.value.code == 0 and "desirable_weight" in capsys.readouterr().out


def test_lora_trains_adapters_against_the_base_as_reference(model_dir, kto_file, tmp_path):
    out = tmp_path / "lora"
    run(model_dir, kto_file, out, "lora.enabled=true", "lora.r=4", "optim.lr=1e-2")
    got = train_losses(out)
    assert got[0] == pytest.approx(0.5, abs=1e-6)  # zero-init adapters: the policy is the base; weights 1
    assert got[1] != got[0]
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "model" / "config.json").exists()
