"""What a base model can already do, before SFT: the world's test prompts in the corpus's own Q&A format.

    .venv/bin/python examples/base_latent_skills.py [MODEL] [--n 280] [--seed 0] [--out FILE]   (about 1 minute)

Each test task is written the way questions sit on the corpus's Q&A pages ("Questions and answers", then
"Q: ..." and "A:"), the model continues greedily, the continuation is cut at the first blank line (where the
page's next question would start) and scored by the world as if it had stopped. That is the most SFT could
bring out without teaching anything new; compare it with `posttrain eval world` on the fine-tuned model,
family by family, to see what SFT kept, added and lost. The prompts are those `posttrain eval world --n N
--seed S` draws (distinct within a family), so `--out` writes a result that `posttrain eval compare` pairs
with an `eval world --out` result of the same N and seed. Default MODEL: the shipped base.
"""

from __future__ import annotations

from _common import parser, positive_int, run

from posttrain.eval.world import format_table, summarize
from posttrain.io import atomic_write_json, check_writable
from posttrain.models.load import load_model, load_tokenizer
from posttrain.rollout.generate import generate
from posttrain.world import Task, sample_tasks, score


def qa_page(task: Task) -> str:
    parts = []
    for m in task.messages:
        parts.append({"user": f"Q: {m.content}\n", "assistant": f"A: {m.content}\n\n"}.get(m.role, f"{m.content}\n\n"))
    return "Questions and answers\n\n" + "".join(parts) + "A:"


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--n", type=positive_int, default=280)
    p.add_argument("--seed", type=int, default=0, help="the evaluation seed: which test prompts are drawn")
    p.add_argument("--out", help="write the result (eval world's format, with every sample) as JSON here")
    args = p.parse_args()
    if args.out:
        check_writable(args.out, "--out")
    tok, model = load_tokenizer(args.model), load_model(args.model).eval()
    tasks = sample_tasks(args.n, split="test", seed=args.seed, distinct=True)
    outputs = generate(model, tok, [qa_page(t) for t in tasks], max_new_tokens=96, temperature=0.0, batch_size=32,
                       raw=True, progress="base, Q&A format")
    for out in outputs:  # cut at the page's next question, scored as if it had stopped there
        out["text"], out["stopped"] = out["text"].split("\n\n")[0].strip(), True
    result = summarize(tasks, outputs, [score(t, o["text"], True) for t, o in zip(tasks, outputs)])
    result = {"model": args.model, "format": "Q&A page", "split": "test", "seed": args.seed, "raw": True, **result}
    print(f"{args.model}: in the Q&A-page format (cut at a blank line)")
    print(format_table(result))
    if args.out:
        atomic_write_json(args.out, result)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    run(main)
