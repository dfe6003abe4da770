"""The diagnostic examples: a bad model path gives one line and exit 2, as the posttrain commands do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("script", ["base_latent_skills.py", "base_copy_probe.py"])
def test_bad_model_path_is_one_line_and_exit_2(script, tmp_path):
    run = subprocess.run([sys.executable, str(EXAMPLES / script), str(tmp_path / "missing")],
                         capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [f"error: model: no such folder '{tmp_path / 'missing'}'"]
