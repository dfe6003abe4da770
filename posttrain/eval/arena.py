"""Arena ratings from pairwise battles: Bradley-Terry by maximum likelihood, bootstrap intervals, ranks, and
online Elo beside it. numpy only (no torch).

Battles are Chatbot Arena's rows: `model_a`, `model_b`, `winner` one of "model_a", "model_b", "tie",
"tie (bothbad)". A tie counts half a win each way.

- **Bradley-Terry**: P(a beats b) = 1 / (1 + 10^((R_b - R_a) / 400)). With strengths beta = R ln(10) / 400 this
  is logistic regression on beta_a - beta_b (`stats.fit_logistic`, on the battles grouped by pair: W_ab wins of
  a over b, ties as halves). No regularisation: the ratings maximise the likelihood. The likelihood fixes only
  differences; the ratings are shifted so that their mean is 1000, or so that `anchor` is at 1000.
- **Separable battles** (some group of models never loses to the rest: the directed graph "a has won or tied
  against b" is not strongly connected), the maximum lies at infinity. A ridge of `RIDGE` on the strengths
  (natural-log units) keeps the fit finite; the result says so (`separable: true`) and those ratings mean
  "far apart", not a measured gap. Models with no battle path between them have no common scale: an error.
- **Intervals**: percentile bootstrap over battles (`n_boot` replicates, each a multinomial draw of the
  battles, which is resampling the rows with replacement; a replicate that comes out separable gets the
  ridge). **Ranks** from the intervals, as Chatbot Arena shows them: 1 + the number of models whose lower
  bound lies above this model's upper bound.
- **Online Elo** (K = 4, every model starting at 1000): each battle in file order moves the two ratings by
  K (outcome - expected). Shown beside Bradley-Terry only to show why it is not used: the same battles in
  another order give other ratings (`elo_order_spread`: the largest change of a rating over a few shuffles).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from posttrain.eval.stats import fit_logistic, format_skipped, no_rows

RIDGE = 1e-4
SCALE = 400 / math.log(10)  # rating points per natural-log unit of strength
WINNERS = {"model_a": 1.0, "model_b": 0.0, "tie": 0.5, "tie (bothbad)": 0.5}


def battle_cells(models: Sequence[str], battles: Sequence[tuple[str, str, float]]) -> tuple[np.ndarray, np.ndarray]:
    """The distinct battles and how often each occurs: (E (C, M * M), multiplicity (C,)). Row c of E is the
    win matrix of one battle of kind c (a over b: score of a at [a, b], 1 - score at [b, a]), flattened."""
    index = {m: i for i, m in enumerate(models)}
    kinds: dict[tuple[int, int, float], int] = {}
    for a, b, s in battles:
        key = (index[a], index[b], float(s))
        kinds[key] = kinds.get(key, 0) + 1
    m = len(models)
    keys = sorted(kinds)  # sorted, so that a bootstrap draw does not depend on the order of the battles
    e = np.zeros((len(keys), m * m))
    for c, (a, b, s) in enumerate(keys):
        e[c, a * m + b] += s
        e[c, b * m + a] += 1 - s
    return e, np.array([kinds[k] for k in keys], dtype=float)


def win_matrix(models: Sequence[str], battles: Sequence[tuple[str, str, float]]) -> np.ndarray:
    """W (M, M): W[i, j] the wins of models[i] over models[j], a tie half to each; `battles` are (a, b, score
    of a) with score 1, 0.5 or 0."""
    e, mult = battle_cells(models, battles)
    return (mult @ e).reshape(len(models), len(models))


def _all_reach(edges: np.ndarray) -> np.ndarray:
    """For boolean adjacency matrices (B, M, M): whether every node reaches every other (repeated squaring of
    the reachability matrix, log2 M products)."""
    m = edges.shape[-1]
    reach = (edges | np.eye(m, dtype=bool)).astype(float)
    for _ in range(max(1, math.ceil(math.log2(m)))):
        reach = ((reach @ reach) > 0).astype(float)
    return reach.astype(bool).all(axis=(-2, -1))


def separable(w: np.ndarray) -> np.ndarray:
    """Whether the maximum-likelihood strengths lie at infinity, per win matrix ((M, M) or (B, M, M)): the graph
    with an edge i -> j where model i has won (or tied) against j is not strongly connected."""
    return ~_all_reach(w > 0)


def connected(w: np.ndarray) -> np.ndarray:
    """Whether the models share a scale: every two are joined by a path of battles (either outcome)."""
    return _all_reach((w + np.swapaxes(w, -1, -2)) > 0)


def fit_strengths(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Strengths (B, M) in natural-log units with mean 0, and which replicates needed the ridge (B,), for win
    matrices `w` (B, M, M) (module docstring). Logistic regression on one row per ordered pair (i, j), i < j:
    feature e_i - e_j, target W_ij / N_ij, weight N_ij; unregularised with the last model's strength fixed at
    0, or, where separable, with the ridge on all M strengths."""
    w = w if w.ndim == 3 else w[None]
    b_count, m, _ = w.shape
    i, j = np.triu_indices(m, 1)
    games = w[:, i, j] + w[:, j, i]  # (B, P)
    x = np.zeros((len(i), m))
    x[np.arange(len(i)), i] = 1
    x[np.arange(len(i)), j] = -1
    y = np.divide(w[:, i, j], games, out=np.full_like(games, 0.5), where=games > 0)
    ridge_needed = separable(w)
    full = np.zeros((b_count, m))
    sel = ~ridge_needed
    if sel.any():  # unregularised: the last model's strength fixed at 0 (the mean is restored below)
        full[sel, :-1], _ = fit_logistic(x[:, :-1], y[sel], games[sel])
    if ridge_needed.any():  # a ridge on every strength: finite, symmetric in the models, mean 0 by itself
        full[ridge_needed], _ = fit_logistic(x, y[ridge_needed], games[ridge_needed], ridge=RIDGE)
    return full - full.mean(1, keepdims=True), ridge_needed


def ratings_from_strengths(strengths: np.ndarray, models: Sequence[str], anchor: str | None = None) -> np.ndarray:
    """Rating points: 1000 + SCALE * strength, shifted so the mean (or `anchor`) is at 1000."""
    ratings = 1000 + SCALE * strengths
    if anchor is not None:
        ratings = ratings - (ratings[..., list(models).index(anchor)][..., None] - 1000)
    return ratings


def elo(models: Sequence[str], battles: Sequence[tuple[str, str, float]], k: float = 4.0) -> np.ndarray:
    """Online Elo in battle order, every model starting at 1000 (module docstring)."""
    index = {m: i for i, m in enumerate(models)}
    r = np.full(len(models), 1000.0)
    for a, b, s in battles:
        ia, ib = index[a], index[b]
        expected = 1 / (1 + 10 ** ((r[ib] - r[ia]) / 400))
        r[ia] += k * (s - expected)
        r[ib] -= k * (s - expected)
    return r


def arena_ratings(battles: Sequence[tuple[str, str, float]], n_boot: int = 1000, seed: int = 0,
                  level: float = 0.95, anchor: str | None = None, elo_shuffles: int = 5) -> dict:
    """Bradley-Terry ratings of the models in `battles` ((a, b, score of a)), with bootstrap intervals, ranks and
    online Elo: {"models": [{model, rating, lo, hi, rank, battles, wins, elo}, ...] best first, "separable",
    "separable_replicates", "n_battles", "anchor", "elo_order_spread"}."""
    if not battles:
        raise ValueError("arena_ratings needs at least one battle")
    models = sorted({a for a, _, _ in battles} | {b for _, b, _ in battles})
    if anchor is not None and anchor not in models:
        raise ValueError(f"anchor '{anchor}' is not in the battles")
    if len(models) < 2:
        raise ValueError("arena_ratings needs battles between at least two models")
    w = win_matrix(models, battles)
    if not connected(w):
        raise ValueError("the battles fall into groups with no battle between them: their ratings share no scale")
    strengths, sep = fit_strengths(w)
    ratings = ratings_from_strengths(strengths[0], models, anchor)
    rng = np.random.default_rng(seed)
    e, mult = battle_cells(models, battles)  # resampling battles = a multinomial draw over their kinds
    counts = rng.multinomial(len(battles), mult / mult.sum(), size=n_boot).astype(float)
    boot_w = (counts @ e).reshape(n_boot, len(models), len(models))
    # A replicate can leave out every battle of a pair that joins two groups; such a replicate has no common
    # scale and is dropped (counted).
    usable = connected(boot_w)
    boot, boot_sep = fit_strengths(boot_w[usable])
    boot_ratings = ratings_from_strengths(boot, models, anchor)
    lo, hi = np.quantile(boot_ratings, [(1 - level) / 2, (1 + level) / 2], axis=0)
    ranks = [1 + int((lo > hi[i]).sum()) for i in range(len(models))]
    order_rng = np.random.default_rng(seed + 1)
    base_elo = elo(models, battles)
    spread = 0.0
    for _ in range(elo_shuffles):
        shuffled = [battles[i] for i in order_rng.permutation(len(battles))]
        spread = max(spread, float(np.abs(elo(models, shuffled) - base_elo).max()))
    rows = []
    for i, m in enumerate(models):
        games = float(w[i].sum() + w[:, i].sum())
        rows.append({"model": m, "rating": float(ratings[i]), "lo": float(lo[i]), "hi": float(hi[i]),
                     "rank": ranks[i], "battles": int(round(games)), "wins": float(w[i].sum()),
                     "elo": float(base_elo[i])})
    rows.sort(key=lambda r: -r["rating"])
    return {"models": rows, "separable": bool(sep[0]), "separable_replicates": int(boot_sep.sum()),
            "dropped_replicates": int((~usable).sum()), "n_battles": len(battles), "anchor": anchor,
            "ridge": RIDGE if sep[0] else 0.0, "elo_order_spread": spread, "level": level, "n_boot": n_boot}


def read_battles(path: str) -> tuple[list[tuple[str, str, float]], list[dict]]:
    """Chatbot Arena battle rows from a `.json` list or `.jsonl` file: (battles as (a, b, score of a), skipped).
    A row with `model_a` or `model_b` missing, the two equal, or a `winner` other than model_a, model_b, tie,
    tie (bothbad) is skipped and listed as {"where": "FILE:LINE", "reason"}."""
    from posttrain.data.loading import read_records

    battles, skipped = [], []
    for rec, where in read_records(path):
        a, b, winner = rec.get("model_a"), rec.get("model_b"), rec.get("winner")
        if not isinstance(a, str) or not a or not isinstance(b, str) or not b:
            reason = "model_a or model_b missing"
        elif a == b:
            reason = f"model_a and model_b are both '{a}'"
        elif winner not in WINNERS:
            reason = f"winner {winner!r} is not one of {', '.join(WINNERS)}"
        else:
            battles.append((a, b, WINNERS[winner]))
            continue
        skipped.append({"where": where, "reason": reason})
    return battles, skipped


def format_ratings(result: dict) -> str:
    level = round(100 * result["level"])
    lines = [f"{'rank':>4}  {'model':<24} {'rating':>7} {f'{level}% interval':>18} {'battles':>8} "
             f"{'win share':>9} {'elo':>7}"]
    for r in result["models"]:
        share = r["wins"] / r["battles"] if r["battles"] else float("nan")
        lines.append(f"{r['rank']:>4}  {r['model']:<24} {r['rating']:>7.1f} [{r['lo']:7.1f}, {r['hi']:7.1f}] "
                     f"{r['battles']:>8} {share:>9.3f} {r['elo']:>7.1f}")
    anchor = f"{result['anchor']} at 1000" if result["anchor"] else "mean 1000"
    lines.append(f"Bradley-Terry by maximum likelihood over {result['n_battles']} battles ({anchor}; ties half a "
                 f"win each way), intervals from {result['n_boot']} bootstrap replicates; rank = 1 + models "
                 f"whose interval lies wholly above.")
    if result["separable"]:
        lines.append(f"separable: some models never lose to the rest, so the likelihood has no finite maximum; a "
                     f"ridge of {RIDGE} keeps the ratings finite (read their gaps as 'far apart').")
    lines.append(f"online Elo (K=4, file order) beside it: the same battles shuffled move a rating by up to "
                 f"{result['elo_order_spread']:.1f} points, which is why the table ranks by Bradley-Terry.")
    return "\n".join(lines)


def ratings_cli(argv: list[str]) -> int:
    """`posttrain arena ratings --battles FILE [--bootstrap N] [--anchor MODEL] [--seed S] [--json]`."""
    import argparse
    import json

    from posttrain.config import check_flags
    from posttrain.errors import UserError, did_you_mean

    p = argparse.ArgumentParser(prog="posttrain arena ratings", description=(
        "Bradley-Terry arena ratings by maximum likelihood with bootstrap intervals and ranks, from Chatbot "
        "Arena battle rows (model_a, model_b, winner: model_a, model_b, tie or tie (bothbad))."))
    p.add_argument("--battles", required=True, help="a .json list or .jsonl file of battle rows")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates (default 1000)")
    p.add_argument("--anchor", help="the model placed at 1000 (default: the mean of all ratings is 1000)")
    p.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    check_flags(args, bootstrap={"ge": 1})
    battles, skipped = read_battles(args.battles)
    if not battles:
        raise UserError(no_rows(args.battles, "battle rows", skipped))
    models = sorted({a for a, _, _ in battles} | {b for _, b, _ in battles})
    if args.anchor is not None and args.anchor not in models:
        raise UserError(f"--anchor: '{args.anchor}' is in no battle of {args.battles}"
                        f"{did_you_mean(args.anchor, models)}")
    try:
        result = arena_ratings(battles, n_boot=args.bootstrap, seed=args.seed, anchor=args.anchor)
    except ValueError as e:
        raise UserError(f"{args.battles}: {e}") from None
    result.update(skipped=skipped, n_skipped=len(skipped))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(format_ratings(result))
    if skipped:
        print(format_skipped(skipped, "battle rows"))
    return 0
