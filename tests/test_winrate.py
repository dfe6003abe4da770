"""Win rates (`posttrain/eval/winrate.py`): raw and length-controlled, their intervals, the annotation file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import minimize

from posttrain.cli import run
from posttrain.errors import UserError
from posttrain.eval.stats import fit_logistic
from posttrain.eval.winrate import length_controlled, length_feature, read_annotations, win_rates


def biased_judge(n: int, seed: int, quality: float, bias: float, longer: float):
    """Rows where the model is `longer` characters longer on average and a judge that prefers, beyond the
    model's `quality` (log-odds), the longer answer with weight `bias` on tanh(length gap / 100)."""
    rng = np.random.default_rng(seed)
    len_baseline = rng.integers(50, 400, n).astype(float)
    len_model = np.maximum(1, len_baseline + rng.normal(longer, 100, n))
    p = 1 / (1 + np.exp(-(quality + bias * np.tanh((len_model - len_baseline) / 100))))
    u = rng.random(n)
    y = np.where(u < 0.1, 0.5, (rng.random(n) < p).astype(float))
    return y, len_model, len_baseline


def test_a_model_against_itself_is_fifty_percent():
    """Identical answers: zero length spread (no division by zero), the ties give exactly 0.5."""
    r = win_rates([0.5] * 20, [42] * 20, [42] * 20, n_boot=100)
    assert r["win_rate"]["value"] == 0.5 and r["length_controlled"]["value"] == pytest.approx(0.5, abs=1e-12)
    assert r["length_controlled"]["lo"] == pytest.approx(0.5) and r["length_controlled"]["hi"] == pytest.approx(0.5)
    assert not r["length_controlled"]["separable"]
    # equal lengths but real verdicts: with no spread the length term is 0 and s(theta) is the raw win rate
    y = [1, 0, 1, 1, 0.5, 0, 1, 1]
    lc = length_controlled(y, [10] * 8, [10] * 8, n_boot=50)
    assert lc["value"] == pytest.approx(np.mean(y), abs=1e-9) and lc["phi"] == 0.0
    assert np.all(length_feature(np.array([3.0, 5.0]), np.array([4.0, 6.0])) == 0)  # every difference equal


def test_symmetric_when_the_two_sides_swap():
    y, lm, lb = biased_judge(300, seed=1, quality=0.3, bias=1.0, longer=40)
    one = length_controlled(y, lm, lb, n_boot=200, seed=5)
    two = length_controlled(1 - y, lb, lm, n_boot=200, seed=5)
    assert one["value"] + two["value"] == pytest.approx(1.0, abs=1e-9)
    assert one["lo"] == pytest.approx(1 - two["hi"], abs=1e-9) and one["hi"] == pytest.approx(1 - two["lo"], abs=1e-9)
    assert one["phi"] == pytest.approx(two["phi"], abs=1e-9)


def test_equals_an_independent_fit():
    """scipy's BFGS on the soft-label likelihood of theta + phi tanh((len_b - len_m) / sd), sd with ddof 1
    (pandas' std, as AlpacaEval computes it): the same length-controlled win rate to 0.1 points."""
    y, lm, lb = biased_judge(400, seed=2, quality=0.2, bias=1.5, longer=60)
    d = lb - lm
    f = np.tanh(d / np.std(d, ddof=1))

    def nll(b):
        z = b[0] + b[1] * f
        return (y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z)).sum()

    theta, phi = minimize(nll, np.zeros(2), method="BFGS", options={"gtol": 1e-9}).x
    ours = length_controlled(y, lm, lb, n_boot=20)
    assert 100 * ours["value"] == pytest.approx(100 / (1 + np.exp(-theta)), abs=0.1)
    assert ours["phi"] == pytest.approx(phi, abs=1e-4) and ours["theta"] == pytest.approx(theta, abs=1e-4)


def test_length_control_removes_a_verbosity_bias():
    """A judge that likes length and a model of the baseline's quality that writes longer answers: the raw
    win rate is well above 50%, the length-controlled one is not (its interval holds 50%)."""
    y, lm, lb = biased_judge(2000, seed=3, quality=0.0, bias=2.0, longer=80)
    r = win_rates(y, lm, lb, n_boot=300)
    assert r["win_rate"]["lo"] > 0.6
    lc = r["length_controlled"]
    assert lc["lo"] < 0.5 < lc["hi"] and abs(lc["value"] - 0.5) < 0.04
    assert lc["phi"] < -1.0  # preferred when the baseline is shorter: len_baseline - len_model < 0


def test_separable_rows_get_the_stated_ridge():
    r = win_rates([1.0] * 10, [20] * 10, [10] * 10, n_boot=50)
    lc = r["length_controlled"]
    assert lc["separable"] and 0.99 < lc["value"] < 1.0 and np.isfinite(lc["theta"])
    # the plain fitter reports that it did not converge on the same rows
    _, ok = fit_logistic(np.ones((10, 1)), np.ones(10), np.ones((1, 10)))
    assert not ok[0]


def test_fit_logistic_by_hand():
    """One intercept and soft targets: the maximum is logit(weighted mean of y)."""
    y = np.array([1.0, 0.5, 0.0, 1.0])
    w = np.array([[1.0, 2.0, 1.0, 3.0]])
    beta, ok = fit_logistic(np.ones((4, 1)), y, w)
    mean = (w[0] * y).sum() / w.sum()
    assert ok[0] and beta[0, 0] == pytest.approx(np.log(mean / (1 - mean)), abs=1e-10)


def test_annotation_file_and_its_bad_rows(tmp_path, capsys):
    rows = [{"output_1": "short", "output_2": "a longer answer", "preference": 2, "generator_2": "m"},
            {"output_1": "b", "output_2": "m", "preference": 1.5, "generator_2": "m"},
            {"output_1": "b", "output_2": "m", "preference": 1.73, "generator_2": "m"},
            {"output_1": "b", "preference": 1, "generator_2": "m"},
            {"output_1": "b", "output_2": "m", "preference": None, "generator_2": "m"},
            {"output_1": "bb", "output_2": "mm", "preference": 1, "generator_2": "other"}]
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(rows))
    groups, skipped = read_annotations(str(path))
    assert sorted(groups) == ["m", "other"] and [g["y"] for g in groups["m"]] == [1.0, 0.5]
    assert groups["m"][0] == {"y": 1.0, "len_model": 15, "len_baseline": 5}
    assert [s["where"] for s in skipped] == [f"{path}:[2]", f"{path}:[3]", f"{path}:[4]"]
    assert "1.73" in skipped[0]["reason"] and "output_2" in skipped[1]["reason"]
    assert run(["eval", "winrate", "--annotations", str(path), "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert "length-controlled" in out and "skipped 3 annotation rows" in out and "other" in out
    assert run(["eval", "winrate", "--annotations", str(path), "--bootstrap", "50", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["models"]["m"]["win_rate"]["value"] == 0.75 and result["n_skipped"] == 3
    only_bad = tmp_path / "bad.jsonl"
    only_bad.write_text(json.dumps(rows[2]) + "\n")
    with pytest.raises(UserError, match=r"no usable annotation rows \(1 skipped; first: .*bad.jsonl:1"):
        run(["eval", "winrate", "--annotations", str(only_bad)])
    with pytest.raises(UserError, match="no such file"):
        run(["eval", "winrate", "--annotations", str(tmp_path / "missing.json")])
