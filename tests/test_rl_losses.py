"""The online-RL pieces (posttrain/losses/rl.py) against hand-derived values and plain loops."""

import math

import pytest
import torch

from posttrain.losses import rl

NAN = float("nan")


def test_gae_hand_values():
    # gamma 0.9, lambda 0.95, values 0, rewards [0, 0, 1]: A2 = 1, A1 = 0.855 * 1, A0 = 0.855^2
    rewards, values, mask = torch.tensor([[0.0, 0.0, 1.0]]), torch.zeros(1, 3), torch.ones(1, 3)
    for fn in (rl.gae, rl.gae_loop):
        adv, ret = fn(rewards, values, mask, gamma=0.9, lam=0.95)
        assert adv.tolist()[0] == pytest.approx([0.731025, 0.855, 1.0], abs=1e-6)
        assert torch.equal(ret, adv)                                  # values 0: returns are the advantages


def test_gae_with_values_hand():
    # one step, V0 = 0.5, r0 = 1, nothing after: delta = 1 - 0.5, A = 0.5, return = 1
    adv, ret = rl.gae(torch.tensor([[1.0]]), torch.tensor([[0.5]]), torch.ones(1, 1), gamma=0.9, lam=0.95)
    assert adv.item() == pytest.approx(0.5) and ret.item() == pytest.approx(1.0)
    # lambda 0: A_t = delta_t = r_t + gamma V_{t+1} - V_t
    r, v = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.2, 0.4]])
    adv, _ = rl.gae(r, v, torch.ones(1, 2), gamma=0.5, lam=0.0)
    assert adv.tolist()[0] == pytest.approx([0.0 + 0.5 * 0.4 - 0.2, 1.0 - 0.4])


def test_gae_vectorised_equals_loop_and_ignores_padding():
    g = torch.Generator().manual_seed(0)
    B, T = 6, 9
    lengths = torch.tensor([9, 1, 4, 0, 7, 3])
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    r, v = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    a1, r1 = rl.gae(r, v, mask, gamma=0.99, lam=0.95)
    a2, r2 = rl.gae_loop(r, v, mask, gamma=0.99, lam=0.95)
    assert torch.allclose(a1, a2, atol=1e-5) and torch.allclose(r1, r2, atol=1e-5)
    garbage_r, garbage_v = r.masked_fill(mask == 0, NAN), v.masked_fill(mask == 0, 1e6)
    a3, r3 = rl.gae(garbage_r, garbage_v, mask, gamma=0.99, lam=0.95)
    assert torch.allclose(a1, a3) and torch.allclose(r1, r3)
    assert torch.all(a1[mask == 0] == 0)
    # gamma = lambda = 1 and values 0: the advantage is the reward to go
    a4, _ = rl.gae(r, torch.zeros(B, T), mask, gamma=1.0, lam=1.0)
    to_go = (r * mask).flip(1).cumsum(1).flip(1) * mask
    assert torch.allclose(a4, to_go, atol=1e-5)


def test_kl_estimators_hand_values():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])  # log r = log 2
    assert rl.kl_per_token(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert rl.kl_per_token(logp, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert rl.kl_per_token(logp, ref, "k3").item() == pytest.approx(0.5 - 1 + math.log(2))
    with pytest.raises(ValueError, match="k1, k2, k3"):
        rl.kl_per_token(logp, ref, "k4")


def test_k1_and_k3_are_unbiased():
    # the expectation under the policy p, taken exactly over a 5-token vocabulary, is KL(p || q)
    p = torch.tensor([0.1, 0.2, 0.3, 0.25, 0.15])
    q = torch.tensor([0.3, 0.1, 0.1, 0.2, 0.3])
    kl = float((p * (p / q).log()).sum())
    for kind in ("k1", "k3"):
        est = rl.kl_per_token(p.log(), q.log(), kind)
        assert float((p * est).sum()) == pytest.approx(kl, abs=1e-6)
    assert torch.all(rl.kl_per_token(p.log(), q.log(), "k3") >= 0)


def test_masked_whiten_uses_only_masked_positions():
    x, mask = torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1, 1, 1, 0]])
    out = rl.masked_whiten(x, mask)                               # mean 2, unbiased variance 1
    assert out.tolist()[0] == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)
    kept = rl.masked_whiten(x, mask, shift_mean=False)
    assert kept.tolist()[0] == pytest.approx([1.0, 2.0, 3.0, 0.0], abs=1e-6)
    assert rl.masked_whiten(x.masked_fill(mask == 0, NAN), mask).tolist() == out.tolist()


def test_policy_loss_hand_values():
    old = torch.zeros(1, 4)
    logp = torch.tensor([[math.log(1.5), math.log(1.5), math.log(0.5), math.log(0.5)]])
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, m = rl.policy_loss(logp, old, adv, torch.ones(1, 4), clip_eps=0.2)
    # r 1.5, A 1: max(-1.5, -1.2); A -1: max(1.5, 1.2); r 0.5, A 1: max(-0.5, -0.8); A -1: max(0.5, 0.8)
    assert loss.tolist()[0] == pytest.approx([-1.2, 1.5, -0.5, 0.8])
    assert m["clipfrac"].item() == pytest.approx(0.5)
    assert m["ratio"].item() == pytest.approx(1.0)
    assert m["approxkl"].item() == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 2)
    high, _ = rl.policy_loss(logp, old, adv, torch.ones(1, 4), clip_eps=0.2, clip_eps_high=0.28)
    assert high.tolist()[0][0] == pytest.approx(-1.28)           # DAPO's clip-higher: only the upper bound moves
    seq, _ = rl.policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 4))   # one advantage per sequence
    assert seq.tolist()[0] == pytest.approx([-1.2, -1.2, -0.5, -0.5])


def test_policy_loss_gradient_is_the_policy_gradient_on_policy():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    adv = torch.tensor([[0.7, -0.3]])
    loss, _ = rl.policy_loss(logp, logp.detach(), adv, torch.ones(1, 2))
    loss.sum().backward()
    assert logp.grad.tolist()[0] == pytest.approx([-0.7, 0.3])     # d/dlogp of -A r at r = 1


def test_value_loss_hand_values():
    mask = torch.ones(1, 2)
    v, old, ret = torch.tensor([[1.5, 1.5]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 2.0]])
    loss, m = rl.value_loss(v, old, ret, mask, clip_range=0.2)
    # R 0: plain 2.25, clipped (1.2)^2 = 1.44 -> 1.125; R 2: plain 0.25, clipped 0.64 -> 0.32
    assert loss.tolist()[0] == pytest.approx([1.125, 0.32])
    assert m["vf_clipfrac"].item() == pytest.approx(0.5)
    plain, _ = rl.value_loss(v, old, ret, mask, clip_range=None)
    assert plain.tolist()[0] == pytest.approx([1.125, 0.125])


def test_aggregations_hand_values_and_split_invariance():
    per_token = torch.tensor([[2.0, NAN, NAN, NAN], [1.0, 1.0, 1.0, NAN]])
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0]])
    assert rl.aggregate(per_token, mask, "token_mean").item() == pytest.approx(5 / 4)
    assert rl.aggregate(per_token, mask, "sequence_mean").item() == pytest.approx((2 + 1) / 2)
    assert rl.aggregate(per_token, mask, "constant", max_tokens=4).item() == pytest.approx(5 / 8)
    with pytest.raises(ValueError, match="max_tokens"):
        rl.aggregate(per_token, mask, "constant")
    for mode in rl.AGGREGATIONS:
        whole = rl.aggregate(per_token, mask, mode, max_tokens=4)
        parts = sum(rl.aggregate(per_token[i:i + 1], mask[i:i + 1], mode, global_tokens=4, global_sequences=2,
                                 max_tokens=4) for i in range(2))
        assert parts.item() == pytest.approx(whole.item())


def test_group_advantages_hand_values():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5])
    grpo = rl.group_advantages(r, 4, "grpo")                      # mean 0.25, unbiased std 0.5
    assert grpo.tolist()[:4] == pytest.approx([0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001])
    assert grpo.tolist()[4:] == [0.0] * 4                          # a tied group teaches nothing
    assert rl.group_advantages(r, 4, "dr_grpo").tolist()[:4] == pytest.approx([0.75, -0.25, -0.25, -0.25])
    assert rl.group_advantages(r, 4, "rloo").tolist()[:4] == pytest.approx([1.0, -1 / 3, -1 / 3, -1 / 3])
    with pytest.raises(ValueError, match="tile the batch"):
        rl.group_advantages(r, 3)


def test_ppo_token_rewards():
    kl = torch.tensor([[0.1, 0.2, 0.3, NAN], [0.4, NAN, NAN, NAN], [NAN] * 4])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    out = rl.ppo_token_rewards(torch.tensor([1.0, -2.0, 5.0]), kl, mask, beta=0.5)
    assert out.tolist()[0] == pytest.approx([-0.05, -0.1, -0.15 + 1.0, 0.0])
    assert out.tolist()[1] == pytest.approx([-0.2 - 2.0, 0.0, 0.0, 0.0])
    assert out.tolist()[2] == [0.0] * 4                            # no response token: no reward


def test_adaptive_kl_controller():
    # KL twice the target: the error is clipped to 0.2; 256 episodes over a horizon of 10k
    assert rl.adaptive_kl_beta(0.1, 12.0, 6.0, 10000, 256) == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))
    assert rl.adaptive_kl_beta(0.1, 5.4, 6.0, 10000, 256) == pytest.approx(0.1 * (1 - 0.1 * 256 / 10000))
    assert rl.adaptive_kl_beta(0.1, NAN, 6.0, 10000, 256) == 0.1
