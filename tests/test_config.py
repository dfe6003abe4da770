"""Configs: YAML in, dotted overrides, short overrides, type checks, did-you-mean; every shipped YAML loads."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from posttrain.cli import RECIPES
from posttrain.config import config_help, load_config, save_config
from posttrain.errors import UserError
from posttrain.recipes.sft import SFTConfig

ROOT = Path(__file__).resolve().parents[1]


def test_overrides_and_short_forms(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("optim:\n  lr: 1.0e-3\ndata:\n  max_seq_len: 128\nseed: 3\n")
    cfg = load_config(SFTConfig, str(y), ["optim.lr=1e-4", "model=my/model", "data=train.jsonl", "max_steps=7",
                                          "lora.target_modules=q_proj,v_proj", "lora.enabled=true"])
    assert cfg.optim.lr == 1e-4  # "1e-4" is a string to YAML 1.1; the float field still takes it
    assert cfg.model.path == "my/model" and cfg.data.path == "train.jsonl"
    assert cfg.data.max_seq_len == 128 and cfg.seed == 3 and cfg.max_steps == 7
    assert cfg.lora.target_modules == ["q_proj", "v_proj"] and cfg.lora.enabled is True
    assert cfg.optim.weight_decay == 0.0  # untouched defaults stay


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(SFTConfig, None, ["optim.lr=3e-4", "data.packing=false", "precision=bf16"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(SFTConfig, str(tmp_path / "config.yaml")) == cfg


@pytest.mark.parametrize("override, message", [
    (["optim.lrr=1"], "unknown config key 'optim.lrr' (did you mean 'optim.lr'?)"),
    (["max_step=1"], "unknown config key 'max_step' (did you mean 'max_steps'?)"),
    (["optim.lr=fast"], "config key 'optim.lr': expected a number, got 'fast'"),
    (["max_steps=1.5"], "config key 'max_steps': expected an integer, got 1.5"),
    (["precision=fp16"], "config key 'precision': 'fp16' is not one of 'fp32', 'bf16'"),
    (["data.packing=maybe"], "config key 'data.packing': expected true or false, got 'maybe'"),
    (["optim=1"], "config key 'optim' is a section"),
    (["seed"], "override 'seed' is not of the form key=value"),
    (["seed.x=1"], "config key 'seed' has no field 'x'"),
])
def test_errors_are_one_clear_line(override, message):
    with pytest.raises(UserError) as e:
        load_config(SFTConfig, None, override)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_yaml_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\noptim:\n  lr: [1, 2\n")
    with pytest.raises(UserError, match=r"bad.yaml:\d+: invalid YAML"):
        load_config(SFTConfig, str(bad))
    typo = tmp_path / "typo.yaml"
    typo.write_text("optim:\n  lrate: 1\n")
    with pytest.raises(UserError, match=r"typo.yaml: unknown config key 'optim.lrate'"):
        load_config(SFTConfig, str(typo))
    with pytest.raises(UserError, match="--config: no such file"):
        load_config(SFTConfig, str(tmp_path / "nope.yaml"))


def test_help_has_a_line_per_field():
    text = config_help(SFTConfig)
    assert "  optim.lr (float >= 0, default 2e-05): peak learning rate (AdamW)" in text
    assert "`data=X` sets data.path" in text


def test_every_shipped_yaml_loads_and_starts_with_its_command():
    configs = sorted((ROOT / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# posttrain "), path
        recipe = first.split()[2]
        module, cls = RECIPES[recipe]
        load_config(getattr(importlib.import_module(module), cls), str(path))


def test_imports_stay_light():
    """Losses, data and configs import without accelerate, peft, deepspeed, vllm or a web framework."""
    code = ("import sys; import posttrain.losses.sft, posttrain.data.render, posttrain.data.formats, posttrain.config; "
            "heavy = [m for m in ('accelerate', 'peft', 'deepspeed', 'vllm', 'flask', 'fastapi', 'trl') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def test_atomic_outputs_have_normal_permissions(tmp_path):
    import os
    import stat

    from posttrain.io import atomic_dir, atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "x")
    with atomic_dir(tmp_path / "d") as d:
        (d / "f").write_text("y")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~mask


@pytest.mark.parametrize("override, message", [
    (["max_steps=-5"], "config key 'max_steps': must be >= 0, got -5"),
    (["batch_size=0"], "config key 'batch_size': must be >= 1, got 0"),
    (["micro_batch_size=0"], "config key 'micro_batch_size': must be >= 1, got 0"),
    (["optim.lr=-1"], "config key 'optim.lr': must be >= 0, got -1.0"),
    (["optim.min_lr_ratio=1.5"], "config key 'optim.min_lr_ratio': must be in [0, 1], got 1.5"),
    (["data.eval_fraction=1"], "config key 'data.eval_fraction': must be in [0, 1), got 1.0"),
    (["epochs=0"], "config key 'epochs': must be > 0, got 0.0"),
])
def test_values_outside_a_fields_range_are_refused(override, message):
    with pytest.raises(UserError) as e:
        load_config(SFTConfig, None, override)
    assert str(e.value) == message


def test_a_range_is_checked_in_yaml_too_and_shown_by_help(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("batch_size: 0\n")
    with pytest.raises(UserError, match="'batch_size': must be >= 1, got 0"):
        load_config(SFTConfig, str(y))
    text = config_help(SFTConfig)
    assert "  batch_size (int >= 1, default 16):" in text
    assert "  optim.min_lr_ratio (float in [0, 1], default 0.0):" in text


def _numeric_fields(cls, prefix=""):
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _numeric_fields(tp, f"{prefix}{f.name}.")
        elif tp in (int, float):
            yield f"{prefix}{f.name}", f


def test_every_numeric_field_of_every_recipe_declares_its_range():
    missing = []
    for name, (module, cls_name) in RECIPES.items():
        cls = getattr(importlib.import_module(module), cls_name)
        missing += [f"{name}: {key}" for key, f in _numeric_fields(cls) if not f.metadata.get("range")]
    assert missing == []


def test_a_nested_section_keeps_its_owners_defaults_and_owned_keys():
    """The pipeline nests SFTConfig with its own defaults; the keys it sets itself cannot be set."""
    from posttrain.pipeline import PipelineConfig

    cfg = load_config(PipelineConfig, None, ["sft.optim.warmup_steps=2"])
    assert cfg.sft.max_steps == 40 and cfg.sft.optim.lr == 5e-4 and cfg.sft.optim.warmup_steps == 2
    assert SFTConfig().max_steps == 0  # the recipe's own default is untouched
    for key in ("sft.seed=3", "sft.model=x", "sft.model.path=x", "sft.data=f.jsonl", "sft.output_dir=o"):
        with pytest.raises(UserError, match="cannot be set: the pipeline sets the model, data"):
            load_config(PipelineConfig, None, [key])
    text = config_help(PipelineConfig)
    assert "  sft.max_steps (int >= 0, default 40):" in text and "sft.model.path" not in text
    assert "sft.seed" not in text and "  sft.data.max_seq_len (int >= 2, default 256):" in text


def test_result_diff_names_only_the_keys_that_change_the_result():
    from posttrain.config import result_diff, to_dict

    saved = to_dict(load_config(SFTConfig, None, ["optim.lr=1e-4", "seed=1"]))
    same = load_config(SFTConfig, None, ["optim.lr=1e-4", "seed=1", "log_every=5", "threads=1",
                                         "save_every=3", "micro_batch_size=2", "output_dir=elsewhere"])
    assert result_diff(saved, same) == []
    other = load_config(SFTConfig, None, ["optim.lr=2e-4", "seed=1", "data.path=b.jsonl"])
    assert result_diff(saved, other) == ["data.path: '' -> 'b.jsonl'", "optim.lr: 0.0001 -> 0.0002"]
