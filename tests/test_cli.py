"""The command line as a new user meets it: numbers outside their range and outputs that cannot be written are
one `error:` line and exit code 2 before any model is loaded, and output piped into `head` ends quietly."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import cli_fails


@pytest.mark.parametrize("flags, message", [
    (["--top-p", "2"], "--top-p: must be in (0, 1], got 2.0"),
    (["--top-p", "0"], "--top-p: must be in (0, 1], got 0.0"),
    (["--temperature", "-1"], "--temperature: must be >= 0, got -1.0"),
    (["--max-new-tokens", "0"], "--max-new-tokens: must be >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
])
def test_generate_numbers_are_checked_before_the_model_is_loaded(tmp_path, capsys, flags, message):
    err = cli_fails(capsys, ["generate", "--model", str(tmp_path / "missing"), "--prompt", "hi", *flags])
    assert err == f"error: {message}"  # not "no such folder": nothing was loaded


def test_outputs_that_cannot_be_written_fail_before_the_work(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    err = cli_fails(capsys, ["world", "sft-data", "--kind", "curated", "--n", "5", "--out", str(blocker / "sft.jsonl")])
    assert "--out: cannot write" in err
    err = cli_fails(capsys, ["world", "corpus", "--n", "5", "--out", str(blocker / "c.jsonl")])
    assert "--out: cannot write" in err
    err = cli_fails(capsys, ["merge", "--adapter", str(tmp_path / "none"), "--out", str(blocker / "m")])
    assert "--out: cannot write" in err
    err = cli_fails(capsys, ["sft", "model=x", "data=y.jsonl", f"output_dir={blocker / 'run'}"])
    assert "output_dir: cannot write" in err


def test_output_piped_into_head_ends_without_a_traceback():
    """`posttrain world tasks --n 400 | head -n 1`: the reader closes the pipe early."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = f"{sys.executable} -m posttrain world tasks --n 400 --json | head -n 1"
    p = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd}"], capture_output=True, text=True, env=env, timeout=120)
    assert p.stdout.strip() == "["
    assert "Traceback" not in p.stderr and "BrokenPipeError" not in p.stderr, p.stderr
