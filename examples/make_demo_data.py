"""Writes examples/data/demo_sft.jsonl, the small chat dataset `make demo` fine-tunes on.

    python examples/make_demo_data.py

Deterministic (seed 0): arithmetic, word transforms, capitals, and two-turn follow-ups, in the OpenAI
messages format, so it goes through the same loaders as a user's data.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ["apple", "river", "stone", "cloud", "tiger", "piano", "garden", "silver", "ocean", "forest", "candle",
         "rocket", "meadow", "pepper", "window", "thunder", "violet", "harbor", "lantern", "marble"]
CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Egypt": "Cairo",
            "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo", "Canada": "Ottawa", "Chile": "Santiago"}


def example(rng: random.Random) -> list[tuple[str, str]]:
    k = rng.randrange(6)
    if k == 0:
        a, b = rng.randint(0, 49), rng.randint(0, 49)
        q = rng.choice([f"What is {a} + {b}?", f"Add {a} and {b}.", f"Compute {a} plus {b}."])
        return [("user", q), ("assistant", f"{a} + {b} = {a + b}.")]
    if k == 1:
        w = rng.choice(WORDS)
        return [("user", rng.choice([f"Reverse the word {w}.", f"Spell {w} backwards."])), ("assistant", w[::-1])]
    if k == 2:
        w = rng.choice(WORDS)
        return [("user", f"Write {w} in upper case."), ("assistant", w.upper())]
    if k == 3:
        c = rng.choice(list(CAPITALS))
        return [("user", rng.choice([f"What is the capital of {c}?", f"Name the capital of {c}."])),
                ("assistant", f"The capital of {c} is {CAPITALS[c]}.")]
    if k == 4:
        n = rng.randint(2, 5)
        ws = rng.sample(WORDS, n)
        return [("user", f"List {n} words."), ("assistant", ", ".join(ws) + "."),
                ("user", "Now in upper case."), ("assistant", ", ".join(w.upper() for w in ws) + ".")]
    w = rng.choice(WORDS)
    return [("user", f"How many letters are in the word {w}?"), ("assistant", f"{w} has {len(w)} letters.")]


def main(n: int = 2000, out: str = "examples/data/demo_sft.jsonl") -> None:
    rng = random.Random(0)
    rows = [{"messages": [{"role": r, "content": c} for r, c in example(rng)]} for _ in range(n)]
    Path(out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {n} examples to {out}")


if __name__ == "__main__":
    main()
