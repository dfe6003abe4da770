"""Win rates against a baseline, raw and length-controlled, with bootstrap intervals: numpy only (no torch).

Rows are AlpacaEval's annotations: `output_1` is the baseline's answer, `output_2` the model's, and
`preference` is 1 (the baseline preferred), 2 (the model preferred) or 1.5 (a tie). A row's win for the model
is y = preference - 1, so a tie counts half.

- **Win rate**: the mean of y (as a percentage in the printed table).
- **Length-controlled win rate** (AlpacaEval 2, Dubois et al. 2024, without its instruction-difficulty term,
  which is fitted to AlpacaEval's own 805 instructions, and unregularised): the logistic model
  P(model preferred) = s(theta + phi * tanh((len_baseline - len_model) / sd)) with s the logistic function,
  lengths in characters (AlpacaEval's `str.len()`) and sd the standard deviation of len_baseline - len_model
  over the rows (ddof 1, as pandas' `std`), fitted by maximum likelihood with y as a soft target; the
  length-controlled win rate is s(theta): the prediction at zero length difference. With sd = 0 (every length
  difference equal, e.g. a model against itself) the length term is 0 and the fit is the plain win rate. When
  the rows are separable (the model always or never wins, or wins exactly when it is the longer), the
  maximum lies at infinity; a ridge of `RIDGE` on (theta, phi) keeps it finite and the result says so
  (`separable: true`). Swapping the two sides gives 1 minus the value, exactly (the model is symmetric).
- **Intervals**: percentile bootstrap over rows (`n_boot` replicates; each replicate draws the rows with
  replacement and refits everything, sd included); the interval of the raw win rate is `stats.bootstrap_ci`'s.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from posttrain.eval.stats import bootstrap_ci, fit_logistic, format_skipped, no_rows

RIDGE = 1e-4
PREFERENCES = (1.0, 1.5, 2.0)


def length_feature(len_model: np.ndarray, len_baseline: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """tanh((len_baseline - len_model) / sd) per row, sd the (weighted, ddof 1) standard deviation of the
    differences; all zeros where sd is 0 or undefined. With `weights` (B, R) (bootstrap counts) one row of
    features per replicate: (B, R); else (R,)."""
    d = np.asarray(len_baseline, dtype=float) - np.asarray(len_model, dtype=float)
    w = np.ones((1, len(d))) if weights is None else np.atleast_2d(np.asarray(weights, dtype=float))
    n = w.sum(1, keepdims=True)
    mean = (w * d).sum(1, keepdims=True) / n
    var = (w * (d - mean) ** 2).sum(1, keepdims=True) / np.maximum(n - 1, 1)
    sd = np.sqrt(var)
    # a spread below 1e-9 characters is round-off of equal differences, not a spread
    feature = np.where(sd > 1e-9, np.tanh(d / np.where(sd > 1e-9, sd, 1.0)), 0.0)
    return feature if weights is not None else feature[0]


def _lc_fit(y: np.ndarray, feature: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(theta, phi) per replicate ((B, 2)) and which replicates needed the ridge ((B,))."""
    x = np.stack([np.ones_like(feature), feature], axis=-1)
    beta, ok = fit_logistic(x, y, weights)
    separable = ~ok
    if separable.any():
        xs = x[separable] if x.ndim == 3 else x
        beta[separable], _ = fit_logistic(xs, y, weights[separable], ridge=RIDGE)
    return beta, separable


def length_controlled(y: Sequence[float], len_model: Sequence[float], len_baseline: Sequence[float],
                      n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """{"value", "lo", "hi", "theta", "phi", "separable"}: the length-controlled win rate s(theta) of the
    module docstring, with its percentile bootstrap interval (rows resampled, the fit redone)."""
    y = np.asarray(y, dtype=float)
    if y.ndim != 1 or len(y) == 0:
        raise ValueError("length_controlled needs at least one row")
    ones = np.ones((1, len(y)))
    beta, separable = _lc_fit(y, length_feature(len_model, len_baseline), ones)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(y), np.full(len(y), 1 / len(y)), size=n_boot).astype(float)
    boot, boot_sep = _lc_fit(y, length_feature(len_model, len_baseline, counts), counts)
    values = 0.5 * (1 + np.tanh(0.5 * boot[:, 0]))  # s(theta), without overflow
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    theta, phi = beta[0]
    return {"value": float(0.5 * (1 + np.tanh(0.5 * theta))), "lo": float(lo), "hi": float(hi), "theta": float(theta),
            "phi": float(phi), "separable": bool(separable[0]), "separable_replicates": int(boot_sep.sum())}


def win_rates(y: Sequence[float], len_model: Sequence[float], len_baseline: Sequence[float], n_boot: int = 1000,
              seed: int = 0, level: float = 0.95) -> dict:
    """The raw and the length-controlled win rate of one model against its baseline, both with intervals, and
    the counts: {"n", "wins", "losses", "ties", "win_rate": {value, lo, hi}, "length_controlled": {...},
    "avg_length_model", "avg_length_baseline"}."""
    y = np.asarray(y, dtype=float)
    lo, hi = bootstrap_ci(y, n_boot=n_boot, seed=seed, level=level)
    return {
        "n": len(y), "wins": int((y == 1).sum()), "losses": int((y == 0).sum()), "ties": int((y == 0.5).sum()),
        "win_rate": {"value": float(y.mean()), "lo": lo, "hi": hi},
        "length_controlled": length_controlled(y, len_model, len_baseline, n_boot, seed, level),
        "avg_length_model": float(np.mean(len_model)), "avg_length_baseline": float(np.mean(len_baseline)),
    }


def read_annotations(path: str) -> tuple[dict[str, list[dict]], list[dict]]:
    """AlpacaEval annotation rows from a `.json` list or `.jsonl` file, grouped by `generator_2` (the model;
    "model" when absent): ({model: [{"y", "len_model", "len_baseline"}, ...]}, skipped). A row with
    `output_1` or `output_2` missing or not text, or a `preference` missing or outside {1, 1.5, 2} (a
    weighted annotator's soft preference or a failed annotation's null), is skipped and listed in `skipped`
    as {"where": "FILE:LINE", "reason"}: counted, never read as a zero."""
    from posttrain.data.loading import read_records

    groups: dict[str, list[dict]] = {}
    skipped = []
    for rec, where in read_records(path):
        reason = None
        for key in ("output_1", "output_2"):
            if not isinstance(rec.get(key), str):
                reason = reason or f"{key} missing or not text"
        pref = rec.get("preference")
        if reason is None and (isinstance(pref, bool) or not isinstance(pref, (int, float)) or pref not in PREFERENCES):
            reason = f"preference {pref!r} is not one of 1, 1.5, 2"
        if reason:
            skipped.append({"where": where, "reason": reason})
            continue
        model = str(rec.get("generator_2") or "model")
        groups.setdefault(model, []).append({"y": float(pref) - 1, "len_model": len(rec["output_2"]),
                                             "len_baseline": len(rec["output_1"])})
    return groups, skipped


def winrate_cli(argv: list[str]) -> int:
    """`posttrain eval winrate --annotations FILE [--bootstrap N] [--seed S] [--json]`."""
    import argparse
    import json

    from posttrain.config import check_flags
    from posttrain.errors import UserError

    p = argparse.ArgumentParser(prog="posttrain eval winrate", description=(
        "Win rate and length-controlled win rate (AlpacaEval 2's regression without the instruction-difficulty "
        "term, unregularised), with percentile bootstrap intervals, from AlpacaEval annotation rows: output_1 "
        "the baseline's answer, output_2 the model's, preference 1 (baseline), 2 (model) or 1.5 (tie); one "
        "result per generator_2."))
    p.add_argument("--annotations", required=True, help="a .json list or .jsonl file of annotation rows")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    check_flags(args, bootstrap={"ge": 1})
    groups, skipped = read_annotations(args.annotations)
    if not groups:
        raise UserError(no_rows(args.annotations, "annotation rows", skipped))
    results = {}
    for model, rows in sorted(groups.items()):
        results[model] = win_rates([r["y"] for r in rows], [r["len_model"] for r in rows],
                                   [r["len_baseline"] for r in rows], n_boot=args.bootstrap, seed=args.seed)
    if args.json:
        print(json.dumps({"models": results, "skipped": skipped, "n_skipped": len(skipped)}, indent=2))
        return 0
    print(f"{'model':<24} {'n':>5} {'win rate [95%]':>22} {'length-controlled [95%]':>26} {'avg len':>8}")
    for model, r in results.items():
        wr, lc = r["win_rate"], r["length_controlled"]
        note = "  (separable: ridge)" if lc["separable"] else ""
        print(f"{model:<24} {r['n']:>5} {100 * wr['value']:>8.1f} [{100 * wr['lo']:5.1f}, {100 * wr['hi']:5.1f}]"
              f" {100 * lc['value']:>12.1f} [{100 * lc['lo']:5.1f}, {100 * lc['hi']:5.1f}]"
              f" {r['avg_length_model']:>8.0f}{note}")
    if skipped:
        print(format_skipped(skipped, "annotation rows"))
    return 0
