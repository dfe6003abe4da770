"""Bootstrap intervals for evaluation means: numpy only (no torch), importable alone.

Percentile bootstrap of a mean. For values x_1..x_N, each of `n_boot` replicates draws N indices
uniformly with replacement and takes the mean of those values; the interval is the (1 - level) / 2 and
(1 + level) / 2 quantiles of the replicate means (numpy's linear interpolation), clipped to
[min x, max x] (where every replicate mean lies anyway; the clip removes float round-off, so a constant
vector gives exactly [c, c]).

Stratified: with `strata` (one label per value), each replicate resamples every stratum s on its own,
n_s draws from its n_s values, so every replicate keeps the stratum sizes. The replicate statistic is the
mean of all N resampled values, sum_s (n_s / N) * mean_s*: strata weighted by their sizes, as in the
overall mean. Only variation within strata enters the interval; the mix of strata is held fixed (as it is
by a balanced sample of task families).

Paired: for two measurements a_i, b_i of the same N items, the bootstrap runs on d_i = b_i - a_i with the
same resampled items for both, so what the items share (some prompts are hard for every model) cancels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _groups(n: int, strata: Sequence | None) -> list[np.ndarray]:
    if strata is None:
        return [np.arange(n)]
    labels = np.asarray(list(strata))
    if len(labels) != n:
        raise ValueError(f"strata: {len(labels)} labels for {n} values")
    _, inverse = np.unique(labels, return_inverse=True)
    return [np.flatnonzero(inverse == k) for k in range(int(inverse.max()) + 1)]


def bootstrap_means(values: Sequence[float], strata: Sequence | None = None, n_boot: int = 2000,
                    seed: int = 0) -> np.ndarray:
    """(n_boot,) replicate means of `values` (module docstring), stratified when `strata` is given."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"bootstrap needs a non-empty 1-d list of values, got shape {x.shape}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    totals = np.zeros(n_boot)
    for idx in _groups(len(x), strata):
        draws = rng.integers(0, len(idx), size=(n_boot, len(idx)))
        totals += x[idx][draws].sum(axis=1)
    return totals / len(x)


def bootstrap_ci(values: Sequence[float], strata: Sequence | None = None, n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """(lo, hi): the percentile bootstrap interval of the mean of `values` at `level` (module docstring);
    with `strata`, each replicate resamples within each stratum, keeping the stratum sizes."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    means = bootstrap_means(values, strata, n_boot, seed)
    x = np.asarray(values, dtype=float)
    lo, hi = np.clip(np.quantile(means, [(1 - level) / 2, (1 + level) / 2]), x.min(), x.max())
    return float(lo), float(hi)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], strata: Sequence | None = None, n_boot: int = 2000,
                     seed: int = 0, level: float = 0.95) -> dict:
    """{"diff": mean(b) - mean(a), "lo", "hi"}: the difference of two measurements of the same items
    (a[i] and b[i] belong to item i) with the percentile bootstrap interval of mean(b - a), resampling
    items (within `strata` when given) so both measurements of an item move together."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired_bootstrap needs two lists of the same length, got {len(x)} and {len(y)}")
    lo, hi = bootstrap_ci(y - x, strata, n_boot, seed, level)
    return {"diff": float(y.mean() - x.mean()), "lo": lo, "hi": hi}


def fit_logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray, ridge: float = 0.0, max_iter: int = 200,
                 tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-likelihood logistic regression, batched over replicates: (beta (B, D), converged (B,)).

    Rows r = 1..R with features `x` ((R, D), or (B, R, D) when each replicate has its own), targets `y` in
    [0, 1] ((R,) or (B, R): a soft target y counts as y of a success and 1 - y of a failure) and weights `w`
    ((B, R): how many times row r is in replicate b; a bootstrap replicate is its multinomial counts). Each
    replicate maximises sum_r w_r [y_r log s(x_r.beta) + (1 - y_r) log(1 - s(x_r.beta))] - ridge/2 |beta|^2
    (s the logistic function) by Newton's method from beta = 0, halving a step until the objective does not
    fall. `converged` is False where the step still moved beta by more than `tol` after `max_iter` steps or
    beta left |beta| <= 40 (probabilities past 1e-17): separable data, whose maximum lies at infinity."""
    w = np.atleast_2d(np.asarray(w, dtype=float))
    b_count, rows = w.shape
    x = np.broadcast_to(np.asarray(x, dtype=float), (b_count, rows, np.shape(x)[-1]))
    y = np.broadcast_to(np.asarray(y, dtype=float), (b_count, rows))
    dim = x.shape[-1]

    def objective(beta):
        z = np.einsum("brd,bd->br", x, beta)
        # log s(z) = -log(1 + e^-z), log(1 - s(z)) = -log(1 + e^z), both computed without overflow
        ll = -(y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z))
        return (w * ll).sum(1) - 0.5 * ridge * (beta**2).sum(1), z

    beta = np.zeros((b_count, dim))
    value, z = objective(beta)
    done = np.zeros(b_count, dtype=bool)
    for _ in range(max_iter):
        p = 0.5 * (1 + np.tanh(0.5 * z))  # the logistic function, without overflow
        grad = np.einsum("brd,br->bd", x, w * (y - p)) - ridge * beta
        hess = np.einsum("brd,br,bre->bde", x, w * p * (1 - p), x) + ridge * np.eye(dim)
        step = np.linalg.solve(hess + 1e-12 * np.eye(dim), grad[..., None])[..., 0]
        step[done] = 0
        scale = np.ones(b_count)
        for _ in range(40):
            new_value, new_z = objective(beta + scale[:, None] * step)
            worse = new_value < value - 1e-12 * np.abs(value)
            if not worse.any():
                break
            scale[worse] /= 2
        beta = beta + scale[:, None] * step
        value, z = objective(beta)
        done |= np.abs(scale[:, None] * step).max(1) < tol
        if done.all() or (np.abs(beta).max(1) > 40).all():
            break
    converged = done & (np.abs(beta).max(1) <= 40)
    return beta, converged


def format_skipped(skipped: list[dict], what: str, show: int = 5) -> str:
    """One line per shown skipped row, after a count: what a user reads under a table."""
    if not skipped:
        return ""
    lines = [f"skipped {len(skipped)} {what}:"] + [f"  {s['where']}: {s['reason']}" for s in skipped[:show]]
    if len(skipped) > show:
        lines.append(f"  ... and {len(skipped) - show} more")
    return "\n".join(lines)


def no_rows(path: str, what: str, skipped: list[dict]) -> str:
    """The one-line message for a file none of whose rows could be used, naming the first bad one."""
    first = f"; first: {skipped[0]['where']}: {skipped[0]['reason']}" if skipped else ""
    return f"{path}: no usable {what} ({len(skipped)} skipped{first})"
