"""Simulated annotators: preference labels from the gold verifier, with noise and deliberate biases
(AlpacaFarm-style), so preference methods can be trained on labels whose noise and bias are known.

An annotator is shown two responses to the same task, `a` first and `b` second, with their gold scores
`g_a`, `g_b` and lengths `l_a`, `l_b`, and answers `"a"`, `"b"` or `"tie"`. The model, in the order it
is applied (`Annotator.judge`; `Annotator.probs` is the same in closed form):

1. first-position bias: with probability `first_bias` (p) it answers `"a"` regardless of anything else;
2. otherwise a Bradley-Terry draw: `"a"` with probability
   `s = sigmoid((g_a - g_b) / T + w * (l_a - l_b) / LENGTH_SCALE)`
   (`T`: `temperature`; `w`: `length_weight`; lengths are characters of the stripped response,
   `response_length`, and `LENGTH_SCALE` is 100 characters);
3. then label-flip noise on top of the draw: with probability `flip` (f) the drawn label is swapped.

So P("a") = p + (1 - p) * ((1 - f) * s + f * (1 - s)), and an annotator without biases agrees with the
gold ordering with probability (1 - f) * sigmoid(|d| / T) + f * (1 - sigmoid(|d| / T)) for a gold gap d.

Defaults: `TEMPERATURE = 0.1` (gold is in [0, 1]; a gap of 0.1, one sub-check of ten, is drawn the
right way 73% of the time, a gap of 0.5 (half credit against full) 99.3%), `FLIP = 0.25` (25% of labels
swapped after the draw, as AlpacaFarm's simulated annotators do), no length bias (`length_weight = 0`),
`LENGTH_SCALE = 100` characters, no position bias (`first_bias = 0`).

Ties: with `temperature = 0` the draw is deterministic (the sign of the gold gap, and on equal gold the
sign of the length term); when that is zero too (equal gold, no length difference or no length weight)
the draw is a tie, and a flip leaves a tie a tie. With `temperature > 0` a zero logit is a fair coin, so
noisy annotators never answer `"tie"`. Only the first-position bias overrides a tie (it answers `"a"`).

Every judgement draws exactly three uniforms from the caller's `random.Random` (position, draw, flip), used
or not, so annotators judging the same pairs from the same seed share their random numbers: `length` and
`position` differ from `fair` only where their bias changed the answer. A seed (an int) may be passed
instead of a `random.Random`; the same seed gives the same labels.

Presets (`ANNOTATORS`, `get_annotator`): `gold` (temperature 0, no flips: the gold ordering, ties as
ties), `fair` (the defaults), `length` (fair + `length_weight = LENGTH_WEIGHT = 1.0`: 100 characters
longer adds 1 to the logit, as much as a gold gap of 0.1), `position` (fair + `first_bias = FIRST_BIAS =
0.2`: 60% "a" on equal gold), `panel` (the majority vote of `PANEL_SIZE = 5` independent fair members,
`panel/1` .. `panel/5`; each member's vote is its own three draws). `length:W` and `position:P` are fair with a
length weight W or a first-position bias P of your choice.

Pairs for preference data (`pairs`): `mode="all"` (every two of a prompt's K responses, K(K-1)/2 pairs)
or `"best_vs_worst"` (the first highest-gold against the first lowest-gold response; no pair when all gold
are equal). Pairs with equal gold are dropped by default (`ties="drop"`); `ties="keep"` judges them too
(a noisy annotator then picks by coin and bias; a tie label keeps the shown order and says `"tie": true`).
Which response is shown first is a fair coin per pair. `unpaired` labels single responses for KTO: good
when gold >= `GOOD_THRESHOLD = 0.7` (the families' floor for a right answer in imperfect form: a bare
refusal, a correct fact with a contradiction; every rambling response, at most 0.5, is bad).

Agreement (`agreement`): the fraction of pairs two label lists agree on; a tie against a choice counts
half (the expected agreement if the tie were broken by a coin), tie against tie counts one. See
docs/annotators.md.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from posttrain.errors import UserError, did_you_mean
from posttrain.world.core import Task

A, B, TIE = "a", "b", "tie"
LABELS = (A, B, TIE)
TEMPERATURE = 0.1
FLIP = 0.25
LENGTH_SCALE = 100.0  # characters of the stripped response
LENGTH_WEIGHT = 1.0  # the `length` preset
FIRST_BIAS = 0.2  # the `position` preset
PANEL_SIZE = 5
GOOD_THRESHOLD = 0.7  # `unpaired`: good when gold >= this
MODES = ("all", "best_vs_worst")
TIE_RULES = ("drop", "keep")
REPORTED = ("fair", "length", "position", "panel")  # `panel_report`'s default annotators
_SWAP = {A: B, B: A, TIE: TIE}


def sigmoid(x: float) -> float:
    """1 / (1 + exp(-x)), without overflow for large |x| (exact 0.0 and 1.0 at +-infinity)."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def response_length(text: str) -> int:
    """The length the length bias uses: characters of the stripped response."""
    return len(text.strip())


def as_rng(rng: random.Random | int) -> random.Random:
    """`rng` itself, or a `random.Random` seeded with the int `rng`."""
    return rng if isinstance(rng, random.Random) else random.Random(rng)


@dataclass(frozen=True)
class Annotator:
    """One simulated annotator (module docstring: the model, its order and its defaults).

    temperature: Bradley-Terry temperature on the gold gap (>= 0; 0 is deterministic). flip: probability
    of swapping the drawn label, applied on top of the draw. length_weight: logit added per `length_scale`
    characters that `a` is longer than `b`. first_bias: probability of answering "a" regardless.
    """

    name: str
    temperature: float = TEMPERATURE
    flip: float = FLIP
    length_weight: float = 0.0
    length_scale: float = LENGTH_SCALE
    first_bias: float = 0.0

    def __post_init__(self) -> None:
        checks = (("temperature", self.temperature >= 0, ">= 0"), ("flip", 0 <= self.flip <= 1, "in [0, 1]"),
                  ("first_bias", 0 <= self.first_bias <= 1, "in [0, 1]"),
                  ("length_scale", self.length_scale > 0, "> 0"))
        for field_name, ok, want in checks:
            if not ok:
                raise UserError(f"annotator '{self.name}': {field_name} must be {want}, "
                                f"got {getattr(self, field_name)}")

    def describe(self) -> str:
        """One line with every setting, for `--help`."""
        if self.temperature == 0:
            draw = "the gold ordering (temperature 0)"
        else:
            draw = f"Bradley-Terry on gold with temperature {self.temperature:g}"
        parts = [draw, f"then {self.flip:.0%} of labels flipped" if self.flip else "no flips"]
        if self.length_weight:
            parts.append(f"length bias: +{self.length_weight:g} logit per {self.length_scale:g} characters longer")
        if self.first_bias:
            parts.append(f"answers 'a' (shown first) with probability {self.first_bias:g} regardless")
        tie = "equal gold is a tie" if self.temperature == 0 else "equal gold is a coin flip"
        return f"{self.name}: {', '.join(parts)}; {tie}"

    def _draw_a(self, gold_a: float, gold_b: float, len_a: int, len_b: int) -> tuple[float, bool]:
        """(P(the draw says "a"), whether the draw is a tie) before flips and position bias."""
        length = self.length_weight * (len_a - len_b) / self.length_scale
        if self.temperature > 0:
            return sigmoid((gold_a - gold_b) / self.temperature + length), False
        if gold_a != gold_b:
            return (1.0 if gold_a > gold_b else 0.0), False
        return sigmoid(length), length == 0

    def probs(self, gold_a: float, gold_b: float, len_a: int = 0, len_b: int = 0) -> tuple[float, float, float]:
        """(P("a"), P("b"), P("tie")) in closed form: p + (1 - p) * ((1 - f) s + f (1 - s)) for "a"."""
        s, tie = self._draw_a(gold_a, gold_b, len_a, len_b)
        if tie:
            return self.first_bias, 0.0, 1.0 - self.first_bias
        f, p = self.flip, self.first_bias
        after_flip = (1 - f) * s + f * (1 - s)
        return p + (1 - p) * after_flip, (1 - p) * (1 - after_flip), 0.0

    def judge(self, gold_a: float, gold_b: float, rng: random.Random | int, len_a: int = 0, len_b: int = 0) -> str:
        """"a", "b" or "tie" for `a` (shown first) against `b`; draws exactly three uniforms from `rng`."""
        rng = as_rng(rng)
        u_first, u_draw, u_flip = rng.random(), rng.random(), rng.random()
        if u_first < self.first_bias:
            return A
        s, tie = self._draw_a(gold_a, gold_b, len_a, len_b)
        label = TIE if tie else A if u_draw < s else B
        return _SWAP[label] if u_flip < self.flip else label


def majority(votes: Sequence[str]) -> str:
    """The label with the most votes among "a" and "b" ("tie" votes abstain); equal counts are a tie."""
    n_a, n_b = votes.count(A), votes.count(B)
    return A if n_a > n_b else B if n_b > n_a else TIE


@dataclass(frozen=True)
class Panel:
    """Independent annotators whose majority vote (`majority`) is the label."""

    name: str
    members: tuple[Annotator, ...]

    def describe(self) -> str:
        kinds = {m.describe().split(": ", 1)[1] for m in self.members}
        who = f"{len(self.members)} independent annotators ({self.members[0].name} .. {self.members[-1].name})"
        like = f", each {kinds.pop()}" if len(kinds) == 1 else ""
        return f"{self.name}: majority vote of {who}{like}; an even split is a tie"

    def votes(self, gold_a: float, gold_b: float, rng: random.Random | int, len_a: int = 0,
              len_b: int = 0) -> list[str]:
        """Each member's label, in member order; every member makes its own three draws from `rng`."""
        rng = as_rng(rng)
        return [m.judge(gold_a, gold_b, rng, len_a, len_b) for m in self.members]

    def judge(self, gold_a: float, gold_b: float, rng: random.Random | int, len_a: int = 0, len_b: int = 0) -> str:
        return majority(self.votes(gold_a, gold_b, rng, len_a, len_b))


Judge = Annotator | Panel

ANNOTATORS: dict[str, Judge] = {
    j.name: j
    for j in (
        Annotator("gold", temperature=0.0, flip=0.0),
        Annotator("fair"),
        Annotator("length", length_weight=LENGTH_WEIGHT),
        Annotator("position", first_bias=FIRST_BIAS),
        Panel("panel", tuple(Annotator(f"panel/{i}") for i in range(1, PANEL_SIZE + 1))),
    )
}


def get_annotator(name: str | Judge) -> Judge:
    """The preset called `name`, or `length:W` / `position:P` (fair with `length_weight` W or `first_bias` P: a
    bias of your strength; `length:10`: 10 characters longer adds 1 to the logit, as much as a gold gap of 0.1);
    an `Annotator` or `Panel` passes through; anything else is a one-line `UserError`."""
    if isinstance(name, Annotator | Panel):
        return name
    base, sep, value = name.partition(":")
    if sep and base in ("length", "position"):
        try:
            strength = float(value)
        except ValueError:
            strength = math.nan
        if base == "length" and math.isfinite(strength):
            return Annotator(name, length_weight=strength)
        if base == "position" and 0 <= strength <= 1:
            return Annotator(name, first_bias=strength)
        raise UserError(f"annotator '{name}': " + ("length:W takes a number (length_weight; negative prefers "
                        "the shorter)" if base == "length" else "position:P takes a number in [0, 1] "
                        "(first_bias)") + f", got '{value}'")
    if name not in ANNOTATORS:
        raise UserError(f"unknown annotator '{name}'{did_you_mean(name, ANNOTATORS)}; "
                        f"choose from {', '.join(ANNOTATORS)}, length:W or position:P")
    return ANNOTATORS[name]


def help_text() -> str:
    """One `describe()` line per preset, and the two that take a strength."""
    return "\n".join([*(j.describe() for j in ANNOTATORS.values()),
                      "length:W, position:P: fair with a length weight W (logit per 100 characters longer) or a "
                      "first-position bias P of your choice"])


# --- agreement -------------------------------------------------------------------------------------

def agreement(labels_a: Sequence[str], labels_b: Sequence[str]) -> float:
    """Mean agreement of two label lists on the same pairs: 1 when equal, 0 for "a" against "b", and 0.5
    for a tie against a choice (the expected agreement had the tie been broken by a coin)."""
    if len(labels_a) != len(labels_b):
        raise ValueError(f"agreement of {len(labels_a)} labels with {len(labels_b)}")
    if not labels_a:
        raise ValueError("agreement of no labels")
    bad = (set(labels_a) | set(labels_b)) - set(LABELS)
    if bad:
        raise ValueError(f"labels must be one of {LABELS}, got {sorted(bad)}")
    return sum(1.0 if x == y else 0.5 if TIE in (x, y) else 0.0 for x, y in zip(labels_a, labels_b)) / len(labels_a)


class Comparison(NamedTuple):
    """One pair to judge: gold scores and lengths of `a` (shown first) and `b`."""

    gold_a: float
    gold_b: float
    len_a: int = 0
    len_b: int = 0


def comparisons(responses: Sequence[str], golds: Sequence[float]) -> list[Comparison]:
    """Every two of one prompt's responses (`a` the lower index), gold ties included, for `panel_report`."""
    _check_lengths(responses, golds)
    lens = [response_length(r) for r in responses]
    return [Comparison(golds[i], golds[j], lens[i], lens[j]) for i, j in itertools.combinations(range(len(golds)), 2)]


def _labels(judge: Judge, items: Sequence[Comparison], rng: random.Random) -> list[str]:
    return [judge.judge(c.gold_a, c.gold_b, rng, c.len_a, c.len_b) for c in items]


def panel_report(items: Sequence[Comparison], annotators: Sequence[str | Judge] = REPORTED, seed: int = 0) -> dict:
    """Each annotator's agreement with the `gold` annotator on `items`, and for each panel its members'
    agreement with gold, the pairwise agreement between members and its mean (rule of `agreement`).

    Every annotator judges all items from its own stream, `random.Random(f"...:{seed}:{name}")`, so a
    number does not depend on which other annotators are listed. Returns
    `{"n", "gold_ties", "with_gold": {name: x}, "panels": {name: {"members", "pairwise", "mean_pairwise"}}}`.
    """
    if not items:
        raise UserError("panel_report needs at least one comparison")
    gold = _labels(ANNOTATORS["gold"], items, random.Random(0))
    report: dict = {"n": len(items), "gold_ties": gold.count(TIE), "with_gold": {}, "panels": {}}
    for judge in map(get_annotator, annotators):
        rng = random.Random(f"posttrain.annotators.report:{seed}:{judge.name}")
        if isinstance(judge, Annotator):
            report["with_gold"][judge.name] = agreement(_labels(judge, items, rng), gold)
            continue
        votes = [judge.votes(c.gold_a, c.gold_b, rng, c.len_a, c.len_b) for c in items]
        by_member = {m.name: [v[k] for v in votes] for k, m in enumerate(judge.members)}
        report["with_gold"][judge.name] = agreement([majority(v) for v in votes], gold)
        for name, labels in by_member.items():
            report["with_gold"][name] = agreement(labels, gold)
        pairwise = {f"{x} vs {y}": agreement(by_member[x], by_member[y]) for x, y in itertools.combinations(by_member, 2)}
        mean = sum(pairwise.values()) / len(pairwise) if pairwise else float("nan")
        report["panels"][judge.name] = {"members": list(by_member), "pairwise": pairwise, "mean_pairwise": mean}
    return report


# --- preference and unpaired records --------------------------------------------------------------

def _check_lengths(responses: Sequence[str], golds: Sequence[float]) -> None:
    if len(responses) != len(golds):
        raise ValueError(f"{len(responses)} responses but {len(golds)} gold scores")


def _prompt(task: Task) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in task.messages]


def _choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise UserError(f"unknown {what} '{value}'{did_you_mean(value, choices)}; choose one of {', '.join(choices)}")
    return value


def _index_pairs(golds: Sequence[float], mode: str, ties: str) -> list[tuple[int, int]]:
    if mode == "best_vs_worst":
        best = max(range(len(golds)), key=lambda i: golds[i])
        worst = min(range(len(golds)), key=lambda i: golds[i])
        return [(best, worst)] if golds[best] != golds[worst] else []
    return [(i, j) for i, j in itertools.combinations(range(len(golds)), 2) if ties == "keep" or golds[i] != golds[j]]


def pairs(task: Task, responses: Sequence[str], golds: Sequence[float], annotator: str | Judge,
          rng: random.Random | int, mode: str = "all", ties: str = "drop") -> list[dict]:
    """Preference records for one prompt's scored responses, labelled by `annotator`.

    mode: "all" (every two responses) or "best_vs_worst" (first highest gold against first lowest; none
    when all gold are equal, whatever `ties`). ties: "drop" (default; skip pairs with equal gold) or
    "keep". Per pair, one draw decides which response is shown first (a fair coin), then the annotator
    judges. A record is `{"prompt": [{"role", "content"}, ...], "chosen": str, "rejected": str, "world":
    {"family", "annotator", "label" ("a"/"b"/"tie" for the order shown), "tie", "shown_first" ("chosen" or
    "rejected"), "gold_chosen", "gold_rejected", "index_chosen", "index_rejected"}}`; the data loader
    reads it as a preference and ignores "world". On a tie label, chosen is the response shown first.
    """
    _check_lengths(responses, golds)
    judge = get_annotator(annotator)
    _choice(mode, MODES, "pair mode")
    _choice(ties, TIE_RULES, "tie rule")
    rng = as_rng(rng)
    records = []
    for i, j in _index_pairs(golds, mode, ties):
        first, second = (i, j) if rng.random() < 0.5 else (j, i)
        label = judge.judge(golds[first], golds[second], rng, response_length(responses[first]),
                            response_length(responses[second]))
        chosen, rejected = (second, first) if label == B else (first, second)
        records.append({
            "prompt": _prompt(task), "chosen": responses[chosen], "rejected": responses[rejected],
            "world": {"family": task.family, "annotator": judge.name, "label": label, "tie": label == TIE,
                      "shown_first": "chosen" if chosen == first else "rejected",
                      "gold_chosen": golds[chosen], "gold_rejected": golds[rejected],
                      "index_chosen": chosen, "index_rejected": rejected},
        })
    return records


def unpaired(task: Task, responses: Sequence[str], golds: Sequence[float],
             threshold: float = GOOD_THRESHOLD) -> list[dict]:
    """KTO records, one per response: `{"prompt", "completion", "label": gold >= threshold, "world":
    {"family", "gold", "threshold"}}`. Default threshold `GOOD_THRESHOLD` (0.7)."""
    _check_lengths(responses, golds)
    if not 0 <= threshold <= 1:
        raise UserError(f"unpaired threshold must be in [0, 1] (gold scores are), got {threshold}")
    return [{"prompt": _prompt(task), "completion": r, "label": g >= threshold,
             "world": {"family": task.family, "gold": g, "threshold": threshold}}
            for r, g in zip(responses, golds)]
