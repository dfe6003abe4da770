"""`posttrain data check`: the data doctor. Shows what the loss will see before anything trains.

Reports the detected format, example count, token-length percentiles, truncated and dropped examples
with reasons, trained-token totals (for preference pairs: over both sides, each rendered as prompt + response;
a pair with identical sides is counted as dropped), and renders examples with trained tokens highlighted (green in a
terminal, `[[...]]` elsewhere) and the prompt greyed. A file with no usable example is an error, after the
report. The caller loads the file and brings the tokenizer (`data/` never imports `posttrain.models`):
the CLI loads `--model`'s, or trains a stand-in on the file's text (`models.tiny.stand_in_tokenizer`).
"""

from __future__ import annotations

import json
import sys

from transformers import PreTrainedTokenizerBase

from posttrain.data.formats import Example
from posttrain.data.render import IGNORE, Renderer, render_all, render_pairs
from posttrain.data.types import Conversation, Preference, Unpaired
from posttrain.errors import UserError

GREEN, GREY, RESET = "\033[1;32m", "\033[2m", "\033[0m"


IDENTICAL = "identical chosen and rejected"


def as_conversations(examples: list) -> tuple[list[Conversation], int]:
    """Conversations to render: a preference pair gives both sides, prompt + chosen then prompt + rejected
    (`where` says which), unpaired rows their completion. A pair whose two sides are identical is left out
    (the preference recipes drop it); returns the conversations and how many pairs were left out so."""
    out, identical = [], 0
    for ex in examples:
        if isinstance(ex, Preference):
            if ex.chosen == ex.rejected:
                identical += 1
                continue
            out.append(Conversation(ex.prompt + ex.chosen, f"{ex.where} (chosen)"))
            out.append(Conversation(ex.prompt + ex.rejected, f"{ex.where} (rejected)"))
        elif isinstance(ex, Unpaired):
            out.append(Conversation(ex.prompt + ex.completion, ex.where))
        else:
            out.append(ex)
    return out, identical


def percentile(values: list[int], q: float) -> int:
    if not values:
        return 0
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def highlight(tokenizer, ids: list[int], labels: list[int], color: bool) -> str:
    """The example's text with trained spans marked."""
    out, span, trained = [], [], None
    for t, lab in zip(ids, labels):
        is_trained = lab != IGNORE
        if trained is not None and is_trained != trained:
            out.append(_mark(tokenizer.decode(span), trained, color))
            span = []
        span.append(t)
        trained = is_trained
    if span:
        out.append(_mark(tokenizer.decode(span), bool(trained), color))
    return "".join(out)


def _mark(text: str, trained: bool, color: bool) -> str:
    if color:
        return f"{GREEN if trained else GREY}{text}{RESET}"
    return f"[[{text}]]" if trained else text


def check(path: str, fmt: str, examples: list[Example], tokenizer: PreTrainedTokenizerBase, tokenizer_name: str,
          max_seq_len: int = 1024, show: int = 2) -> dict:
    """The report (see module docstring) as a dict on `examples` of format `fmt` loaded from `path`, rendered
    with `tokenizer` (shown as `tokenizer_name`); `rendered` holds the first `show` kept examples' tokens."""
    convs, identical = as_conversations(examples)
    renderer = Renderer(tokenizer, max_seq_len)
    rows, stats = render_all(convs, renderer)
    if identical:  # counted as the sequences they hold, like every other drop
        stats.dropped[IDENTICAL] += 2 * identical
    lengths = [len(r.input_ids) for r in rows]
    return {
        "file": path,
        "format": fmt,
        "tokenizer": tokenizer_name,
        "examples": len(examples),
        "sequences": len(convs) + 2 * identical,
        "kept": stats.kept,
        "dropped": sum(stats.dropped.values()),
        "dropped_reasons": dict(stats.dropped),
        "truncated": stats.truncated,
        "max_seq_len": max_seq_len,
        "trained_tokens": stats.trained_tokens,
        "total_tokens": stats.total_tokens,
        "trained_fraction": round(stats.trained_tokens / max(1, stats.total_tokens), 4),
        "length": {f"p{q}": percentile(lengths, q) for q in (50, 90, 99)} | {"max": max(lengths, default=0)},
        "rendered": _first_rendered(convs, renderer, min(show, stats.kept)),
        **_pair_counts(examples, renderer),
    }


def _pair_counts(examples: list, renderer: Renderer) -> dict:
    """For preference data: how many pairs the preference recipes train on, and why the others are left out
    (`render.render_pairs`, the rule they use: a pair goes when either side does)."""
    prefs = [ex for ex in examples if isinstance(ex, Preference)]
    if not prefs:
        return {}
    pairs, dropped = render_pairs(prefs, renderer)
    return {"pairs_kept": len(pairs), "pairs_dropped": sum(dropped.values()), "pairs_dropped_reasons": dict(dropped)}


def _first_rendered(convs: list[Conversation], renderer: Renderer, n: int) -> list[dict]:
    shown = []
    for c in convs:
        if len(shown) >= n:
            break
        r = renderer.render(c)
        if not isinstance(r, str):
            shown.append({"where": c.where, "input_ids": r.input_ids, "labels": r.labels})
    return shown


def run_check(path: str, fmt: str, examples: list[Example], tokenizer: PreTrainedTokenizerBase,
              tokenizer_name: str, max_seq_len: int = 1024, as_json: bool = False, show: int = 2) -> int:
    """Print the report (text, or JSON with `as_json`); then a `UserError` when no example is usable."""
    report = check(path, fmt, examples, tokenizer, tokenizer_name, max_seq_len, show)
    if as_json:
        print(json.dumps({k: v for k, v in report.items() if k != "rendered"}, indent=2))
    else:
        _print_report(report, tokenizer)
    if report["kept"] == 0:
        sys.stdout.flush()  # the report first, then the error line
        reasons = ", ".join(f"{n} {why}" for why, n in report["dropped_reasons"].items())
        raise UserError(f"{path}: no example is usable ({reasons})")
    return 0


def _print_report(report: dict, tok: PreTrainedTokenizerBase) -> None:
    max_seq_len = report["max_seq_len"]
    color = sys.stdout.isatty()
    print(f"file        {report['file']}  (format: {report['format']})")
    print(f"tokenizer   {report['tokenizer']}")
    seqs = f" ({report['sequences']} sequences: each pair's chosen and rejected)" \
        if report["sequences"] != report["examples"] else ""
    print(f"examples    {report['examples']}{seqs}  kept {report['kept']}  dropped {report['dropped']}"
          + "".join(f"\n              {n} {why}" for why, n in report["dropped_reasons"].items()))
    if "pairs_kept" in report:
        print(f"pairs       {report['pairs_kept']} trained on (dpo, rm), {report['pairs_dropped']} left out (a pair goes "
              "when either side does)" + "".join(f"\n              {n} {why}"
                                                for why, n in report["pairs_dropped_reasons"].items()))
    print(f"truncated   {report['truncated']} (longer than {max_seq_len} tokens; kept with their first tokens)")
    L = report["length"]
    print(f"tokens      p50 {L['p50']}  p90 {L['p90']}  p99 {L['p99']}  max {L['max']}")
    print(f"trained     {report['trained_tokens']} of {report['total_tokens']} tokens ({report['trained_fraction']:.1%})")
    legend = f"{GREEN}trained{RESET} {GREY}not trained{RESET}" if color else "[[trained]] not trained"
    for ex in report["rendered"]:
        print(f"\n--- {ex['where']}  ({legend})")
        print(highlight(tok, ex["input_ids"], ex["labels"], color))
