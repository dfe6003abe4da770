"""The world's building blocks: `Task`, `Score`, the `Family` protocol, split pools, and the one
shared stop/rambling penalty every verifier applies.

Stopping penalty (`finish`), applied after a family computes its content score in [0, 1]:

- `stopped=False` (the model never emitted EOS; the text was cut at the token limit): the gold score
  is multiplied by `NO_STOP_FACTOR = 0.0`. A truncated generation is not a usable answer.
- rambling: the stripped response is longer than `RAMBLE_RATIO * len(reference) + RAMBLE_SLACK`
  characters (3x + 20), or it runs on into an invented next turn (a line starting with `User:`,
  `Human:` or `Assistant:`): multiplied by `RAMBLE_FACTOR = 0.5`, once even when both hold.

The checks of every `Score` carry `content` (the score before the penalty), `stopped`,
`not_overlong` and `no_fake_turn`, so the penalty is visible and `gold == content * factor`.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from posttrain.data.types import Message
from posttrain.errors import UserError, did_you_mean

SPLITS = ("train", "test")
NO_STOP_FACTOR = 0.0
RAMBLE_FACTOR = 0.5
RAMBLE_RATIO = 3
RAMBLE_SLACK = 20
_FAKE_TURN = re.compile(r"(?:^|\n)[ \t]*(?:user|human|assistant)[ \t]*:", re.IGNORECASE)


@dataclass
class Task:
    """One prompt of the world. `messages` ends with a user turn; `reference` scores 1.0."""

    family: str
    messages: list[Message]
    meta: dict
    reference: str

    def prompt_text(self) -> str:
        """The prompt as one string (`role: content` lines), for comparing and logging prompts."""
        return "\n".join(f"{m.role}: {m.content}" for m in self.messages)


@dataclass
class Score:
    """`gold` in [0, 1] and the named sub-checks it was computed from."""

    gold: float
    checks: dict[str, float | bool] = field(default_factory=dict)


class Family(Protocol):
    """A task family: generates prompts with verifiable answers and scores responses to them."""

    name: str
    pools: dict[str, Pool]  # every train/test pool the family draws from (tests check disjointness)

    def generate(self, rng: random.Random, split: str) -> Task: ...

    def score(self, meta: dict, response: str, stopped: bool = True) -> Score: ...


def check_split(split: str) -> str:
    """`split` if it is one of `SPLITS`, else a `UserError` with a suggestion."""
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}{did_you_mean(split, SPLITS)}")
    return split


@dataclass(frozen=True)
class Pool:
    """Templates or entities for each split; the train and test items never overlap."""

    train: tuple
    test: tuple

    def __post_init__(self) -> None:
        shared = set(map(repr, self.train)) & set(map(repr, self.test))
        if shared:
            raise ValueError(f"train and test pools share {sorted(shared)[:3]}")

    def of(self, split: str) -> tuple:
        """The items of `split` ("train" or "test"; anything else is a `UserError`)."""
        return self.train if check_split(split) == "train" else self.test

    def pick(self, rng: random.Random, split: str) -> Any:
        return rng.choice(self.of(split))

    def sample(self, rng: random.Random, split: str, k: int) -> list:
        return rng.sample(self.of(split), k)


def user(text: str) -> Message:
    return Message("user", text)


def make_task(family: str, messages: list[Message], meta: dict, reference: str) -> Task:
    """A `Task` whose meta also records the reference length the rambling check needs."""
    return Task(family, messages, {**meta, "ref_chars": len(reference.strip())}, reference)


def finish(content: float, checks: dict[str, float | bool], response: str, meta: dict, stopped: bool) -> Score:
    """Apply the shared stop/rambling penalty (module docstring) to a family's content score."""
    text = response.strip()
    not_overlong = len(text) <= RAMBLE_RATIO * meta["ref_chars"] + RAMBLE_SLACK
    no_fake_turn = _FAKE_TURN.search(text) is None
    factor = (1.0 if stopped else NO_STOP_FACTOR) * (1.0 if not_overlong and no_fake_turn else RAMBLE_FACTOR)
    content = min(1.0, max(0.0, content))
    extra = {"content": content, "stopped": stopped, "not_overlong": not_overlong, "no_fake_turn": no_fake_turn}
    return Score(content * factor, {**checks, **extra})
