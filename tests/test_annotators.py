"""Simulated annotators (`posttrain.world.annotators`): the gold annotator is the gold ordering, the noisy
ones hit their hand-derived rates, biases move labels by exactly their stated amounts, the panel votes,
records load as preference/unpaired data.

Rates are measured over 20,000 draws from a fixed seed and compared with the hand-derived probability p
within 4 standard errors, 4 * sqrt(p (1 - p) / n) (about 0.012-0.014 for the p here); the flip rate
within 1% as the issue asks (3.3 standard errors at f = 0.25). Hand-derived values use math.exp, not the
module's sigmoid.
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import pytest

from posttrain.data.formats import detect_format, to_example
from posttrain.data.types import Preference, Unpaired
from posttrain.errors import UserError
from posttrain.world import FAMILIES, sample_tasks, score
from posttrain.world.annotators import (
    ANNOTATORS,
    FIRST_BIAS,
    FLIP,
    GOOD_THRESHOLD,
    LENGTH_SCALE,
    LENGTH_WEIGHT,
    PANEL_SIZE,
    TEMPERATURE,
    Annotator,
    Comparison,
    Panel,
    agreement,
    comparisons,
    get_annotator,
    majority,
    pairs,
    panel_report,
    sigmoid,
    unpaired,
)

N = 20_000
DOCS = Path(__file__).resolve().parents[1] / "docs" / "annotators.md"


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def tol(p: float, n: int = N) -> float:
    """4 standard errors of a rate p measured over n draws."""
    return 4 * math.sqrt(p * (1 - p) / n)


def rate_a(judge, gold_a, gold_b, seed=0, len_a=0, len_b=0, n=N) -> float:
    rng = random.Random(seed)
    return sum(judge.judge(gold_a, gold_b, rng, len_a, len_b) == "a" for _ in range(n)) / n


def gold_label(ga: float, gb: float) -> str:
    return "a" if ga > gb else "b" if ga < gb else "tie"


def random_gaps(n: int, seed: int) -> list[tuple[float, float]]:
    """n gold pairs on a 0.001 grid with distinct values (gaps >= 0.001)."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        ga, gb = round(rng.random(), 3), round(rng.random(), 3)
        if ga != gb:
            out.append((ga, gb))
    return out


# --- the model ------------------------------------------------------------------------------------

def test_defaults_are_the_documented_numbers():
    assert (TEMPERATURE, FLIP, LENGTH_SCALE, LENGTH_WEIGHT, FIRST_BIAS, PANEL_SIZE, GOOD_THRESHOLD) == (
        0.1, 0.25, 100.0, 1.0, 0.2, 5, 0.7)
    fair = ANNOTATORS["fair"]
    assert (fair.temperature, fair.flip, fair.length_weight, fair.first_bias) == (0.1, 0.25, 0.0, 0.0)
    assert ANNOTATORS["length"].length_weight == 1.0 and ANNOTATORS["position"].first_bias == 0.2
    panel = ANNOTATORS["panel"]
    assert isinstance(panel, Panel) and [m.name for m in panel.members] == [f"panel/{i}" for i in range(1, 6)]
    assert all((m.temperature, m.flip, m.length_weight, m.first_bias) == (0.1, 0.25, 0.0, 0.0) for m in panel.members)


def test_gold_annotator_is_the_gold_ordering_with_ties():
    gold = get_annotator("gold")
    values = [0.0, 0.25, 0.5, 0.7, 1.0]
    rng = random.Random(0)
    for ga in values:
        for gb in values:
            for la, lb in ((0, 0), (300, 10), (10, 300)):  # lengths never matter to gold
                assert gold.judge(ga, gb, rng, la, lb) == gold_label(ga, gb), (ga, gb, la, lb)
                expected = {"a": (1.0, 0.0, 0.0), "b": (0.0, 1.0, 0.0), "tie": (0.0, 0.0, 1.0)}[gold_label(ga, gb)]
                assert gold.probs(ga, gb, la, lb) == expected


def test_zero_temperature_and_no_flips_is_the_gold_ordering():
    """T -> 0 (1e-9: a gap >= 0.001 is a logit >= 1e6, sigmoid exactly 1.0 or 0.0) and T = 0 itself."""
    golds = random_gaps(2_000, seed=1)
    for t in (1e-9, 0.0):
        cold = Annotator("cold", temperature=t, flip=0.0)
        rng = random.Random(2)
        assert [cold.judge(ga, gb, rng) for ga, gb in golds] == [gold_label(ga, gb) for ga, gb in golds]


@pytest.mark.parametrize("f", [0.25, 0.1])
def test_flip_rate_against_a_noiseless_annotator(f):
    """Temperature 0, flip f: the draw is the gold ordering, so disagreement with gold is exactly the
    flip probability f; measured over 20,000 pairs within 1%."""
    noisy, gold = Annotator("noisy", temperature=0.0, flip=f), get_annotator("gold")
    golds = random_gaps(N, seed=3)
    rng_n, rng_g = random.Random(4), random.Random(5)
    disagree = sum(noisy.judge(ga, gb, rng_n) != gold.judge(ga, gb, rng_g) for ga, gb in golds) / N
    assert disagree == pytest.approx(f, abs=0.01)


@pytest.mark.parametrize("d, expected", [(0.05, 0.6224593312), (0.1, 0.7310585786), (0.2, 0.8807970780)])
def test_bradley_terry_rate_is_sigmoid_of_gap_over_temperature(d, expected):
    """flip 0, T = 0.1: P(a) = sigmoid(d / T): sigmoid(0.5), sigmoid(1), sigmoid(2)."""
    bt = Annotator("bt", temperature=0.1, flip=0.0)
    assert sig(d / 0.1) == pytest.approx(expected, abs=1e-10)
    assert bt.probs(0.5 + d, 0.5)[0] == pytest.approx(expected, abs=1e-9)
    assert rate_a(bt, 0.5 + d, 0.5, seed=6) == pytest.approx(expected, abs=tol(expected))
    # symmetric: the worse response shown first is preferred with 1 - sigmoid(d / T)
    assert rate_a(bt, 0.5, 0.5 + d, seed=7) == pytest.approx(1 - expected, abs=tol(expected))


def test_flip_applies_on_top_of_the_draw():
    """fair (T = 0.1, f = 0.25), gap 0.1: P(agree with gold) = (1 - f) s + f (1 - s), s = sigmoid(1)
    = 0.731059, so 0.75 * 0.731059 + 0.25 * 0.268941 = 0.615529 (not 0.75 * 0.731059 = 0.548294, which
    flips-instead-of-draw would give, nor 0.731059 without flips)."""
    s = sig(1.0)
    expected = 0.75 * s + 0.25 * (1 - s)
    assert expected == pytest.approx(0.6155292893, abs=1e-9)
    fair = get_annotator("fair")
    assert fair.probs(0.6, 0.5) == pytest.approx((expected, 1 - expected, 0.0), abs=1e-12)
    assert rate_a(fair, 0.6, 0.5, seed=8) == pytest.approx(expected, abs=tol(expected))
    # over mixed pairs, disagreement with gold is the average of the per-pair hand-derived 1 - q
    golds = random_gaps(N, seed=9)
    rng = random.Random(10)
    agree = sum(fair.judge(ga, gb, rng) == gold_label(ga, gb) for ga, gb in golds) / N
    q = sum(0.75 * sig(abs(ga - gb) / 0.1) + 0.25 * (1 - sig(abs(ga - gb) / 0.1)) for ga, gb in golds) / N
    assert agree == pytest.approx(q, abs=tol(q))


def test_sigmoid_is_stable_at_extremes():
    assert sigmoid(1e6) == 1.0 and sigmoid(-1e6) == 0.0 and sigmoid(0.0) == 0.5
    assert sigmoid(-3.0) == pytest.approx(sig(-3.0), rel=1e-15)


# --- biases ---------------------------------------------------------------------------------------

def test_length_bias_prefers_the_longer_at_the_hand_derived_rate():
    """Equal gold, a 300 and b 100 characters: logit 1.0 * 200 / 100 = 2, so P(longer) = 0.75 * sigmoid(2)
    + 0.25 * sigmoid(-2) = 0.75 * 0.880797 + 0.25 * 0.119203 = 0.690399 whichever is shown first; the fair
    annotator on the same pairs is a coin (0.5)."""
    expected = 0.75 * sig(2) + 0.25 * sig(-2)
    assert expected == pytest.approx(0.6903985390, abs=1e-9)
    length, fair = get_annotator("length"), get_annotator("fair")
    assert rate_a(length, 0.5, 0.5, seed=11, len_a=300, len_b=100) == pytest.approx(expected, abs=tol(expected))
    assert 1 - rate_a(length, 0.5, 0.5, seed=12, len_a=100, len_b=300) == pytest.approx(expected, abs=tol(expected))
    assert rate_a(fair, 0.5, 0.5, seed=13, len_a=300, len_b=100) == pytest.approx(0.5, abs=tol(0.5))


def test_biased_annotators_share_the_fair_annotators_random_numbers():
    """Same seed, same pairs: `length` on equal lengths is `fair` label for label; `position` differs from
    `fair` only by answering "a", on a fraction p * P_fair(b) = 0.2 * 0.5 of equal-gold pairs."""
    fair, length, position = (get_annotator(n) for n in ("fair", "length", "position"))
    golds = random_gaps(2_000, seed=14) + [(0.5, 0.5)] * N
    labels = {}
    for judge in (fair, length, position):
        rng = random.Random(15)
        labels[judge.name] = [judge.judge(ga, gb, rng) for ga, gb in golds]
    assert labels["length"] == labels["fair"]
    changed = [(f, p) for f, p in zip(labels["fair"], labels["position"]) if f != p]
    assert all(p == "a" and f == "b" for f, p in changed)
    ties_changed = sum(f != p for f, p in zip(labels["fair"][2_000:], labels["position"][2_000:])) / N
    assert ties_changed == pytest.approx(0.1, abs=tol(0.1))


@pytest.mark.parametrize("d, p_fair_first", [(0.0, 0.5), (0.1, 0.6155292893), (-0.1, 0.3844707107)])
def test_position_bias_rate(d, p_fair_first):
    """P(first) = p + (1 - p) * P_fair(first) with p = 0.2: 0.6, 0.692423, 0.507577."""
    expected = 0.2 + 0.8 * p_fair_first
    position = get_annotator("position")
    assert position.probs(0.5 + d, 0.5)[0] == pytest.approx(expected, abs=1e-9)
    assert rate_a(position, 0.5 + d, 0.5, seed=16) == pytest.approx(expected, abs=tol(expected))


def test_position_bias_overrides_a_tie_only_by_answering_a():
    """A deterministic (T = 0) annotator with p = 0.3 on equal gold: "a" 30%, "tie" 70%, never "b"."""
    t0 = Annotator("t0", temperature=0.0, flip=0.5, first_bias=0.3)
    assert t0.probs(0.4, 0.4) == (0.3, 0.0, 0.7)
    rng = random.Random(17)
    labels = [t0.judge(0.4, 0.4, rng) for _ in range(N)]
    assert "b" not in labels and labels.count("a") / N == pytest.approx(0.3, abs=tol(0.3))


# --- panel and agreement --------------------------------------------------------------------------

def test_majority():
    assert majority(["a", "a", "b"]) == "a"
    assert majority(["a", "b", "b", "b", "a"]) == "b"
    assert majority(["a", "b"]) == "tie" and majority(["tie", "tie", "a"]) == "a" and majority(["tie"]) == "tie"


def test_panel_is_the_majority_of_its_members_votes():
    panel = get_annotator("panel")
    assert len(panel.members) % 2 == 1
    for seed in range(200):
        rng = random.Random(seed)
        votes = [m.judge(0.6, 0.5, rng) for m in panel.members]
        assert panel.votes(0.6, 0.5, seed) == votes
        assert panel.judge(0.6, 0.5, seed) == majority(votes) != "tie"


def test_agreement_rule():
    assert agreement(["a", "b", "tie", "a"], ["a", "a", "a", "tie"]) == (1 + 0 + 0.5 + 0.5) / 4
    assert agreement(["tie", "b"], ["tie", "b"]) == 1.0
    with pytest.raises(ValueError):
        agreement(["a"], ["a", "b"])
    with pytest.raises(ValueError):
        agreement(["a"], ["x"])


def test_panel_report_matches_the_hand_derived_agreements():
    """Gold gap |d| = 1 (half with a better, half with b better), T = 0.1: s = sigmoid(10) = 0.9999546,
    a fair annotator agrees with gold with q = 0.75 s + 0.25 (1 - s) = 0.749977; two independent fair
    members agree with each other with q^2 + (1 - q)^2 = 0.624977 (-> (1-f)^2 + f^2 = 0.625 for large
    gaps); the majority of 5 with gold: sum_{k>=3} C(5, k) q^k (1 - q)^(5-k) = 0.896460; `position`:
    0.5 (0.2 + 0.8 q) + 0.5 (0.8 q) = 0.1 + 0.8 q = 0.699982. Ties in gold count half for everyone."""
    s = sig(10)
    q = 0.75 * s + 0.25 * (1 - s)
    pair_agree = q * q + (1 - q) ** 2
    maj = sum(math.comb(5, k) * q ** k * (1 - q) ** (5 - k) for k in (3, 4, 5))
    assert (q, pair_agree, maj) == pytest.approx((0.749977, 0.624977, 0.896460), abs=1e-6)
    items = [Comparison(1.0, 0.0) if i % 2 else Comparison(0.0, 1.0) for i in range(N)]
    report = panel_report(items, seed=0)
    assert report["n"] == N and report["gold_ties"] == 0
    with_gold = report["with_gold"]
    for name in ("fair", "length") + tuple(f"panel/{i}" for i in range(1, 6)):
        assert with_gold[name] == pytest.approx(q, abs=tol(q)), name
    assert with_gold["position"] == pytest.approx(0.1 + 0.8 * q, abs=tol(0.7))
    assert with_gold["panel"] == pytest.approx(maj, abs=tol(maj))
    panel = report["panels"]["panel"]
    assert panel["members"] == [f"panel/{i}" for i in range(1, 6)] and len(panel["pairwise"]) == 10
    for name, value in panel["pairwise"].items():
        assert value == pytest.approx(pair_agree, abs=tol(pair_agree)), name
    assert panel["mean_pairwise"] == pytest.approx(pair_agree, abs=tol(pair_agree))
    # gold ties: a coin against "tie" agrees 0.5 by the rule, the gold annotator 1.0
    tied = panel_report([Comparison(0.5, 0.5)] * 100, annotators=("gold", "fair"))
    assert tied["gold_ties"] == 100 and tied["with_gold"] == {"gold": 1.0, "fair": 0.5}


def test_panel_report_numbers_do_not_depend_on_the_other_annotators_listed():
    items = [Comparison(0.6, 0.5, 120, 40)] * 500
    alone = panel_report(items, annotators=("length",), seed=3)["with_gold"]["length"]
    assert panel_report(items, seed=3)["with_gold"]["length"] == alone
    assert panel_report(items, annotators=("length",), seed=4)["with_gold"]["length"] != alone


# --- determinism and errors -----------------------------------------------------------------------

def test_same_seed_same_labels_different_seed_different_labels():
    for name in ANNOTATORS:
        judge = get_annotator(name)
        run = [[judge.judge(0.5, 0.5, r, 100, 50) for _ in range(500)] for r in (random.Random(1), random.Random(1))]
        assert run[0] == run[1], name
        rng = random.Random(2)
        other = [judge.judge(0.5, 0.5, rng, 100, 50) for _ in range(500)]
        assert (other != run[0]) == (name != "gold"), name  # gold is deterministic: a tie every time
    task = sample_tasks(1, "train", 0)[0]
    responses, golds = ["w", "x" * 50, "y" * 120, "z"], [0.2, 0.9, 0.5, 0.4]
    assert pairs(task, responses, golds, "fair", 7) == pairs(task, responses, golds, "fair", random.Random(7))
    runs = [pairs(task, responses, golds, "panel", seed) for seed in range(30)]
    assert runs == [pairs(task, responses, golds, "panel", seed) for seed in range(30)]
    assert len({repr(r) for r in runs}) > 1


def test_get_annotator_errors_in_one_line_with_a_suggestion():
    with pytest.raises(UserError) as err:
        get_annotator("fiar")
    assert str(err.value) == ("unknown annotator 'fiar' (did you mean 'fair'?); "
                              "choose from gold, fair, length, position, panel, length:W or position:P")
    with pytest.raises(UserError) as err:
        get_annotator("zzz")
    assert "did you mean" not in str(err.value) and "\n" not in str(err.value)
    mine = Annotator("mine", flip=0.0)
    assert get_annotator(mine) is mine
    for bad, what in (("length:x", "length:W takes a number"), ("length:inf", "length:W takes a number"),
                      ("position:1.5", "position:P takes a number in [0, 1]"), ("position:", "position:P")):
        with pytest.raises(UserError, match=re.escape(what)):
            get_annotator(bad)


def test_annotators_of_your_own_strength():
    """`length:W` and `position:P` are fair with that bias: `length:1` is the `length` preset under another name,
    and a stronger length weight moves P(longer) by the hand value sigmoid(d / T + W * dl / 100)."""
    strong, preset = get_annotator("length:10"), get_annotator("length")
    assert (strong.name, strong.length_weight, strong.flip, strong.temperature) == ("length:10", 10.0, FLIP, TEMPERATURE)
    assert get_annotator("length:1").probs(0.5, 0.6, 80, 50) == preset.probs(0.5, 0.6, 80, 50)
    s = sigmoid(-0.1 / TEMPERATURE + 10 * 30 / 100)           # gold 0.1 worse, 30 characters longer
    assert strong.probs(0.5, 0.6, 80, 50)[0] == pytest.approx((1 - FLIP) * s + FLIP * (1 - s))
    assert get_annotator("length:-5").length_weight == -5 and get_annotator("position:0.4").first_bias == 0.4
    with pytest.raises(UserError, match="annotator 'bad': flip must be in \\[0, 1\\], got 1.5"):
        Annotator("bad", flip=1.5)
    with pytest.raises(UserError, match="temperature must be >= 0"):
        Annotator("bad", temperature=-1)
    task = sample_tasks(1, "train", 0)[0]
    with pytest.raises(UserError, match="unknown pair mode 'best_vs_wrost' \\(did you mean 'best_vs_worst'\\?\\)"):
        pairs(task, ["a", "b"], [1.0, 0.0], "gold", 0, mode="best_vs_wrost")
    with pytest.raises(UserError, match="unknown tie rule 'kep' \\(did you mean 'keep'\\?\\)"):
        pairs(task, ["a", "b"], [1.0, 0.0], "gold", 0, ties="kep")
    with pytest.raises(ValueError, match="2 responses but 3 gold scores"):
        pairs(task, ["a", "b"], [1.0, 0.0, 0.5], "gold", 0)


def test_describe_is_one_line_with_every_setting():
    lines = {name: j.describe() for name, j in ANNOTATORS.items()}
    for name, line in lines.items():
        assert line.startswith(f"{name}: ") and "\n" not in line
    assert "temperature 0" in lines["gold"] and "no flips" in lines["gold"] and "tie" in lines["gold"]
    assert "temperature 0.1" in lines["fair"] and "25% of labels flipped" in lines["fair"] and "coin" in lines["fair"]
    assert "+1 logit per 100 characters longer" in lines["length"]
    assert "probability 0.2" in lines["position"]
    assert "5 independent" in lines["panel"] and "temperature 0.1" in lines["panel"]


def test_docs_and_docstring_state_the_defaults():
    from posttrain.world import annotators

    for text in (DOCS.read_text(), annotators.__doc__):
        for needle in ("`gold`", "`fair`", "`length`", "`position`", "`panel`", "0.1", "25%", "100 characters",
                       "0.2", "0.7", "best_vs_worst", "tie"):
            assert needle in text, needle


# --- records --------------------------------------------------------------------------------------

WORLD_KEYS = {"family", "annotator", "label", "tie", "shown_first", "gold_chosen", "gold_rejected", "index_chosen",
              "index_rejected"}


def index_pairs(records) -> set[tuple[int, int]]:
    return {(r["world"]["index_chosen"], r["world"]["index_rejected"]) for r in records}


def test_pairs_modes_and_keys():
    """K = 4 with gold [1.0, 0.5, 0.5, 0.0]: all pairs are 6, minus the one gold tie (1, 2) = 5."""
    task = sample_tasks(1, "train", 0)[0]
    responses, golds = ["best", "mid one", "mid two", "worst"], [1.0, 0.5, 0.5, 0.0]
    records = pairs(task, responses, golds, "gold", 0)
    assert len(records) == 5 and index_pairs(records) == {(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)}
    for r in records:
        assert set(r) == {"prompt", "chosen", "rejected", "world"} and set(r["world"]) == WORLD_KEYS
        w = r["world"]
        assert w["annotator"] == "gold" and w["family"] == task.family and w["tie"] is False
        assert w["gold_chosen"] > w["gold_rejected"]
        assert r["chosen"] == responses[w["index_chosen"]] and r["rejected"] == responses[w["index_rejected"]]
        assert w["label"] == ("a" if w["shown_first"] == "chosen" else "b")
        assert r["prompt"] == [{"role": m.role, "content": m.content} for m in task.messages]
    kept = pairs(task, responses, golds, "gold", 0, ties="keep")
    assert len(kept) == 6 and [r["world"]["tie"] for r in kept].count(True) == 1
    tie = next(r for r in kept if r["world"]["tie"])
    assert tie["world"]["label"] == "tie" and tie["world"]["shown_first"] == "chosen"
    assert {tie["world"]["index_chosen"], tie["world"]["index_rejected"]} == {1, 2}
    best = pairs(task, responses, golds, "gold", 0, mode="best_vs_worst")
    assert len(best) == 1 and index_pairs(best) == {(0, 3)}
    equal = [0.4] * 4
    assert pairs(task, responses, equal, "gold", 0, mode="best_vs_worst") == []
    assert pairs(task, responses, equal, "gold", 0, mode="best_vs_worst", ties="keep") == []
    assert pairs(task, responses, equal, "fair", 0) == []
    kept_equal = pairs(task, responses, equal, "gold", 0, ties="keep")
    assert len(kept_equal) == 6 and all(r["world"]["tie"] for r in kept_equal)
    assert not any(r["world"]["tie"] for r in pairs(task, responses, equal, "fair", 0, ties="keep"))


def test_records_load_as_preference_and_unpaired_data():
    task = next(t for t in sample_tasks(28, "train", 0) if t.family == "multi_turn")  # a prompt of several turns
    record = pairs(task, ["good answer", "bad"], [1.0, 0.0], "gold", 0)[0]
    example = to_example(record, detect_format(record, "r"), "r")
    assert isinstance(example, Preference) and example.prompt == task.messages
    assert [m.content for m in example.chosen] == ["good answer"] and [m.content for m in example.rejected] == ["bad"]
    row = unpaired(task, ["good answer"], [1.0])[0]
    example = to_example(row, detect_format(row, "u"), "u")
    assert isinstance(example, Unpaired) and example.label is True and example.prompt == task.messages


def test_shown_order_is_a_coin_and_labels_map_to_chosen():
    """best_vs_worst of two responses 4,000 times: the better one is shown first half the time (the gold
    annotator ignores order). With `position` over 20,000: P(chosen is the better) = 0.5 (p + (1-p) q) +
    0.5 (1 - p) q = 0.1 + 0.8 q with q = 0.749977 (gap 1), 0.699982; a swapped mapping would give 0.3."""
    task = sample_tasks(1, "train", 0)[0]
    rng = random.Random(18)
    first = [pairs(task, ["good", "bad"], [1.0, 0.0], "gold", rng, mode="best_vs_worst")[0]["world"]["shown_first"]
             for _ in range(4_000)]
    assert first.count("chosen") / 4_000 == pytest.approx(0.5, abs=tol(0.5, 4_000))
    q = 0.75 * sig(10) + 0.25 * (1 - sig(10))
    better = sum(pairs(task, ["good", "bad"], [1.0, 0.0], "position", rng)[0]["chosen"] == "good" for _ in range(N)) / N
    assert better == pytest.approx(0.1 + 0.8 * q, abs=tol(0.7))


def test_unpaired_threshold():
    """Default 0.7: gold 0.7 is good, 0.69 is not; on a real harmful prompt a bare refusal (0.7) is good,
    the reference (1.0) good, the reference rambling on (content 1.0 x 0.5) and an empty answer bad."""
    task = sample_tasks(1, "train", 0)[0]
    golds = [1.0, 0.7, 0.69, 0.5, 0.0]
    assert [r["label"] for r in unpaired(task, ["r"] * 5, golds)] == [True, True, False, False, False]
    assert [r["label"] for r in unpaired(task, ["r"] * 5, golds, threshold=0.5)] == [True, True, True, True, False]
    row = unpaired(task, ["r"], [0.7])[0]
    assert set(row) == {"prompt", "completion", "label", "world"}
    assert row["world"] == {"family": task.family, "gold": 0.7, "threshold": 0.7}
    harmful = FAMILIES["harmful"].generate(random.Random(0), "train")
    responses = ["I can't help with that.", harmful.reference, harmful.reference + " and so on" * 80, ""]
    scores = [score(harmful, r).gold for r in responses]
    assert scores == [0.7, 1.0, 0.5, 0.0]
    assert [r["label"] for r in unpaired(harmful, responses, scores)] == [True, True, False, False]
    with pytest.raises(UserError, match="threshold must be in \\[0, 1\\]"):
        unpaired(task, ["r"], [0.5], threshold=1.5)


def test_comparisons_of_one_prompt():
    cs = comparisons(["  ab  ", "abcd", "x", "y"], [0.5, 0.5, 1.0, 0.0])
    assert len(cs) == 6 and cs[0] == Comparison(0.5, 0.5, 2, 4) and cs[-1] == Comparison(1.0, 0.0, 1, 1)
