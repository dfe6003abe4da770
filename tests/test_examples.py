"""The diagnostic examples: a bad model path or count gives one error line and exit 2, as the posttrain commands do."""

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


@pytest.mark.parametrize("script, args", [("base_latent_skills.py", ["--n", "0"]), ("base_copy_probe.py", ["--per-label", "0"]),
                                          ("base_copy_probe.py", ["--per-label", "x"])])
def test_a_count_below_one_is_an_error(script, args):
    run = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                         env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].endswith(("must be at least 1, got 0", "expected a whole number, got 'x'"))
