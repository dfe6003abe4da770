"""Arena ratings (`posttrain/eval/arena.py`): Bradley-Terry by maximum likelihood, bootstrap intervals, ranks,
online Elo, the battle file and its bad rows."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy.optimize import minimize

from posttrain.cli import run
from posttrain.errors import UserError
from posttrain.eval.arena import SCALE, arena_ratings, elo, read_battles


def synthetic(true: dict[str, float], n: int, seed: int, tie: float = 0.0) -> list[tuple[str, str, float]]:
    """Battles between random pairs, a beating b with the Bradley-Terry probability of the true ratings; with
    probability `tie` a battle is a tie instead."""
    rng = np.random.default_rng(seed)
    names = list(true)
    out = []
    for _ in range(n):
        i, j = rng.choice(len(names), 2, replace=False)
        a, b = names[i], names[j]
        if rng.random() < tie:
            out.append((a, b, 0.5))
        else:
            out.append((a, b, float(rng.random() < 1 / (1 + 10 ** ((true[b] - true[a]) / 400)))))
    return out


def ratings(result: dict) -> dict[str, float]:
    return {r["model"]: r["rating"] for r in result["models"]}


def test_three_players_by_hand():
    """A beats B 2 of 3, B beats C 2 of 3, A beats C 4 of 5. These frequencies are exactly Bradley-Terry's with
    strengths ln 4, ln 2, 0 (2/3 = 2/(2+1), 4/5 = 4/(4+1)), so every pair's score equation
    W_ij = N_ij s(beta_i - beta_j) holds there and it is the maximum: A - B = B - C = 400 log10(2) = 120.41
    points; the mean at 1000 puts B at 1000."""
    battles = ([("A", "B", 1.0)] * 2 + [("A", "B", 0.0)] + [("B", "C", 1.0)] * 2 + [("C", "B", 1.0)]
               + [("A", "C", 1.0)] * 4 + [("C", "A", 1.0)])
    r = ratings(arena_ratings(battles, n_boot=50))
    gap = 400 * math.log10(2)
    assert r["A"] == pytest.approx(1000 + gap, abs=1e-6)
    assert r["B"] == pytest.approx(1000, abs=1e-6)
    assert r["C"] == pytest.approx(1000 - gap, abs=1e-6)
    # a tie is half a win each way: two ties between equals leave them equal
    r = ratings(arena_ratings([("x", "y", 0.5), ("y", "x", 0.5), ("x", "y", 1.0), ("y", "x", 1.0)], n_boot=20))
    assert r["x"] == pytest.approx(r["y"], abs=1e-9)
    # anchored: the named model at 1000, the gaps unchanged
    r = ratings(arena_ratings(battles, n_boot=20, anchor="C"))
    assert r["C"] == pytest.approx(1000, abs=1e-6) and r["A"] - r["C"] == pytest.approx(2 * gap, abs=1e-6)


def test_equals_an_independent_maximum_likelihood_fit():
    """scipy's BFGS on the per-battle likelihood in rating points (base 10, scale 400, the last model fixed,
    then the mean moved to 1000) gives the same ratings to 0.5 points."""
    true = {"m1": 1120, "m2": 1040, "m3": 1000, "m4": 960, "m5": 880}
    battles = synthetic(true, 1500, seed=3, tie=0.15)
    ours = ratings(arena_ratings(battles, n_boot=20))
    names = sorted(true)
    idx = {m: i for i, m in enumerate(names)}
    a = np.array([idx[x] for x, _, _ in battles])
    b = np.array([idx[x] for _, x, _ in battles])
    s = np.array([v for _, _, v in battles])

    def nll(free):
        r = np.append(free, 0.0)
        p = 1 / (1 + 10 ** ((r[b] - r[a]) / 400))
        return -(s * np.log(p) + (1 - s) * np.log(1 - p)).sum()

    fit = minimize(nll, np.zeros(len(names) - 1), method="BFGS", options={"gtol": 1e-8})
    r = np.append(fit.x, 0.0)
    r = r - r.mean() + 1000
    for m in names:
        assert ours[m] == pytest.approx(r[idx[m]], abs=0.5)


def test_invariant_to_the_order_of_battles():
    battles = synthetic({"a": 1100, "b": 1000, "c": 950}, 400, seed=1, tie=0.1)
    shuffled = [battles[i] for i in np.random.default_rng(0).permutation(len(battles))]
    one, two = arena_ratings(battles, n_boot=100), arena_ratings(shuffled, n_boot=100)
    for x, y in zip(one["models"], two["models"]):
        assert x["model"] == y["model"]
        for key in ("rating", "lo", "hi"):
            assert x[key] == pytest.approx(y[key], abs=1e-9)
    # online Elo is not: the same battles in another order give other ratings
    assert one["elo_order_spread"] > 1.0
    names = ["a", "b", "c"]
    assert np.abs(elo(names, battles) - elo(names, shuffled)).max() > 1.0


def test_intervals_cover_the_true_ratings():
    """On synthetic battles of known strengths (mean 1000), each true rating lies inside its 95% bootstrap
    interval in at least 90 of 100 draws."""
    true = {"a": 1150, "b": 1050, "c": 1000, "d": 950, "e": 850}
    inside = dict.fromkeys(true, 0)
    for draw in range(100):
        result = arena_ratings(synthetic(true, 300, seed=100 + draw), n_boot=200, seed=draw,
                               elo_shuffles=0)
        for r in result["models"]:
            inside[r["model"]] += r["lo"] <= true[r["model"]] <= r["hi"]
    assert min(inside.values()) >= 90, inside


def test_ranks_from_intervals():
    battles = synthetic({"top": 1300, "mid1": 1000, "mid2": 1000, "low": 700}, 2000, seed=2)
    rows = {r["model"]: r for r in arena_ratings(battles, n_boot=200)["models"]}
    assert rows["top"]["rank"] == 1
    assert rows["mid1"]["rank"] == rows["mid2"]["rank"] == 2  # indistinguishable: the same rank
    assert rows["low"]["rank"] == 4


def test_separable_battles_get_the_stated_ridge():
    """x never loses: the likelihood has no finite maximum; the ridge keeps the ratings finite and the result
    says so. Non-separable battles get no ridge at all."""
    battles = [("x", "y", 1.0)] * 5 + [("y", "z", 1.0), ("z", "y", 1.0)] * 3
    result = arena_ratings(battles, n_boot=50)
    assert result["separable"] and result["ridge"] > 0
    r = ratings(result)
    assert all(math.isfinite(v) for v in r.values()) and r["x"] > r["y"] + 500
    assert abs(r["y"] - r["z"]) < 0.1  # even (3-3); the ridge leaves y a hair lower for its losses to x
    assert not arena_ratings(synthetic({"a": 1000, "b": 1000}, 50, seed=0), n_boot=10)["separable"]
    with pytest.raises(ValueError, match="no battle between them"):
        arena_ratings([("a", "b", 1.0), ("b", "a", 1.0), ("c", "d", 1.0), ("d", "c", 0.0)], n_boot=10)
    assert SCALE == pytest.approx(400 / math.log(10))


def test_battle_file_and_its_bad_rows(tmp_path, capsys):
    rows = [{"model_a": "a", "model_b": "b", "winner": "model_a"},
            {"model_a": "b", "model_b": "a", "winner": "tie (bothbad)"},
            {"model_a": "a", "model_b": "b", "winner": "model_c"},
            {"model_a": "a", "model_b": "a", "winner": "tie"},
            {"model_b": "b", "winner": "model_b"},
            {"model_a": "b", "model_b": "a", "winner": "model_a"}]
    path = tmp_path / "battles.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    battles, skipped = read_battles(str(path))
    assert battles == [("a", "b", 1.0), ("b", "a", 0.5), ("b", "a", 1.0)]
    assert [s["where"] for s in skipped] == [f"{path}:3", f"{path}:4", f"{path}:5"]
    assert "model_c" in skipped[0]["reason"]
    assert run(["arena", "ratings", "--battles", str(path), "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert "skipped 3 battle rows" in out and f"{path}:3" in out and "Bradley-Terry" in out
    assert run(["arena", "ratings", "--battles", str(path), "--bootstrap", "20", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_battles"] == 3 and result["n_skipped"] == 3
    with pytest.raises(UserError, match="--anchor: 'aa' is in no battle.*did you mean 'a'"):
        run(["arena", "ratings", "--battles", str(path), "--anchor", "aa"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[2]) + "\n")
    with pytest.raises(UserError, match=r"no usable battle rows \(1 skipped; first: .*bad.jsonl:1"):
        run(["arena", "ratings", "--battles", str(bad)])
    with pytest.raises(UserError, match="--bootstrap"):
        run(["arena", "ratings", "--battles", str(path), "--bootstrap", "0"])
    with pytest.raises(SystemExit):  # `posttrain arena` without `ratings` is the arena run: --models is required
        run(["arena", "rank"])


def test_statistics_import_without_torch():
    code = ("import sys, posttrain.eval.arena, posttrain.eval.winrate, posttrain.eval.stats; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
