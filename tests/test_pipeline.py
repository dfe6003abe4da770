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
