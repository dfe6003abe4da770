"""The recipes' shared plumbing: a checkpoint holds several named models, optimizers and schedules (PPO has a
policy and a value model) and restores every one of them exactly, with the RNG states."""

from __future__ import annotations

import random

import numpy as np
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
    """A probe makes missing folders and removes them again; run by every process at once, one process's clean-up
    pulled the folder from under another's probe (a two-process run failed with 'cannot write'). Only the main
    process, which writes the run folder, probes it; the others wait for it."""
    from types import SimpleNamespace

    probed, waits = [], []
    monkeypatch.setattr(common, "check_writable", lambda path, *a, **k: probed.append(path))
    for main in (False, True):
        acc = SimpleNamespace(is_main_process=main, wait_for_everyone=lambda main=main: waits.append(main))
        common.open_run(common.RunConfig(output_dir=str(tmp_path / "new" / "run")), acc, "test")
    assert probed == [tmp_path / "new" / "run"] and waits.count(False) >= 1
    assert not (tmp_path / "new").exists()  # nothing made by the processes that do not probe
