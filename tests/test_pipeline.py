"""`posttrain pipeline` end to end on a tiny model: the run folder, the summary, resuming without redoing stages."""

from __future__ import annotations

import json

import pytest

from posttrain import pipeline
from posttrain.config import load_config
from posttrain.errors import UserError
from posttrain.pipeline import PipelineConfig


def small(model_dir, out, *extra):
    return load_config(PipelineConfig, None, [f"base={model_dir}", f"output_dir={out}", "sft.n=40", "sft.max_steps=2",
                                              "sft.batch_size=4", "sft.micro_batch_size=4", "eval.n=14",
                                              "eval.max_new_tokens=4", *extra])


def test_pipeline_run_folder_and_resume(model_dir, tmp_path):
    out = tmp_path / "p"
    summary = pipeline.main(small(model_dir, out))
    assert {"config.yaml", "data", "sft", "eval", "summary.json", "report.html"} <= {p.name for p in out.iterdir()}
    assert (out / "sft" / "model" / "config.json").exists()
    assert set(summary["stages"]) == {"base", "sft"}
    for r in summary["stages"].values():
        assert 0.0 <= r["gold"] <= 1.0 and len(r["families"]) == 14
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Is the earth flat?" in html

    # A second run finds every stage done and redoes none of them.
    stamps = {p: p.stat().st_mtime_ns for p in [out / "eval" / "base.json", out / "eval" / "sft.json",
                                                 out / "sft" / "model" / "model.safetensors"]}
    pipeline.main(small(model_dir, out))
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_pipeline_without_base_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "shipped_base", lambda: tmp_path / "none")
    with pytest.raises(UserError, match="set base=PATH"):
        pipeline.main(load_config(PipelineConfig, None, [f"output_dir={tmp_path / 'p'}"]))


def test_pipeline_interrupted_mid_sft_resumes_there(model_dir, tmp_path, monkeypatch):
    """Killed right after SFT's step-2 checkpoint, a rerun resumes SFT at step 2 and ends with the same
    weights as an uninterrupted pipeline; the data stage is not redone."""
    from posttrain.recipes import common

    whole = tmp_path / "whole"
    pipeline.main(small(model_dir, whole, "sft.max_steps=4", "sft.save_every=2"))

    out = tmp_path / "cut"
    save = common.save_checkpoint

    def save_then_die(ckpt_dir, step, *args, **kwargs):
        save(ckpt_dir, step, *args, **kwargs)
        raise KeyboardInterrupt
    monkeypatch.setattr(common, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pipeline.main(small(model_dir, out, "sft.max_steps=4", "sft.save_every=2"))
    assert not (out / "sft" / "model").exists() and (out / "sft" / "checkpoints" / "step-0000002").exists()
    data_stamp = (out / "data" / "sft_curated.jsonl").stat().st_mtime_ns

    monkeypatch.setattr(common, "save_checkpoint", save)
    pipeline.main(small(model_dir, out, "sft.max_steps=4", "sft.save_every=2"))
    assert (out / "data" / "sft_curated.jsonl").stat().st_mtime_ns == data_stamp
    records = [json.loads(x) for x in (out / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3, 4]  # none lost, none repeated
    assert ((out / "sft" / "model" / "model.safetensors").read_bytes()
            == (whole / "sft" / "model" / "model.safetensors").read_bytes())


def test_pipeline_compare_noisy_reports_both(model_dir, tmp_path):
    out = tmp_path / "p"
    summary = pipeline.main(small(model_dir, out, "compare_noisy=true", "sft.noisy_n=60"))
    assert set(summary["stages"]) == {"base", "sft", "sft_noisy"}
    noisy = [json.loads(x) for x in (out / "data" / "sft_noisy.jsonl").read_text().splitlines()]
    assert len(noisy) == 60 and sum(r["world"]["flaw"] is not None for r in noisy) == 24
    assert (out / "sft_noisy" / "model" / "config.json").exists()
    assert "sft_noisy" in (out / "report.html").read_text()


@pytest.mark.parametrize("case", ["missing", "no_tokenizer", "bad_key", "missing_config"])
def test_pipeline_bad_input_is_one_line_and_exit_2(model_dir, tmp_path, capsys, case):
    import shutil

    from posttrain.cli import main as cli_main

    out = tmp_path / "p"
    if case == "no_tokenizer":
        bare = tmp_path / "bare"
        bare.mkdir()
        shutil.copy(f"{model_dir}/config.json", bare / "config.json")
    args = {"missing": [f"base={tmp_path / 'nope'}"], "no_tokenizer": [f"base={tmp_path / 'bare'}"],
            "bad_key": [f"base={model_dir}", "sft.lrr=1"],
            "missing_config": ["--config", str(tmp_path / "nope.yaml")]}[case]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["pipeline", *args, f"output_dir={out}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert {"missing": "is not a model folder", "no_tokenizer": "has no tokenizer", "bad_key": "did you mean 'sft.lr'",
            "missing_config": "no such file"}[case] in err[0]
    assert not (out / "data").exists()  # nothing ran
    if case in ("missing", "no_tokenizer"):
        assert not out.exists()  # a bad base is found before the run folder is made
