"""The SFT recipe: packed == padded, batch x accumulation invariance, exact resume, two processes == one,
the NaN guard, a golden loss curve on a fixed-init tiny model, and the run folder's contents."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import launch_failure
from safetensors.torch import load_file

from posttrain.config import load_config
from posttrain.data.collate import pack_rows, packed_batch, pad_batch
from posttrain.data.render import Rendered, Renderer
from posttrain.data.types import Conversation, Message
from posttrain.errors import TrainingDiverged, UserError
from posttrain.losses.sft import nll_sum
from posttrain.models.forward import response_logits
from posttrain.models.load import load_model
from posttrain.recipes import sft
from posttrain.recipes.sft import SFTConfig


def run(model_dir, data, out, *overrides) -> dict:
    cfg = load_config(SFTConfig, None, [f"model={model_dir}", f"data={data}", f"output_dir={out}", "optim.lr=5e-3",
                                        "batch_size=8", "micro_batch_size=4", "max_steps=4", *overrides])
    return sft.main(cfg)


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model" / "model.safetensors"))


def losses(out: Path) -> list[float]:
    return [r["train/loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "train/loss" in r]


def assert_same_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst <= atol, worst


def _first_fit_by_scan(lengths: list[int], max_len: int) -> list[list[int]]:
    """The plain first-fit (scan every open row), longest first: the reference for `pack_rows`."""
    groups: list[list[int]] = []
    space: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        g = next((g for g, free in enumerate(space) if lengths[i] <= free), len(groups))
        if g == len(groups):
            groups.append([])
            space.append(max_len)
        groups[g].append(i)
        space[g] -= lengths[i]
    return groups


def test_pack_rows_is_first_fit_longest_first():
    """Hand-derived: lengths 5, 3, 4, 2 in rows of 8 go 5 | 4, then 3 fills the first row and 2 joins the
    second; an example longer than a row sits alone and takes nothing after it. On 300 random sets the
    groups equal the plain first-fit's exactly, so the tree search changes the speed, not the rows."""
    def rows(lengths):
        return [Rendered(input_ids=[0] * n, labels=[0] * n) for n in lengths]

    assert pack_rows(rows([5, 3, 4, 2]), 8) == [[0, 1], [2, 3]]
    assert pack_rows(rows([3, 10, 2]), 8) == [[1], [0, 2]]
    assert pack_rows([], 8) == []
    rng = random.Random(0)
    for _ in range(300):
        lengths = [rng.randint(1, 20) for _ in range(rng.randint(1, 80))]
        max_len = rng.choice((8, 16, 32))
        assert pack_rows(rows(lengths), max_len) == _first_fit_by_scan(lengths, max_len), (lengths, max_len)


def test_packed_loss_and_grads_equal_padded(tok, model_dir):
    """Packing three conversations into one row (position ids restart per document) gives the same summed
    NLL and the same gradients as padding them into three rows."""
    r = Renderer(tok)
    convs = [Conversation([Message("user", "What is 2 + 3?"), Message("assistant", "2 + 3 = 5.")]),
             Conversation([Message("user", "Reverse the word stone."), Message("assistant", "enots")]),
             Conversation([Message("user", "List 2 words."), Message("assistant", "apple, river."),
                           Message("user", "Now in upper case."), Message("assistant", "APPLE, RIVER.")])]
    rows = [r.render(c) for c in convs]
    model = load_model(str(model_dir))
    groups = pack_rows(rows, max_len=256)
    assert len(groups) == 1 and sorted(groups[0]) == [0, 1, 2]

    def loss_and_grads(batch):
        model.zero_grad()
        logits, targets = response_logits(model, batch)
        s, n = nll_sum(logits, targets)
        s.sum().backward()
        return s.sum().item(), n.sum().item(), {k: p.grad.clone() for k, p in model.named_parameters()}

    padded = loss_and_grads(pad_batch(rows, tok.pad_token_id))
    packed = loss_and_grads(packed_batch([[rows[i] for i in groups[0]]], tok.pad_token_id))
    assert padded[1] == packed[1] == sum(x.n_trained for x in rows)
    assert abs(padded[0] - packed[0]) < 1e-4
    for k in padded[2]:
        assert torch.allclose(padded[2][k], packed[2][k], atol=1e-5), k


def test_head_only_on_trained_positions_equals_full_logits(tok, model_dir):
    r = Renderer(tok)
    rows = [r.render(Conversation([Message("user", "What is 12 + 30?"), Message("assistant", "42.")]))]
    batch = pad_batch(rows, tok.pad_token_id)
    model = load_model(str(model_dir))
    logits, targets = response_logits(model, batch)
    full = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1]
    ref = torch.nn.functional.cross_entropy(full.flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100,
                                            reduction="sum")
    assert abs(nll_sum(logits, targets)[0].item() - ref.item()) < 1e-4


@pytest.mark.parametrize("packing", ["true", "false"])
def test_batch_times_accumulation_invariance(model_dir, chat_file, tmp_path, packing):
    """batch 8 as 8x1 and 2x4 (micro x accumulation) trains to the same weights.

    The tolerance is fp32 summation order: padding widths differ between the splits, and Adam turns tiny
    gradient differences into differences far below one step's size (lr 5e-3)."""
    run(model_dir, chat_file, tmp_path / "a", "micro_batch_size=8", f"data.packing={packing}", "data.max_seq_len=64")
    run(model_dir, chat_file, tmp_path / "b", "micro_batch_size=2", f"data.packing={packing}", "data.max_seq_len=64")
    assert_same_weights(tmp_path / "a", tmp_path / "b", atol=2e-5)
    assert losses(tmp_path / "a") == pytest.approx(losses(tmp_path / "b"), abs=1e-5)


def test_golden_loss_curve(model_dir, chat_file, tmp_path):
    """A fixed-init tiny Llama on fixed data: the first four losses are pinned (fp32, CPU)."""
    run(model_dir, chat_file, tmp_path / "g", "data.max_seq_len=64")
    got = losses(tmp_path / "g")
    assert got == pytest.approx(GOLDEN, abs=2e-4), got
    assert got[-1] < got[0]


GOLDEN = [5.976092, 5.786528, 5.632636, 5.488187]  # re-pinned when the template gained "Q: "/"A: " and digits split


def test_resume_continues_exactly(model_dir, chat_file, tmp_path, interrupt_at):
    """Kill a run after its step-2 checkpoint; the resumed run ends with the uninterrupted run's weights."""
    args = ("save_every=2", "data.max_seq_len=64")
    run(model_dir, chat_file, tmp_path / "full", *args)
    with interrupt_at(3):
        run(model_dir, chat_file, tmp_path / "resumed", *args)
    assert not (tmp_path / "resumed" / "model").exists()
    assert [p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()] == ["step-0000002"]
    run(model_dir, chat_file, tmp_path / "resumed", *args)
    a, b = weights(tmp_path / "full"), weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(tmp_path / "resumed") == losses(tmp_path / "full")  # metrics.jsonl has no duplicated steps


def test_nan_stops_without_overwriting_the_good_checkpoint(model_dir, chat_file, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = sft.common.nll_sum

    def nan_from_step_3(logits, targets):
        calls["n"] += 1
        s, n = real(logits, targets)
        return (s * float("nan") if calls["n"] > 4 else s), n  # 2 micro-batches a step: NaN from step 3

    monkeypatch.setattr(sft.common, "nll_sum", nan_from_step_3)
    with pytest.raises(TrainingDiverged, match="step 3.*step-0000002"):
        run(model_dir, chat_file, tmp_path / "n", "save_every=1", "data.packing=false")
    ckpts = sorted(p.name for p in (tmp_path / "n" / "checkpoints").iterdir())
    assert ckpts == ["step-0000001", "step-0000002"]
    state = torch.load(tmp_path / "n" / "checkpoints" / "step-0000002" / "state.pt", weights_only=False)
    assert all(torch.isfinite(t).all() for t in state["models"]["model"].values())
    assert not (tmp_path / "n" / "model").exists()


def test_run_folder_contents_and_eval(model_dir, chat_file, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "r"
    metrics = run(model_dir, chat_file, out, "data.eval_fraction=0.25", "eval_every=2", "optim.warmup_steps=1")
    assert {"config.yaml", "metrics.jsonl", "model", "tb"} <= {p.name for p in out.iterdir()}
    cfg = load_config(SFTConfig, str(out / "config.yaml"))
    assert cfg.optim.warmup_steps == 1 and cfg.data.eval_fraction == 0.25
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval/loss" in r] == [2, 4]
    assert metrics["eval/ppl"] == pytest.approx(2.718281828 ** metrics["eval/loss"], rel=1e-5)
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.generate(torch.tensor([[1, 4]]), max_new_tokens=3, do_sample=False).shape == (1, 5)
    assert any((out / "tb").iterdir())


def test_bad_input_errors(model_dir, chat_file, tmp_path):
    empty = tmp_path / "empty.jsonl"
    Path(empty).write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(UserError, match="no training examples left.*1 no assistant turn"):
        run(model_dir, empty, tmp_path / "e")
    with pytest.raises(UserError, match="no such folder"):
        run(tmp_path / "nope", chat_file, tmp_path / "e")
    with pytest.raises(UserError, match=r"unknown config key 'optim.lrr' \(did you mean 'optim.lr'\?\)"):
        run(model_dir, chat_file, tmp_path / "e", "optim.lrr=1")
    with pytest.raises(UserError, match="multiple of micro_batch_size"):
        run(model_dir, chat_file, tmp_path / "e", "micro_batch_size=3")


def test_cli_errors_are_one_line_exit_2(model_dir, chat_file, tmp_path):
    exe = [sys.executable, "-m", "posttrain"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n{"messages": [}\n')
    for args, pattern in [
        (["sft", f"model={model_dir}", f"data={bad}", f"output_dir={tmp_path / 'x'}"], f"{bad}:2: invalid JSON"),
        (["sft", f"model={model_dir}", f"data={chat_file}", "optim.lrr=1"], "did you mean 'optim.lr'"),
        (["sft", f"model={tmp_path / 'missing'}", f"data={chat_file}"], "no such folder"),
        (["sfft"], "did you mean 'sft'"),
    ]:
        p = subprocess.run(exe + args, capture_output=True, text=True, env=env, timeout=120)
        assert p.returncode == 2, (args, p.stderr)
        err = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
        assert len(err) == 1 and pattern in err[0], p.stderr
        assert "Traceback" not in p.stderr


def test_help_lists_every_field():
    from posttrain.config import _flat_keys

    p = subprocess.run([sys.executable, "-m", "posttrain", "sft", "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0
    for key in _flat_keys(SFTConfig):
        assert f"  {key} (" in p.stdout, key


@pytest.mark.slow
def test_two_processes_equal_one(model_dir, chat_file, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU (gloo) trains to the same weights as one process."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    common = [f"model={model_dir}", f"data={chat_file}", "max_steps=3", "batch_size=8", "micro_batch_size=2",
              "optim.lr=5e-3", "data.max_seq_len=64"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    two = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "posttrain", "sft",
                          f"output_dir={tmp_path / 'two'}", *common], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, launch_failure(two)
    assert "2 processes" in two.stdout
    run(model_dir, chat_file, tmp_path / "one", *common[2:])
    assert_same_weights(tmp_path / "one", tmp_path / "two", atol=1e-6)
    assert losses(tmp_path / "one") == pytest.approx(losses(tmp_path / "two"), abs=3e-6)


def test_gradient_checkpointing_is_exact_and_bf16_is_close(model_dir, chat_file, tmp_path):
    base = ("max_steps=2", "data.max_seq_len=64")
    run(model_dir, chat_file, tmp_path / "plain", *base)
    run(model_dir, chat_file, tmp_path / "ckpt", *base, "model.gradient_checkpointing=true")
    assert_same_weights(tmp_path / "plain", tmp_path / "ckpt", atol=1e-6)
    run(model_dir, chat_file, tmp_path / "bf16", *base, "precision=bf16")
    fp32, bf16 = losses(tmp_path / "plain"), losses(tmp_path / "bf16")
    assert fp32[0] == pytest.approx(bf16[0], abs=0.05) and fp32 != bf16  # autocast really ran in bf16


def test_a_rerun_with_other_settings_is_refused_and_the_saved_config_kept(model_dir, chat_file, tmp_path, interrupt_at):
    """A rerun into the same output_dir compares its settings with the saved run's: other data, lr or seed is
    refused with one line naming the keys (config.yaml untouched); logging, threads and checkpoint cadence may
    differ; resume=false starts over on purpose; a finished run is not trained again."""
    out = tmp_path / "r"
    args = ("save_every=2", "data.max_seq_len=64")
    with interrupt_at(3):
        run(model_dir, chat_file, out, *args)
    saved = (out / "config.yaml").read_text()
    other = tmp_path / "other.jsonl"
    shutil.copy(chat_file, other)
    with pytest.raises(UserError) as e:
        run(model_dir, other, out, *args, "optim.lr=1e-3", "seed=1")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"output_dir '{out}' holds a run with other settings (")
    assert f"data.path: '{chat_file}' -> '{other}'" in msg and "seed: 0 -> 1" in msg
    assert "optim.lr: 0.005 -> 0.001" in msg and "resume=false" in msg
    assert (out / "config.yaml").read_text() == saved

    # Logging, threads and the checkpoint cadence may change; the run resumes at step 2 and config.yaml stays.
    run(model_dir, chat_file, out, *args, "log_every=2", "threads=1", "save_every=3")
    assert (out / "config.yaml").read_text() == saved
    assert json.loads((out / "result.json").read_text())["steps"] == 4
    run(model_dir, chat_file, tmp_path / "full", *args)
    assert_same_weights(out, tmp_path / "full", atol=0)

    # Finished: a rerun does nothing; resume=false trains again from step 0 with the new settings.
    stamp = (out / "model" / "model.safetensors").stat().st_mtime_ns
    run(model_dir, chat_file, out, *args)
    assert (out / "model" / "model.safetensors").stat().st_mtime_ns == stamp
    run(model_dir, other, out, *args, "optim.lr=1e-3", "resume=false")
    assert "lr: 0.001" in (out / "config.yaml").read_text()
    assert len(losses(out)) == 4 and losses(out)[0] == losses(tmp_path / "full")[0]  # step 1: same init, same loss
    assert losses(out)[1:] != losses(tmp_path / "full")[1:]  # then another learning rate


def test_max_steps_zero_runs_epochs_and_result_json_records_the_steps(model_dir, chat_file, tmp_path, capsys):
    """48 examples, batch 8, epochs 2, packing off: 12 steps, said at the start and kept in result.json."""
    out = tmp_path / "e"
    run(model_dir, chat_file, out, "max_steps=0", "epochs=2", "data.packing=false", "data.max_seq_len=64")
    assert "12 steps (2 epochs of 48 examples, max_steps=0)" in capsys.readouterr().out
    assert json.loads((out / "result.json").read_text())["steps"] == 12
    assert len(losses(out)) == 12


@pytest.mark.parametrize("override, message", [
    ("max_steps=-5", "config key 'max_steps': must be >= 0, got -5"),
    ("batch_size=0", "config key 'batch_size': must be >= 1, got 0"),
    ("micro_batch_size=0", "config key 'micro_batch_size': must be >= 1, got 0"),
    ("optim.lr=-1", "config key 'optim.lr': must be >= 0, got -1.0"),
])
def test_bad_numbers_fail_before_anything_is_loaded(tmp_path, capsys, override, message):
    """The model path does not exist: the range error comes first, so nothing was loaded or written."""
    from posttrain.cli import main as cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["sft", f"model={tmp_path / 'missing'}", "data=x.jsonl", f"output_dir={tmp_path / 'o'}", override])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
    assert not (tmp_path / "o").exists()
