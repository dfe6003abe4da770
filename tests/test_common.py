"""The recipes' shared plumbing: a checkpoint holds several named models, optimizers and schedules (PPO has a
policy and a value model) and restores every one of them exactly, with the RNG states."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from posttrain.recipes import common


def _pair(seed: int):
    torch.manual_seed(seed)
    policy, value = torch.nn.Linear(4, 3), torch.nn.Linear(4, 1)
    with torch.no_grad():
        value.bias.zero_()  # frozen (the same in every model built here): not saved, only trainable weights are
    value.bias.requires_grad_(False)
    cfg = common.OptimConfig(lr=0.1, warmup_steps=1)
    opts = {name: common.make_optimizer([p for p in m.parameters() if p.requires_grad], cfg, 10)
            for name, m in (("policy", policy), ("value", value))}
    return {"policy": policy, "value": value}, {k: o for k, (o, _) in opts.items()}, {k: s for k, (_, s) in opts.items()}


def _train(models, optimizers, schedulers, steps: int) -> None:
    for _ in range(steps):
        x = torch.randn(8, 4)
        loss = models["policy"](x).pow(2).mean() + models["value"](x).pow(2).mean()
        loss.backward()
        for name in models:
            optimizers[name].step()
            schedulers[name].step()
            optimizers[name].zero_grad()


def test_a_checkpoint_restores_several_models_optimizers_and_schedules(tmp_path):
    models, optimizers, schedulers = _pair(0)
    _train(models, optimizers, schedulers, 3)
    path = common.save_checkpoint(tmp_path, 3, models, optimizers, schedulers, keep=2, extra={"kl_coef": 0.05})
    random.random(), np.random.rand(), torch.rand(1)  # move every RNG after the save
    _train(models, optimizers, schedulers, 2)
    after = {k: {n: p.detach().clone() for n, p in m.named_parameters()} for k, m in models.items()}
    draws = (random.random(), float(np.random.rand()), torch.rand(1).item())

    fresh, fresh_opt, fresh_sched = _pair(1)  # other weights, untouched optimizers
    step, extra = common.load_checkpoint(path, fresh, fresh_opt, fresh_sched)
    assert step == 3 and extra == {"kl_coef": 0.05}
    assert fresh_sched["value"].last_epoch == 3
    random.random(), np.random.rand(), torch.rand(1)
    _train(fresh, fresh_opt, fresh_sched, 2)  # the same two steps: same data draws, same Adam moments, same lr
    for k, m in fresh.items():
        for n, p in m.named_parameters():
            if p.requires_grad:
                assert torch.equal(p, after[k][n]), (k, n)
    assert (random.random(), float(np.random.rand()), torch.rand(1).item()) == draws
    assert set(torch.load(path / "state.pt", weights_only=False)["models"]["value"]) == {"weight"}


def test_only_the_main_process_probes_the_run_folder(tmp_path, monkeypatch):
    """Only the main process, which writes the run folder, probes it; the others wait for it (a two-process run
    once failed with 'cannot write' when every process probed: see test_probes_never_make_the_paths_own_folders)."""
    from types import SimpleNamespace

    probed, waits = [], []
    monkeypatch.setattr(common, "check_writable", lambda path, *a, **k: probed.append(path))
    for main in (False, True):
        acc = SimpleNamespace(is_main_process=main, wait_for_everyone=lambda main=main: waits.append(main))
        common.open_run(common.RunConfig(output_dir=str(tmp_path / "new" / "run")), acc, "test")
    assert probed == [tmp_path / "new" / "run"] and waits.count(False) >= 1
    assert not (tmp_path / "new").exists()  # nothing made by the processes that do not probe


def test_probes_never_make_the_paths_own_folders(tmp_path, monkeypatch):
    """`check_writable` probes in the nearest folder that exists, under names of its own: two runs that start at
    once with the same missing output folder (tests/test_models.py starts two `posttrain sft` in one folder) can
    no longer remove `runs/` from under each other's probe; nothing is left behind; a file in the way and an
    unwritable folder are one-line errors."""
    import tempfile

    from posttrain.errors import UserError
    from posttrain.io import check_writable

    made = []
    real = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda **k: made.append(k["dir"]) or real(**k))
    check_writable(tmp_path / "runs" / "sft", "output_dir", folder=True)
    check_writable(tmp_path / "runs" / "out.jsonl", "--out")
    assert made == [tmp_path, tmp_path] and list(tmp_path.iterdir()) == []
    (tmp_path / "runs").mkdir()
    check_writable(tmp_path / "runs" / "sft", "output_dir", folder=True)
    assert made[-1] == tmp_path / "runs" and list((tmp_path / "runs").iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"output_dir: cannot write '.*file/sub' \(Not a directory\)"):
        check_writable(tmp_path / "file" / "sub", "output_dir", folder=True)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() != 0:  # root writes anywhere
        with pytest.raises(UserError, match="cannot write"):
            check_writable(locked / "a" / "b.json", "--out")
