"""The registry of families, balanced deterministic sampling (with replacement, or of distinct prompts),
and scoring of a task's response."""

from __future__ import annotations

import random
from collections import Counter

from posttrain.errors import UserError, did_you_mean
from posttrain.world.core import Family, Score, Task, check_split
from posttrain.world.fam_instructions import IFEval, SystemRule
from posttrain.world.fam_knowledge import Arithmetic, Facts, Unanswerable
from posttrain.world.fam_lists import ListN, MultiTurn, SortWords, WordTransform
from posttrain.world.fam_safety import BenignLookalike, Harmful
from posttrain.world.fam_writing import Format, Poem, Summarize

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (Poem(), Facts(), Arithmetic(), ListN(), Summarize(), WordTransform(), Format(), Harmful(),
              BenignLookalike(), Unanswerable(), MultiTurn(), IFEval(), SystemRule(), SortWords())
}

# `distinct_tasks` takes a family's pool as exhausted after this many draws in a row bring no new prompt.
MISS_LIMIT = 20_000


def get_family(name: str) -> Family:
    """The family called `name`, or a `UserError` that lists the choices and suggests the closest."""
    if name not in FAMILIES:
        raise UserError(f"unknown task family '{name}'{did_you_mean(name, FAMILIES)}; "
                        f"choose from {', '.join(FAMILIES)}")
    return FAMILIES[name]


def sample_tasks(n: int, split: str = "train", seed: int = 0, families: list[str] | None = None,
                 distinct: bool = False) -> list[Task]:
    """`n` tasks of `split`, balanced across `families` (all by default): the counts differ by at most
    one, in a shuffled order. The same arguments always give the same tasks.

    By default tasks are drawn with replacement (the same prompt can come twice; SFT-style sampling).
    With `distinct`, no two tasks of a family share a prompt (`Task.prompt_text()`): each family's share
    comes from `distinct_tasks`, and a family whose pool holds fewer distinct prompts than its share
    contributes all of them, so the total can be below `n`. A family's distinct tasks depend only on
    (family, split, seed), not on `n` or the other families: asking for more extends the same list.
    """
    check_split(split)
    if n < 0:
        raise UserError(f"sample_tasks needs a number of tasks >= 0, got {n}")
    names = list(families) if families is not None else list(FAMILIES)
    chosen = [get_family(name) for name in names]
    if not chosen:
        raise UserError("sample_tasks needs at least one family")
    rng = random.Random(f"posttrain.world:{split}:{seed}:{','.join(names)}")
    extra = rng.sample(range(len(chosen)), n % len(chosen))
    order = [f for i, f in enumerate(chosen) for _ in range(n // len(chosen) + (i in extra))]
    rng.shuffle(order)
    if not distinct:
        return [family.generate(rng, split) for family in order]
    shares = Counter(f.name for f in order)
    drawn = {name: iter(distinct_tasks(name, k, split, seed)) for name, k in shares.items()}
    return [t for f in order if (t := next(drawn[f.name], None)) is not None]


def distinct_tasks(family: str, k: int, split: str = "test", seed: int = 0) -> list[Task]:
    """Up to `k` tasks of `family` with pairwise different prompts, in the order first drawn; all of the
    family's distinct prompts when it has `k` or fewer. Deterministic in (family, split, seed); a smaller
    `k` gives a prefix of a larger one.

    Drawing stops when `k` prompts are found or when `MISS_LIMIT` (20,000) draws in a row bring nothing
    new: then the pool is taken as exhausted. A prompt of probability p that is still missing survives
    20,000 draws with probability (1 - p)^20000 <= exp(-20000 p). Every family with under 1,000 test
    prompts has p >= 1/1,000 for its rarest one (measured over 10^6 draws: word_transform 1/810,
    system_rule 1/680, arithmetic 1/650, unanswerable 1/420, the rest more likely), so a prompt is missed
    with probability below exp(-20) = 2e-9, and a whole pool (at most 1,000 prompts) below 2e-6
    (unanswerable, harmful and benign_lookalike: below 1e-18). The families with thousands of test
    prompts (facts, format, summarize, multi_turn, ifeval, sort_words) are never asked for all of them.
    Exhausting a pool costs about 20,000 draws (0.1-0.5 s); a share smaller than the pool costs little
    more than `k` draws.
    """
    fam = get_family(family)
    check_split(split)
    rng = random.Random(f"posttrain.world.distinct:{family}:{split}:{seed}")
    seen: set[str] = set()
    tasks: list[Task] = []
    misses = 0
    while len(tasks) < k and misses < MISS_LIMIT:
        task = fam.generate(rng, split)
        prompt = task.prompt_text()
        if prompt in seen:
            misses += 1
            continue
        seen.add(prompt)
        tasks.append(task)
        misses = 0
    return tasks


def score(task: Task, response: str, stopped: bool = True) -> Score:
    """Score `response` (the generated text; `stopped`: whether the model emitted EOS) for `task`."""
    return get_family(task.family).score(task.meta, response, stopped)
