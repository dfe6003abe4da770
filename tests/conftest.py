"""Shared fixtures: a tokenizer trained in-process, a tiny fixed-init Llama, a small chat data file.

Nothing is downloaded (HF_HUB_OFFLINE=1); every model is built from a config with a fixed seed.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)

WORDS = ["apple", "river", "stone", "cloud", "tiger", "piano", "garden", "silver", "ocean", "forest"]


def chat_rows(n: int = 48, seed: int = 0) -> list[dict]:
    """Deterministic small chat dataset: arithmetic, word reversal, and two-turn list/upper-case chats."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = rng.random()
        if k < 0.4:
            a, b = rng.randint(1, 99), rng.randint(1, 99)
            msgs = [("user", f"What is {a} + {b}?"), ("assistant", f"{a} + {b} = {a + b}.")]
        elif k < 0.7:
            w = rng.choice(WORDS)
            msgs = [("user", f"Reverse the word {w}."), ("assistant", w[::-1])]
        else:
            ws = rng.sample(WORDS, rng.randint(2, 4))
            msgs = [("user", f"List {len(ws)} words."), ("assistant", ", ".join(ws) + "."),
                    ("user", "Now in upper case."), ("assistant", ", ".join(w.upper() for w in ws) + ".")]
        rows.append({"messages": [{"role": r, "content": c} for r, c in msgs]})
    return rows


def preference_rows(n: int = 24, scores: bool = False) -> list[dict]:
    """The first turn of each test chat: its right answer chosen, another chat's answer rejected (with
    UltraFeedback-style scores when asked)."""
    rows = chat_rows(n, seed=3)
    out = []
    for i, r in enumerate(rows):
        user, good = r["messages"][0]["content"], r["messages"][1]["content"]
        bad = rows[(i + 1) % n]["messages"][1]["content"]
        row = {"prompt": user, "chosen": good, "rejected": bad if bad != good else good + " No."}
        out.append({**row, "score_chosen": 8.0 - i % 3, "score_rejected": 3.0 + i % 2} if scores else row)
    return out


def cli_fails(capsys, argv: list[str]) -> str:
    """Run `posttrain ARGV`; it must exit 2 with exactly one stderr line `error: ...`, which is returned."""
    from posttrain.cli import main as cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def read_metrics(out: Path) -> list[dict]:
    """A run folder's metrics.jsonl, one dict per logged line."""
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def train_losses(out: Path) -> list[float]:
    return [m["train/loss"] for m in read_metrics(out) if "train/loss" in m]


def resumed_equals_uninterrupted(full: Path, cut: Path, sub: str) -> None:
    """An interrupted-then-resumed run folder `cut` logged the same losses and saved the same weights (in `sub`:
    model or adapter) as the uninterrupted `full`, bit for bit."""
    from safetensors.torch import load_file

    assert train_losses(cut) == train_losses(full)
    a = load_file(next((full / sub).glob("*.safetensors")))
    b = load_file(next((cut / sub).glob("*.safetensors")))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def launch_failure(proc) -> str:
    """What a failed `accelerate launch` said: each worker's error lines (the launcher's summary, at the end of
    stderr, names only the signal), then the end of stderr."""
    lines = proc.stderr.splitlines()
    errors = [ln for ln in lines if any(w in ln for w in ("Error", "error:", "terminate", "Abort", "what():"))]
    return "\n".join(errors[:20]) + "\n...\n" + proc.stderr[-1500:]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def interrupt_at(monkeypatch):
    """`with interrupt_at(3): run(...)`: the run stops with KeyboardInterrupt when optimizer step 3 ends, after
    the checkpoints before it were written (as a killed process would); the context expects the interrupt."""
    import contextlib

    from posttrain.recipes import common

    real = common.check_finite

    @contextlib.contextmanager
    def at(step: int):
        def check(value, s, ckpt_dir):
            if s == step:
                raise KeyboardInterrupt
            real(value, s, ckpt_dir)

        monkeypatch.setattr(common, "check_finite", check)
        try:
            with pytest.raises(KeyboardInterrupt):
                yield
        finally:
            monkeypatch.setattr(common, "check_finite", real)

    return at


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and leave the other core to subprocess tests)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tok():
    from posttrain.models.tokenizer import train_tokenizer

    texts = [m["content"] for r in chat_rows(200, seed=1) for m in r["messages"]]
    return train_tokenizer(texts, vocab_size=400)


@pytest.fixture(scope="session")
def model_dir(tok, tmp_path_factory) -> Path:
    """A saved tiny Llama (hidden 32, 2 layers) with the test tokenizer."""
    from posttrain.models.tiny import tiny_model

    d = tmp_path_factory.mktemp("tiny_llama")
    tiny_model("llama", tok, seed=0, hidden=32, layers=2, heads=4).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture
def chat_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "chat.jsonl", chat_rows(48))
