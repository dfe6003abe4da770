"""Offline preference losses and the Bradley-Terry reward loss, against hand-derived numbers and identities.

Notation: sp(x) = -logsigmoid(x) = log(1 + e^-x); s(x) = sigmoid(x). Useful values:
sp(1) = log(1 + e^-1) = 0.3132617, sp(-1) = sp(1) + 1 = 1.3132617, sp(2) = 0.1269280, s(-1) = 0.2689414.
"""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.losses.preference import (
    LOSSES,
    dpo_loss,
    example_mean,
    hinge_loss,
    ipo_loss,
    kto_loss,
    kto_reference_point,
    log_odds,
    needs_reference,
    orpo_loss,
    preference_loss,
    simpo_loss,
    with_nll,
)
from posttrain.losses.reward import bradley_terry_loss

LOG2 = math.log(2.0)
PAIR_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                "logps/chosen", "logps/rejected")


def t(*xs, dtype=torch.float32):
    return torch.tensor(xs, dtype=dtype)


def close(x, y, tol=1e-6):
    return math.isclose(float(torch.as_tensor(x).detach()), y, rel_tol=tol, abs_tol=tol)


# ---------------------------------------------------------------------------- hand-derived values

def test_dpo_hand_derived():
    """Policy chosen/rejected -1/-3, reference -2/-2, beta 0.5.
    h = (-1 - -2) - (-3 - -2) = 1 - (-1) = 2; beta*h = 1; loss = sp(1) = log(1 + e^-1) = 0.3132617.
    rewards: chosen 0.5 * 1 = 0.5, rejected 0.5 * -1 = -0.5, margin 1, accuracy 1; logps are the sums -1, -3."""
    losses, m = dpo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.5)
    assert losses.shape == (1,)
    assert close(losses[0], 0.3132617)
    expect = {"rewards/chosen": 0.5, "rewards/rejected": -0.5, "rewards/accuracies": 1.0,
              "rewards/margins": 1.0, "logps/chosen": -1.0, "logps/rejected": -3.0}
    assert set(m) == set(PAIR_METRICS)
    for k, v in expect.items():
        assert close(m[k], v), k


def test_cdpo_hand_derived():
    """Same pair, eps 0.1: 0.9 * sp(1) + 0.1 * sp(-1) = 0.9 * 0.3132617 + 0.1 * 1.3132617
    = 0.2819355 + 0.1313262 = 0.4132617 (= sp(1) + eps * beta*h, since sp(-x) = sp(x) + x)."""
    losses, _ = dpo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.5, label_smoothing=0.1)
    assert close(losses[0], 0.4132617)


def test_ipo_hand_derived_uses_per_token_averages():
    """beta 0.1, so 1/(2 beta) = 5. Chosen: policy -4, reference -6, 2 tokens -> averaged log-ratio (−4+6)/2 = 1.
    Rejected: policy -9, reference -6, 3 tokens -> (−9+6)/3 = -1. h = 1 - (-1) = 2; loss = (2 - 5)^2 = 9.
    With sums instead, h would be 2 - (-3) = 5 and the loss 0: this pins the averaging.
    Metrics use the summed log-ratios (as TRL): rewards 0.1 * 2 = 0.2 and 0.1 * -3 = -0.3, margin 0.5."""
    losses, m = ipo_loss(t(-4.0), t(-9.0), t(-6.0), t(-6.0), t(2), t(3), beta=0.1)
    assert close(losses[0], 9.0)
    assert close(m["rewards/chosen"], 0.2) and close(m["rewards/rejected"], -0.3)
    assert close(m["rewards/margins"], 0.5) and close(m["logps/chosen"], -4.0)


def test_hinge_hand_derived():
    """The DPO pair (h = 2): beta 0.25 -> relu(1 - 0.5) = 0.5; beta 0.1 -> relu(1 - 0.2) = 0.8;
    beta 1 -> relu(1 - 2) = 0."""
    for beta, want in ((0.25, 0.5), (0.1, 0.8), (1.0, 0.0)):
        losses, _ = hinge_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=beta)
        assert close(losses[0], want), beta


def test_simpo_hand_derived():
    """Chosen sum -2 over 4 tokens -> a_c = -0.5; rejected -6 over 3 tokens -> a_r = -2. beta 2, gamma 1:
    z = 2 * (-0.5 - -2) - 1 = 3 - 1 = 2; loss = sp(2) = log(1 + e^-2) = 0.1269280.
    Rewards are beta * a: -1 and -4 (margin 3); logps are the averages -0.5 and -2."""
    losses, m = simpo_loss(t(-2.0), t(-6.0), t(4), t(3), beta=2.0, gamma=1.0)
    assert close(losses[0], 0.1269280)
    expect = {"rewards/chosen": -1.0, "rewards/rejected": -4.0, "rewards/margins": 3.0,
              "rewards/accuracies": 1.0, "logps/chosen": -0.5, "logps/rejected": -2.0}
    for k, v in expect.items():
        assert close(m[k], v), k


def test_orpo_hand_derived():
    """Chosen sum -2 over 2 tokens -> a_c = -1, p_c = e^-1; rejected -6 over 3 -> a_r = -2, p_r = e^-2.
    log odds(a) = a - log(1 - e^a). Ratio = (-1 - log(1 - e^-1)) - (-2 - log(1 - e^-2))
    = 1 + log((1 - e^-2) / (1 - e^-1)) = 1 + log(1 + e^-1) = 1.3132617.
    e^-1.3132617 = e^-1 / (1 + e^-1) = s(-1) = 0.2689414, so L_OR = log(1 + 0.2689414) = 0.2381830.
    NLL = -a_c = 1; lambda 0.1: loss = 1 + 0.1 * 0.2381830 = 1.0238183.
    Rewards lambda * a: -0.1, -0.2; log_odds_chosen 1.3132617; log_odds_ratio = -0.2381830; nll_loss 1."""
    losses, m = orpo_loss(t(-2.0), t(-6.0), t(2), t(3), lam=0.1)
    assert close(losses[0], 1.0238183)
    expect = {"rewards/chosen": -0.1, "rewards/rejected": -0.2, "rewards/margins": 0.1, "logps/chosen": -1.0,
              "logps/rejected": -2.0, "nll_loss": 1.0, "log_odds_chosen": 1.3132617, "log_odds_ratio": -0.2381830}
    for k, v in expect.items():
        assert close(m[k], v), k


def test_with_nll_hand_derived():
    """The DPO case above (loss 0.3132617 a pair) plus alpha 0.5 x the chosen side's NLL per token: pair 1 has
    chosen sum -1 over 2 tokens (NLL 0.5), pair 2 sum -3 over 1 token (NLL 3) -> losses 0.3132617 + 0.25 and
    0.3132617 + 1.5; nll_loss is the mean NLL, 1.75; the DPO metrics are unchanged."""
    losses, m = dpo_loss(t(-1.0, -1.0), t(-3.0, -3.0), t(-2.0, -2.0), t(-2.0, -2.0), beta=0.5)
    out, m2 = with_nll(losses, m, t(-1.0, -3.0), t(2, 1), alpha=0.5)
    assert close(out[0], 0.5632617) and close(out[1], 1.8132617) and close(m2["nll_loss"], 1.75)
    assert {k: float(v) for k, v in m2.items() if k != "nll_loss"} == {k: float(v) for k, v in m.items()}
    assert torch.equal(with_nll(losses, m, t(-1.0, -3.0), t(2, 1), alpha=0.0)[0], losses)


def test_kto_hand_derived():
    """beta 0.5. Desirable: policy -1, reference -2 -> r = 1. Undesirable: policy -4, reference -3 -> r = -1.
    Mismatched pairs: policy [-3, -5], reference [-4, -5] -> log-ratios [1, 0], mean 0.5 = z0.
    Desirable: 1 - s(0.5 * (1 - 0.5)) = s(-0.25) = 0.4378235.
    Undesirable (weight 1.5): 1.5 * (1 - s(0.5 * (0.5 - -1))) = 1.5 * s(-0.75) = 1.5 * 0.3208213 = 0.4812320.
    Metrics: kl 0.5, rewards/chosen 0.5 * 1 = 0.5, rewards/rejected -0.5, margins 1, logps -1 and -4."""
    losses, m = kto_loss(t(-1.0, -4.0), t(-2.0, -3.0), torch.tensor([True, False]), t(-3.0, -5.0), t(-4.0, -5.0),
                         beta=0.5, desirable_weight=1.0, undesirable_weight=1.5)
    assert close(losses[0], 0.4378235) and close(losses[1], 0.4812320)
    expect = {"kl": 0.5, "rewards/chosen": 0.5, "rewards/rejected": -0.5, "rewards/margins": 1.0,
              "logps/chosen": -1.0, "logps/rejected": -4.0}
    assert set(m) == set(expect)
    for k, v in expect.items():
        assert close(m[k], v), k


def test_bradley_terry_hand_derived():
    """r_c 2, r_r 0.5, margin 0.5: sp(2 - 0.5 - 0.5) = sp(1) = 0.3132617; center 0.01 * (2 + 0.5)^2 = 0.0625;
    total 0.3757617. Accuracy 1, margin (without the dataset margin) 1.5, rewards mean 1.25, min 0.5, max 2."""
    losses, m = bradley_terry_loss(t(2.0), t(0.5), margin=t(0.5), center_coef=0.01)
    assert close(losses[0], 0.3757617)
    expect = {"accuracy": 1.0, "margin": 1.5, "mean_reward": 1.25, "min_reward": 0.5, "max_reward": 2.0}
    for k, v in expect.items():
        assert close(m[k], v), k


# ---------------------------------------------------------------------------- identities

def test_dpo_policy_equals_reference_gives_log2_and_zero_rewards():
    """h = 0 for every pair -> loss sp(0) = log 2, rewards 0, margins 0, no pair counted as won (ties)."""
    logps = t(-3.0, -10.0, -0.5, -42.0)
    rej = t(-7.0, -1.0, -2.5, -40.0)
    losses, m = dpo_loss(logps, rej, logps.clone(), rej.clone(), beta=0.1)
    assert torch.allclose(losses, torch.full((4,), LOG2), atol=1e-7)
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert float(m[k]) == 0.0, k


def test_hinge_is_zero_at_beta_h_one_and_linear_below():
    """beta*h = 1 (h = 4, beta 0.25) -> 0; beta*h = 0 -> 1; beta*h = 3 -> 0."""
    losses, _ = hinge_loss(t(0.0, -1.0, 0.0), t(-4.0, -1.0, -12.0), t(0.0, -1.0, 0.0), t(0.0, -1.0, 0.0), beta=0.25)
    assert losses.tolist() == [0.0, 1.0, 0.0]


def test_cdpo_eps_zero_is_dpo_and_eps_half_is_even_in_h():
    """eps 0 equals DPO exactly. eps 0.5: 0.5 * (sp(x) + sp(-x)) = 0.5 * log(2 + e^x + e^-x) = log(2 cosh(x / 2)),
    x = beta*h: the same for h and -h (the label carries no information), minimal (log 2) at h = 0, gradient 0
    there. (It is not constant in h.)"""
    torch.manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6) * 3 for _ in range(4))
    assert torch.equal(dpo_loss(pc, pr, rc, rr, beta=0.3, label_smoothing=0.0)[0], dpo_loss(pc, pr, rc, rr, beta=0.3)[0])
    half, _ = dpo_loss(pc, pr, rc, rr, beta=0.3, label_smoothing=0.5)
    swapped, _ = dpo_loss(pr, pc, rr, rc, beta=0.3, label_smoothing=0.5)
    x = 0.3 * ((pc - rc) - (pr - rr))
    assert torch.allclose(half, swapped, atol=1e-6)
    assert torch.allclose(half, torch.log(2 * torch.cosh(x / 2)), atol=1e-6)
    h0 = torch.zeros(1, requires_grad=True)
    loss, _ = dpo_loss(h0, t(0.0), t(0.0), t(0.0), beta=0.3, label_smoothing=0.5)
    loss.sum().backward()
    assert close(loss[0], LOG2) and abs(float(h0.grad)) < 1e-7


def test_kto_reference_point_is_clamped_at_zero_and_detached():
    """Mismatched log-ratios [-2, -4] (mean -3) -> z0 = max(-3, 0) = 0. With z0 = 0, beta 0.5, r = 1 (desirable)
    and r = -1 (undesirable): s(-0.5) = 0.3775407 both. No gradient reaches the mismatched-pair log-probs."""
    kl_p = t(-5.0, -7.0).requires_grad_()
    kl_r = t(-3.0, -3.0)
    assert float(kto_reference_point(kl_p, kl_r)) == 0.0
    pol = t(-1.0, -4.0).requires_grad_()
    losses, m = kto_loss(pol, t(-2.0, -3.0), torch.tensor([True, False]), kl_p, kl_r, beta=0.5)
    assert close(losses[0], 0.3775407) and close(losses[1], 0.3775407)
    assert float(m["kl"]) == 0.0
    losses.sum().backward()
    assert kl_p.grad is None and pol.grad is not None
    # A one-sided batch reports only its own side (as TRL), and no margin.
    _, m = kto_loss(t(-1.0), t(-2.0), torch.tensor([True]), kl_p, kl_r, beta=0.5)
    assert set(m) == {"kl", "rewards/chosen", "logps/chosen"}


def test_orpo_equal_probabilities_give_nll_plus_lambda_log2():
    """Equal per-token averages -> log odds ratio 0 -> L_OR = sp(0) = log 2; loss = -a_c + lambda * log 2.
    a = -0.7 (sum -1.4 over 2 tokens vs -2.1 over 3), lambda 0.5: 0.7 + 0.5 * 0.6931472 = 1.0465736."""
    losses, m = orpo_loss(t(-1.4), t(-2.1), t(2), t(3), lam=0.5)
    assert close(losses[0], 1.0465736)
    assert abs(float(m["log_odds_chosen"])) < 1e-6


def test_bradley_terry_equal_rewards_and_margin_shift():
    """Equal rewards -> sp(0) = log 2. A margin m is exactly a shift of r_chosen by -m:
    loss(r_c, r_r, m) == loss(r_c - m, r_r); with equal rewards and m = 1: sp(-1) = 1.3132617."""
    r = t(0.3, -2.0, 5.0)
    losses, m = bradley_terry_loss(r, r.clone())
    assert torch.allclose(losses, torch.full((3,), LOG2), atol=1e-7)
    assert float(m["accuracy"]) == 0.0
    shifted, _ = bradley_terry_loss(r, r.clone(), margin=1.0)
    assert torch.allclose(shifted, torch.full((3,), 1.3132617), atol=1e-6)
    rc, rr, mg = t(1.0, -0.5, 3.0), t(0.0, 0.5, -1.0), t(0.5, 2.0, -1.0)
    assert torch.allclose(bradley_terry_loss(rc, rr, margin=mg)[0], bradley_terry_loss(rc - mg, rr)[0], atol=1e-7)


# ---------------------------------------------------------------------------- gradients

def test_dpo_gradient_matches_formula():
    """L = sp(beta*h), dh/d policy_chosen = 1 -> dL/d policy_chosen = -beta * s(-beta*h); the rejected side is
    the negative of that. Checked against autograd on several h (beta 0.5)."""
    beta = 0.5
    pc = t(-1.0, -5.0, -2.0, -0.1).requires_grad_()
    pr = t(-3.0, -1.0, -2.0, -9.0).requires_grad_()
    rc, rr = t(-2.0, -2.0, -1.0, -3.0), t(-2.0, -4.0, -1.0, -0.5)
    losses, _ = dpo_loss(pc, pr, rc, rr, beta=beta)
    losses.sum().backward()
    h = (pc - rc - (pr - rr)).detach()
    want = -beta * torch.sigmoid(-beta * h)
    assert torch.allclose(pc.grad, want, atol=1e-7)
    assert torch.allclose(pr.grad, -want, atol=1e-7)


# ---------------------------------------------------------------------------- symmetry

def _swap_checks(m, ms):
    assert torch.allclose(ms["rewards/margins"], -m["rewards/margins"], atol=1e-6)
    assert torch.allclose(ms["rewards/chosen"], m["rewards/rejected"]) and torch.allclose(ms["rewards/rejected"], m["rewards/chosen"])
    assert torch.allclose(ms["rewards/accuracies"], 1 - m["rewards/accuracies"])


def test_swapping_chosen_and_rejected_flips_the_metrics():
    """No ties in the batch, so accuracy(swapped) = 1 - accuracy; margins change sign; chosen/rejected rewards swap.
    The batch has 2 of 3 pairs won, so 1 - accuracy != accuracy and the check can fail."""
    pc, pr, rc, rr = t(-1.0, -3.0, -2.0), t(-3.0, -1.0, -6.0), t(-2.0, -2.0, -2.0), t(-2.0, -2.0, -2.5)
    nc, nr = t(2, 5, 3), t(4, 1, 6)
    _, m = dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert close(m["rewards/accuracies"], 2 / 3)
    _swap_checks(m, dpo_loss(pr, pc, rr, rc, beta=0.5)[1])
    _swap_checks(ipo_loss(pc, pr, rc, rr, nc, nr, beta=0.5)[1], ipo_loss(pr, pc, rr, rc, nr, nc, beta=0.5)[1])
    _swap_checks(hinge_loss(pc, pr, rc, rr, beta=0.5)[1], hinge_loss(pr, pc, rr, rc, beta=0.5)[1])
    _swap_checks(simpo_loss(pc, pr, nc, nr, beta=2.0, gamma=0.5)[1], simpo_loss(pr, pc, nr, nc, beta=2.0, gamma=0.5)[1])
    _swap_checks(orpo_loss(pc, pr, nc, nr, lam=0.1)[1], orpo_loss(pr, pc, nr, nc, lam=0.1)[1])
    _, b = bradley_terry_loss(pc, pr)
    _, bs = bradley_terry_loss(pr, pc)
    assert close(bs["accuracy"], 1 - float(b["accuracy"])) and close(bs["margin"], -float(b["margin"]))


# ---------------------------------------------------------------------------- numerics, dtypes, purity

def test_log_odds_is_stable_at_both_ends():
    """log odds(a) = a - log(1 - e^a). a = -1e-4: 1 - e^a ~ 1e-4 -> about -1e-4 + 9.21; naive
    log(1 - exp(a)) in float32 loses digits there. a = -60: e^a ~ 8.8e-27, log odds ~ -60.
    a = 0 (p = 1 exactly) stays finite (capped at -1e-6 inside log1mexp: about 13.8)."""
    a = t(-1e-4, -0.5, -60.0, 0.0)
    lo = log_odds(a)
    assert torch.isfinite(lo).all()
    assert close(lo[0], -1e-4 - math.log(-math.expm1(-1e-4)), tol=1e-5)
    assert close(lo[1], -0.5 - math.log(1 - math.exp(-0.5)), tol=1e-6)
    assert close(lo[2], -60.0, tol=1e-6)
    assert close(lo[3], -math.log(1e-6), tol=1e-3)


def test_orpo_is_finite_near_p_one_and_very_negative():
    """Per-token averages -1e-7, 0 (p = 1) and -1e4 (p = 0): loss and gradients finite."""
    pc = t(-2e-7, 0.0, -3e4, -1e-3).requires_grad_()
    pr = t(0.0, -1e-9, -4e4, -5e4).requires_grad_()
    losses, m = orpo_loss(pc, pr, t(2, 1, 3, 1), t(1, 1, 4, 5), lam=0.1)
    losses.sum().backward()
    assert torch.isfinite(losses).all() and all(torch.isfinite(v) for v in m.values())
    assert torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()


def _all_losses(pc, pr, rc, rr, nc, nr):
    desirable = torch.tensor([True, False, True])
    return {
        "dpo": dpo_loss(pc, pr, rc, rr, beta=0.1),
        "cdpo": dpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=0.1),
        "ipo": ipo_loss(pc, pr, rc, rr, nc, nr, beta=0.1),
        "hinge": hinge_loss(pc, pr, rc, rr, beta=0.1),
        "simpo": simpo_loss(pc, pr, nc, nr, beta=2.0, gamma=0.5),
        "orpo": orpo_loss(pc, pr, nc, nr, lam=0.1),
        "kto": kto_loss(pc, rc, desirable, pr, rr, beta=0.1),
        "bt": bradley_terry_loss(pc, pr, margin=0.5, center_coef=0.01),
    }


def test_bf16_inputs_give_finite_float32_results_equal_to_float32_math():
    """bf16 log-probs (sums of hundreds of tokens, and values near 0) -> float32 losses, finite, equal to the
    float32 computation on the same (bf16-rounded) values; metrics are detached 0-d float32 tensors."""
    b = dict(pc=t(-120.0, -0.001, -3.5, dtype=torch.bfloat16), pr=t(-300.0, -0.002, -3.0, dtype=torch.bfloat16),
             rc=t(-118.0, -0.0015, -4.0, dtype=torch.bfloat16), rr=t(-280.0, -0.001, -3.25, dtype=torch.bfloat16),
             nc=torch.tensor([200, 1, 7]), nr=torch.tensor([310, 1, 5]))
    f = {k: v.float() if v.is_floating_point() else v for k, v in b.items()}
    low, ref = _all_losses(**b), _all_losses(**f)
    for name in low:
        losses, metrics = low[name]
        assert losses.dtype == torch.float32 and torch.isfinite(losses).all(), name
        assert torch.allclose(losses, ref[name][0], atol=1e-6), name
        for k, v in metrics.items():
            assert v.dtype == torch.float32 and v.dim() == 0 and not v.requires_grad, (name, k)
            assert torch.isfinite(v), (name, k)


def test_inputs_are_not_modified():
    """Every loss leaves its input tensors bit-for-bit as they were (and keeps them requiring grad)."""
    torch.manual_seed(1)
    ins = dict(pc=-torch.rand(3) * 5, pr=-torch.rand(3) * 5, rc=-torch.rand(3) * 5, rr=-torch.rand(3) * 5,
               nc=torch.tensor([2, 3, 4]), nr=torch.tensor([5, 1, 2]))
    ins = {k: (v.requires_grad_() if v.is_floating_point() else v) for k, v in ins.items()}
    before = {k: v.detach().clone() for k, v in ins.items()}
    for losses, _ in _all_losses(**ins).values():
        losses.sum().backward()
    for k, v in ins.items():
        assert torch.equal(v.detach(), before[k]), k


# ---------------------------------------------------------------------------- reduction

def test_example_mean_is_invariant_to_how_the_batch_is_split():
    """Sum of per-micro-batch shares (each divided by the global pair count 6) == mean over the whole batch;
    a mean of per-micro-batch means would differ for uneven splits."""
    torch.manual_seed(2)
    losses, _ = dpo_loss(torch.randn(6) * 4, torch.randn(6) * 4, torch.randn(6), torch.randn(6), beta=0.5)
    whole = losses.mean()
    for split in ([6], [1, 5], [2, 2, 2], [4, 2]):
        parts = torch.split(losses, split)
        assert torch.allclose(sum(example_mean(p, 6) for p in parts), whole, atol=1e-6)
    naive = sum(p.mean() for p in torch.split(losses, [1, 5])) / 2
    assert not torch.allclose(naive, whole, atol=1e-4)


# ---------------------------------------------------------------------------- dispatcher

def _kwargs(name):
    kw = dict(policy_chosen_logps=t(-1.0, -6.0), policy_rejected_logps=t(-3.0, -2.0),
              chosen_tokens=t(2, 3), rejected_tokens=t(3, 1))
    if needs_reference(name):
        kw.update(reference_chosen_logps=t(-2.0, -5.0), reference_rejected_logps=t(-2.0, -4.0))
    params = {"dpo": dict(beta=0.5), "cdpo": dict(beta=0.5, label_smoothing=0.1), "ipo": dict(beta=0.1),
              "hinge": dict(beta=0.25), "simpo": dict(beta=2.0, gamma=0.5), "orpo": dict(lam=0.1)}
    return {**kw, **params[name]}


def test_dispatcher_runs_every_loss_and_matches_the_direct_call():
    direct = {
        "dpo": lambda k: dpo_loss(k["policy_chosen_logps"], k["policy_rejected_logps"], k["reference_chosen_logps"],
                                  k["reference_rejected_logps"], beta=0.5),
        "cdpo": lambda k: dpo_loss(k["policy_chosen_logps"], k["policy_rejected_logps"], k["reference_chosen_logps"],
                                   k["reference_rejected_logps"], beta=0.5, label_smoothing=0.1),
        "ipo": lambda k: ipo_loss(k["policy_chosen_logps"], k["policy_rejected_logps"], k["reference_chosen_logps"],
                                  k["reference_rejected_logps"], k["chosen_tokens"], k["rejected_tokens"], beta=0.1),
        "hinge": lambda k: hinge_loss(k["policy_chosen_logps"], k["policy_rejected_logps"],
                                      k["reference_chosen_logps"], k["reference_rejected_logps"], beta=0.25),
        "simpo": lambda k: simpo_loss(k["policy_chosen_logps"], k["policy_rejected_logps"], k["chosen_tokens"],
                                      k["rejected_tokens"], beta=2.0, gamma=0.5),
        "orpo": lambda k: orpo_loss(k["policy_chosen_logps"], k["policy_rejected_logps"], k["chosen_tokens"],
                                    k["rejected_tokens"], lam=0.1),
    }
    assert set(direct) == set(LOSSES)
    seen = set()
    for name in LOSSES:
        kw = _kwargs(name)
        losses, metrics = preference_loss(name, **kw)
        want, _ = direct[name](kw)
        assert torch.equal(losses, want), name
        assert set(PAIR_METRICS) <= set(metrics), name
        seen.add(tuple(losses.tolist()))
    assert len(seen) == len(LOSSES)  # six different losses, not one under six names


def test_needs_reference():
    assert {n: needs_reference(n) for n in LOSSES} == {
        "dpo": True, "cdpo": True, "ipo": True, "hinge": True, "simpo": False, "orpo": False}


def test_dispatcher_refuses_what_it_would_otherwise_ignore():
    with pytest.raises(ValueError, match="unknown preference loss 'kto_pair'"):
        preference_loss("kto_pair", **_kwargs("dpo"))
    with pytest.raises(ValueError, match="unknown preference loss"):
        needs_reference("sigmoid")
    with pytest.raises(ValueError, match="use 'cdpo'"):
        preference_loss("dpo", **{**_kwargs("dpo"), "label_smoothing": 0.1})
    with pytest.raises(ValueError, match="needs label_smoothing"):
        preference_loss("cdpo", **_kwargs("dpo"))
    with pytest.raises(ValueError, match="'hinge' does not take gamma"):
        preference_loss("hinge", **{**_kwargs("hinge"), "gamma": 0.5})
    with pytest.raises(ValueError, match="'simpo' does not take reference_chosen_logps, reference_rejected_logps"):
        preference_loss("simpo", **{**_kwargs("simpo"), **_kwargs("dpo"), "beta": 2.0})
