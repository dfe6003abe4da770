"""Bootstrap intervals (`posttrain.eval.stats`): identities (a constant gives [c, c], identical vectors a
zero difference), hand-derived extremes, reproducibility, the normal approximation on a large Bernoulli
sample, and stratification that keeps stratum sizes."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from posttrain.eval.stats import bootstrap_ci, bootstrap_means, paired_bootstrap


def test_constant_gives_zero_width_at_the_constant():
    assert bootstrap_ci([0.7] * 10) == (0.7, 0.7)
    assert bootstrap_ci([1.0]) == (1.0, 1.0)
    assert bootstrap_ci([0.3] * 5 + [0.3] * 4, strata=["a"] * 5 + ["b"] * 4) == (0.3, 0.3)


def test_unit_interval_values_give_an_interval_around_the_mean_inside_zero_one():
    values = [0.0, 1.0, 1.0, 0.0, 1.0, 0.5, 1.0, 0.0]  # mean 4.5 / 8 = 0.5625
    lo, hi = bootstrap_ci(values)
    assert 0.0 <= lo < 0.5625 < hi <= 1.0
    # 2 values: the replicate mean is 0 (both draws 0) with probability 1/4, 1 with 1/4, 0.5 with 1/2, so the
    # 2.5% and 97.5% quantiles are the extremes 0 and 1
    assert bootstrap_ci([0.0, 1.0], n_boot=4000) == (0.0, 1.0)


def test_same_seed_same_interval_and_another_seed_differs():
    rng = np.random.default_rng(3)
    values = rng.random(50)
    assert bootstrap_ci(values, seed=5) == bootstrap_ci(values, seed=5)
    assert bootstrap_ci(values, seed=5) != bootstrap_ci(values, seed=6)
    assert paired_bootstrap(values, values[::-1], seed=5) == paired_bootstrap(values, values[::-1], seed=5)


def test_width_matches_the_normal_approximation_on_a_large_bernoulli_sample():
    """n = 2000, p about 0.3: the 95% interval is about 2 * 1.96 * sqrt(p (1 - p) / n) = 0.040 wide."""
    x = (np.random.default_rng(1).random(2000) < 0.3).astype(float)
    p = x.mean()
    lo, hi = bootstrap_ci(x)
    expected = 2 * 1.96 * math.sqrt(p * (1 - p) / len(x))
    assert abs((hi - lo) - expected) < 0.1 * expected
    assert lo < p < hi and abs((lo + hi) / 2 - p) < 0.1 * expected


def test_level_widens_the_interval():
    x = np.random.default_rng(2).random(200)
    lo90, hi90 = bootstrap_ci(x, level=0.90)
    lo99, hi99 = bootstrap_ci(x, level=0.99)
    assert lo99 < lo90 < hi90 < hi99


def test_stratified_resampling_keeps_stratum_sizes():
    """Constant within each stratum (0 in a, 1 in b): a resample that keeps the sizes 3 and 3 always has mean
    exactly 0.5, so the stratified interval is [0.5, 0.5]; unstratified resamples mix the strata freely."""
    values, strata = [0, 0, 0, 1, 1, 1], ["a", "a", "a", "b", "b", "b"]
    assert bootstrap_ci(values, strata=strata) == (0.5, 0.5)
    lo, hi = bootstrap_ci(values)
    assert lo < 0.5 < hi
    # unequal sizes: 1 of 4 values is 1, so every stratified replicate has mean 1/4 exactly
    assert bootstrap_ci([1, 0, 0, 0], strata=[2, 1, 1, 1]) == (0.25, 0.25)
    means = bootstrap_means([0, 0, 0, 1, 1, 1], strata=strata, n_boot=50)
    assert means.shape == (50,) and set(means) == {0.5}


def test_paired_identical_vectors_differ_by_exactly_zero():
    x = np.random.default_rng(4).random(30)
    assert paired_bootstrap(x, x) == {"diff": 0.0, "lo": 0.0, "hi": 0.0}


def test_paired_shift_by_a_constant():
    """b = a + 0.25 with values in eighths: every difference is 0.25 exactly, so diff 0.25 and [0.25, 0.25]."""
    a = np.array([0, 1, 2, 3, 4, 5, 6, 7]) / 8
    r = paired_bootstrap(a, a + 0.25, strata=list("aabbbbcc"))
    assert r == {"diff": 0.25, "lo": 0.25, "hi": 0.25}
    # pairing cancels what the items share: an unpaired interval of these means would be wide
    assert bootstrap_ci(a)[1] - bootstrap_ci(a)[0] > 0.2


def test_paired_difference_of_one_changed_item():
    """a = 0 everywhere, b = 1 on one item of 4: diff 1/4; replicates take 0, 1, 2, 3 or 4 copies of that item,
    so the interval lies in [0, 1] and contains 1/4."""
    r = paired_bootstrap([0, 0, 0, 0], [1, 0, 0, 0])
    assert r["diff"] == 0.25 and 0.0 <= r["lo"] < 0.25 < r["hi"] <= 1.0


def test_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="2 labels for 3 values"):
        bootstrap_ci([1, 2, 3], strata=["a", "b"])
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1, 2], level=95)


def test_imports_without_torch():
    code = "import sys, posttrain.eval.stats; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
