"""How well a base model copies from its context, in the drill format it was pretrained on.

    .venv/bin/python examples/base_copy_probe.py [MODEL] [--per-label 10]     (about 20 seconds on 2 cores)

Every family that acts on the prompt's own words (word transforms, sorting, multi-turn follow-ups, arithmetic)
needs the base to copy from its context. This probe writes new random lists the way the corpus's typing drills
do ("1) pelican, library, gymnastics" then a label such as "Backwards:"), lets the model continue greedily and
counts exact answers per label, once for word lists and once for number lists. Default MODEL: the shipped base.
"""

from __future__ import annotations

import random
from collections import defaultdict

from _common import parser, positive_int, run

from posttrain.models.load import load_model, load_tokenizer
from posttrain.rollout.generate import generate
from posttrain.world.corpus import DRILL_OPS, DRILL_WORDS  # the drills' own labels and words


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--per-label", type=positive_int, default=10, help="lists per label and kind (words, numbers)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    tok, model = load_tokenizer(args.model), load_model(args.model).eval()
    rng = random.Random(args.seed)
    cases = []  # (label, kind, prompt, expected answer)
    for label, fn in DRILL_OPS:
        for kind in ("words", "numbers"):
            for _ in range(args.per_label):
                items = (rng.sample(DRILL_WORDS, rng.randint(3, 6)) if kind == "words"
                         else [str(rng.randint(2, 99)) for _ in range(rng.randint(3, 6))])
                prompt = f"Typing practice\nRead each list, then write what the label asks for.\n\n1) {', '.join(items)}\n{label}"
                cases.append((label, kind, prompt, fn(items)))
    outputs = generate(model, tok, [c[2] for c in cases], max_new_tokens=32, temperature=0.0, batch_size=32,
                       raw=True, progress="copy probe")
    hits: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for (label, kind, _, expected), out in zip(cases, outputs):
        hits[label, kind].append(out["text"].strip().split("\n")[0].strip() == expected)
    print(f"{args.model}: exact answers per drill label, {args.per_label} new lists each")
    print(f"  {'label':<16}{'words':>8}{'numbers':>9}")
    for label, _ in DRILL_OPS:
        w, n = hits[label, "words"], hits[label, "numbers"]
        print(f"  {label:<16}{sum(w):>5}/{len(w):<3}{sum(n):>5}/{len(n)}")


if __name__ == "__main__":
    run(main)
