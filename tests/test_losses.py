"""SFT loss and its reduction, against hand-derived numbers."""

from __future__ import annotations

import math

import torch

from posttrain.losses.sft import IGNORE, nll_sum, token_mean
from posttrain.recipes.common import DataStream, lr_lambda, shard


def test_uniform_logits_give_log_vocab():
    """Uniform scores over V=4: every trained token costs log 4; the -100 target costs nothing."""
    logits = torch.zeros(1, 4, 4)
    targets = torch.tensor([[0, 3, IGNORE, 2]])
    s, n = nll_sum(logits, targets)
    assert n.tolist() == [3]
    assert math.isclose(s.item(), 3 * math.log(4), rel_tol=1e-6)


def test_hand_derived_value():
    """Scores (2, 0, 0), target 0: -log(e^2 / (e^2 + 2)) = log(1 + 2e^-2) = 0.2395447...;
    target 1: -log(1 / (e^2 + 2)) = log(e^2 + 2) = 2.2395447..."""
    logits = torch.tensor([[[2.0, 0.0, 0.0], [2.0, 0.0, 0.0]]])
    s, n = nll_sum(logits, torch.tensor([[0, 1]]))
    assert n.item() == 2
    assert math.isclose(s.item(), 0.2395447 + 2.2395447, rel_tol=1e-6)


def test_token_mean_is_invariant_to_how_the_batch_is_split():
    """Sum of per-micro-batch shares == mean over the whole batch, however rows are grouped."""
    torch.manual_seed(0)
    logits = torch.randn(6, 5, 11)
    targets = torch.randint(0, 11, (6, 5))
    targets[0, :4] = IGNORE  # rows with very different trained-token counts
    targets[1, 1:] = IGNORE  # first half: 1 + 1 + 5 tokens, second half: 15
    s, n = nll_sum(logits, targets)
    whole = s.sum() / n.sum()
    total = int(n.sum())
    for split in ([6], [2, 2, 2], [1, 5], [3, 3]):
        parts, start = [], 0
        for size in split:
            ps, _ = nll_sum(logits[start:start + size], targets[start:start + size])
            parts.append(token_mean(ps, total))
            start += size
        assert torch.allclose(sum(parts), whole, atol=1e-6)
    # A per-micro-batch mean would not be invariant: this is why the global count is passed in.
    naive = sum((nll_sum(logits[i:i + 3], targets[i:i + 3])[0].sum() / nll_sum(logits[i:i + 3], targets[i:i + 3])[1].sum())
                for i in (0, 3)) / 2
    assert not torch.allclose(naive, whole, atol=1e-4)


def test_lr_schedule_values():
    f = lr_lambda(warmup=2, total=10, schedule="cosine", min_ratio=0.1)
    assert [round(f(s), 6) for s in (0, 1)] == [round(1 / 3, 6), round(2 / 3, 6)]
    assert f(2) == 1.0  # peak right after warmup
    assert math.isclose(f(6), 0.1 + 0.9 * 0.5, rel_tol=1e-9)  # half way through the decay
    assert math.isclose(f(10), 0.1, rel_tol=1e-9)
    lin = lr_lambda(0, 4, "linear", 0.0)
    assert [lin(s) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert lr_lambda(0, 4, "constant", 0.0)(3) == 1.0


def test_data_stream_covers_each_unit_once_per_epoch_and_is_seeded():
    s = DataStream(n_units=10, batch_size=5, seed=3)
    epoch0 = s.step_units(0) + s.step_units(1)
    assert sorted(epoch0) == list(range(10))
    assert sorted(s.step_units(2) + s.step_units(3)) == list(range(10))
    assert epoch0 != s.step_units(2) + s.step_units(3)  # a new order each epoch
    assert DataStream(10, 5, 3).step_units(1) == s.step_units(1)  # a pure function of (seed, step)
    assert DataStream(10, 5, 4).step_units(0) != s.step_units(0)


def test_shard_splits_contiguously():
    assert shard(list(range(8)), rank=0, world=2, micro=2) == [[0, 1], [2, 3]]
    assert shard(list(range(8)), rank=1, world=2, micro=2) == [[4, 5], [6, 7]]
    assert shard(list(range(8)), rank=0, world=1, micro=8) == [list(range(8))]
