"""SFT data from the world, in the user's messages format (`{"messages": [{"role", "content"}, ...]}`).

- `curated`: the gold reference for every prompt, balanced across families, except that only ~2% are
  harmful prompts (with their refusals): refusal judgement is left to the preference stage.
- `noisy`: the same mix with realistic flaws in 40% of the records, 10% each:
  `wrong` (another prompt's answer; for harmful a bare refusal, for benign_lookalike an over-refusal,
  for unanswerable a confident guess), `ramble` (the answer, then filler far past its end),
  `truncated` (cut off mid-answer), `no_stop` (the answer runs on into an invented `User:` turn and its
  reply: messages have no EOS flag, so this is how a missing stop shows up).

Each record also carries `"world": {"family", "flaw"}` (flaw is null when clean); the messages loader
ignores that key.
"""

from __future__ import annotations

import json
import os
import random

from posttrain.errors import UserError, did_you_mean
from posttrain.io import atomic_write_text
from posttrain.world.core import Task
from posttrain.world.world import FAMILIES, get_family, score

KINDS = ("curated", "noisy")
FLAWS = ("wrong", "ramble", "truncated", "no_stop")
HARMFUL_FRACTION = 0.02
FLAW_FRACTION = 0.4
_FILLER = ("I hope this helps! Let me know if you have any other questions. Also, there is a lot more that "
           "could be said about this topic, so let me keep going for a while longer. ")
_WRONG_FIXED = {"harmful": "I can't help with that.", "benign_lookalike": "I can't help with that request.",
                "unanswerable": "The answer is 42."}


def _record(task: Task, response: str, flaw: str | None) -> dict:
    turns = [{"role": m.role, "content": m.content} for m in task.messages]
    return {"messages": turns + [{"role": "assistant", "content": response}],
            "world": {"family": task.family, "flaw": flaw}}


def _tasks(n: int, rng: random.Random) -> list[Task]:
    n_harmful = round(HARMFUL_FRACTION * n)
    others = [name for name in FAMILIES if name != "harmful"]
    tasks = [get_family("harmful").generate(rng, "train") for _ in range(n_harmful)]
    order = [others[i % len(others)] for i in range(n - n_harmful)]
    tasks += [get_family(name).generate(rng, "train") for name in order]
    rng.shuffle(tasks)
    return tasks


def _wrong(task: Task, rng: random.Random) -> str:
    if task.family in _WRONG_FIXED:
        return _WRONG_FIXED[task.family]
    for _ in range(20):  # another prompt's answer that is wrong here
        other = get_family(task.family).generate(rng, "train").reference
        if score(task, other).checks["content"] < 1.0:
            return other
    return task.reference[: len(task.reference) // 2]


def _flawed(task: Task, flaw: str, rng: random.Random) -> str:
    ref = task.reference
    if flaw == "wrong":
        return _wrong(task, rng)
    if flaw == "ramble":
        return (ref + " " + _FILLER * (1 + (3 * len(ref) + 20) // len(_FILLER))).rstrip()
    if flaw == "truncated":
        cut = ref[: max(1, len(ref) // 2)]
        return cut.rsplit(" ", 1)[0] if " " in cut else cut
    other = get_family(rng.choice([f for f in FAMILIES if f != "harmful"])).generate(rng, "train")
    return f"{ref}\nUser: {other.messages[-1].content}\nAssistant: {other.reference}"


def sft_examples(kind: str, n: int, seed: int = 0) -> list[tuple[Task, str, str | None]]:
    """`n` (task, assistant response, flaw or None) triples of `kind`, deterministic in `seed`; the
    tasks keep their meta, so the responses can be scored."""
    if kind not in KINDS:
        raise UserError(f"unknown SFT data kind '{kind}'{did_you_mean(kind, KINDS)}; choose from {', '.join(KINDS)}")
    rng = random.Random(f"posttrain.world.sft:{seed}")
    tasks = _tasks(n, rng)
    picked = rng.sample(range(n), round(FLAW_FRACTION * n)) if kind == "noisy" else []
    flaws = {i: FLAWS[j % len(FLAWS)] for j, i in enumerate(picked)}  # equal shares of each flaw
    out = []
    for i, task in enumerate(tasks):
        flaw = flaws.get(i)
        out.append((task, _flawed(task, flaw, rng) if flaw else task.reference, flaw))
    return out


def make_sft_data(kind: str, n: int, seed: int = 0) -> list[dict]:
    """`n` messages-format SFT records of `kind` ("curated" or "noisy"), deterministic in `seed`."""
    return [_record(task, response, flaw) for task, response, flaw in sft_examples(kind, n, seed)]


def write_jsonl(records: list[dict], path: str | os.PathLike) -> None:
    """Write `records` as JSON lines to `path` atomically (a reader never sees a partial file)."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
