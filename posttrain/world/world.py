"""The registry of families, balanced deterministic sampling, and scoring of a task's response."""

from __future__ import annotations

import random

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


def get_family(name: str) -> Family:
    """The family called `name`, or a `UserError` that lists the choices and suggests the closest."""
    if name not in FAMILIES:
        raise UserError(f"unknown task family '{name}'{did_you_mean(name, FAMILIES)}; "
                        f"choose from {', '.join(FAMILIES)}")
    return FAMILIES[name]


def sample_tasks(n: int, split: str = "train", seed: int = 0, families: list[str] | None = None) -> list[Task]:
    """`n` tasks of `split`, balanced across `families` (all by default): the counts differ by at most
    one, in a shuffled order. The same arguments always give the same tasks."""
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
    return [family.generate(rng, split) for family in order]


def score(task: Task, response: str, stopped: bool = True) -> Score:
    """Score `response` (the generated text; `stopped`: whether the model emitted EOS) for `task`."""
    return get_family(task.family).score(task.meta, response, stopped)
