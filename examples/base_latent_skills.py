"""What a base model can already do, before SFT: the world's test prompts in the corpus's own Q&A format.

    .venv/bin/python examples/base_latent_skills.py [MODEL] [--n 280]     (about 1 minute on 2 cores)

Each test task is written the way questions sit on the corpus's Q&A pages ("Questions and answers", then
"Q: ..." and "A:"), the model continues greedily, the continuation is cut at the first blank line (where the
page's next question would start) and scored by the world as if it had stopped. That is the most SFT could
bring out without teaching anything new; compare it with `posttrain eval world` on the fine-tuned model,
family by family, to see what SFT kept, added and lost. Default MODEL: the shipped base.
"""

from __future__ import annotations

from collections import defaultdict

from _common import parser, positive_int, run

from posttrain.models.load import load_model, load_tokenizer
from posttrain.rollout.generate import generate
from posttrain.world import FAMILIES, Task, sample_tasks, score


def qa_page(task: Task) -> str:
    parts = []
    for m in task.messages:
        parts.append({"user": f"Q: {m.content}\n", "assistant": f"A: {m.content}\n\n"}.get(m.role, f"{m.content}\n\n"))
    return "Questions and answers\n\n" + "".join(parts) + "A:"


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--n", type=positive_int, default=280)
    args = p.parse_args()
    tok, model = load_tokenizer(args.model), load_model(args.model).eval()
    tasks = sample_tasks(args.n, split="test", seed=0)
    outputs = generate(model, tok, [qa_page(t) for t in tasks], max_new_tokens=96, temperature=0.0, batch_size=32,
                       raw=True, progress="base, Q&A format")
    families: dict[str, list[float]] = defaultdict(list)
    for task, out in zip(tasks, outputs):
        families[task.family].append(score(task, out["text"].split("\n\n")[0].strip(), True).gold)
    gold = sum(sum(v) for v in families.values()) / len(tasks)
    print(f"{args.model}: gold {gold:.3f} on {len(tasks)} test prompts in the Q&A-page format (cut at a blank line)")
    for name in (f for f in FAMILIES if f in families):
        print(f"  {name:<18}{sum(families[name]) / len(families[name]):.2f}")


if __name__ == "__main__":
    run(main)
