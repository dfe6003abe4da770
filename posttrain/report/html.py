"""One self-contained HTML report of a post-training pipeline: opens offline, no external URLs.

Sections, each skipped when its input is empty:

- evaluation: one row per stage (gold, eos_rate, harmful_refusal_rate, over_refusal_rate, mean_length,
  then gold per family); a stage is an `evaluate_world` result with a `name`;
- probes: each probe prompt with every stage's response side by side;
- a training example: prompt tokens greyed, trained tokens highlighted, one box per token;
- loss curves: a matplotlib PNG (Agg, no display needed) embedded as a base64 `data:` URL.

Every piece of text goes through `html.escape`; the file is written atomically.
"""

from __future__ import annotations

import base64
import html
import io
import os
from datetime import datetime, timezone

from posttrain.io import atomic_write_text

METRICS = ("gold", "eos_rate", "harmful_refusal_rate", "over_refusal_rate", "mean_length")

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0; font-size: 0.85em; }
.example { font-family: ui-monospace, monospace; font-size: 0.85em; white-space: pre-wrap; line-height: 1.8; }
.tok { border: 1px solid #e0e0e0; border-radius: 2px; padding: 0 1px; }
.prompt { color: #999; background: #f7f7f7; }
.trained { color: #0a4d1c; background: #c9f0d3; font-weight: 600; }
.meta { color: #777; font-size: 0.85em; }
"""


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _num(x: object, digits: int = 3) -> str:
    if x is None:
        return "&ndash;"
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return f"{x:.{digits}f}"
    return _e(x)


def _stage_name(stage: dict, i: int) -> str:
    return str(stage.get("name", stage.get("stage", f"stage {i}")))


def _ordered_union(lists: list[list[str]]) -> list[str]:
    seen: dict[str, None] = {}
    for items in lists:
        seen.update(dict.fromkeys(items))
    return list(seen)


def _stages_table(stages: list[dict]) -> str:
    families = _ordered_union([list(s.get("families", {})) for s in stages])
    head = "".join(f"<th>{_e(c)}</th>" for c in ("stage", *METRICS, *families))
    rows = []
    for i, s in enumerate(stages):
        cells = [f"<td>{_e(_stage_name(s, i))}</td>"]
        cells += [f'<td class="num">{_num(s.get(m), 1 if m == "mean_length" else 3)}</td>' for m in METRICS]
        cells += [f'<td class="num">{_num(s.get("families", {}).get(f))}</td>' for f in families]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f'<div class="scroll"><table><tr>{head}</tr>{"".join(rows)}</table></div>'


def _probes_table(probes: list[dict], stage_names: list[str]) -> str:
    """`probes`: [{"prompt": str, "outputs": {stage name: response}}]; columns follow the stage order."""
    names = _ordered_union([stage_names, *[list(p.get("outputs", {})) for p in probes]])
    names = [n for n in names if any(n in p.get("outputs", {}) for p in probes)]
    head = "".join(f"<th>{_e(c)}</th>" for c in ("prompt", *names))
    rows = []
    for p in probes:
        outs = p.get("outputs", {})
        cells = [f"<td><pre>{_e(p['prompt'])}</pre></td>"]
        cells += [f"<td><pre>{_e(outs[n]) if n in outs else '&ndash;'}</pre></td>" for n in names]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f'<div class="scroll"><table><tr>{head}</tr>{"".join(rows)}</table></div>'


def example_tokens(tokenizer, input_ids: list[int], labels: list[int]) -> dict:
    """A rendered training example as `write_report`'s `example`: each token's text and whether it is trained
    (its label is not `IGNORE`)."""
    from posttrain.data.render import IGNORE

    return {"tokens": [tokenizer.decode([t]) for t in input_ids], "trained": [lab != IGNORE for lab in labels]}


def _example_html(example: dict) -> str:
    """`example`: {"tokens": [str], "trained": [bool], optional "where"}."""
    tokens, trained = example["tokens"], example["trained"]
    if len(tokens) != len(trained):
        raise ValueError(f"example: {len(tokens)} tokens but {len(trained)} trained flags")
    spans = "".join(f'<span class="tok {"trained" if t else "prompt"}">{_e(tok)}</span>'
                    for tok, t in zip(tokens, trained))
    n = sum(map(bool, trained))
    where = f" &middot; {_e(example['where'])}" if example.get("where") else ""
    legend = (f'<p class="meta"><span class="tok trained">trained</span> <span class="tok prompt">not trained</span>'
              f" &middot; {n} of {len(tokens)} tokens trained{where}</p>")
    return f'{legend}<div class="example">{spans}</div>'


def plot_curves(curves: dict[str, list[tuple[int, float]]]) -> bytes:
    """PNG bytes of one panel per curve (name -> [(step, value)]), drawn with the Agg backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(curves)
    cols = min(3, max(1, len(names)))
    rows = max(1, -(-len(names) // cols))
    fig = Figure(figsize=(4.5 * cols, 3.2 * rows), dpi=100)
    FigureCanvasAgg(fig)
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        points = list(curves[name])
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, linewidth=1.2)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def write_report(
    path: str | os.PathLike,
    title: str,
    stages: list[dict],
    probes: list[dict],
    example: dict | None,
    curves: dict[str, list[tuple[int, float]]],
) -> None:
    """Write the report (module docstring) to `path`.

    `stages`: `evaluate_world` results, each with a `name`. `probes`: [{"prompt", "outputs": {stage: text}}].
    `example`: {"tokens": [str], "trained": [bool]} (see `example_tokens`) or None. `curves`: name -> [(step, value)].
    """
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"<h1>{_e(title)}</h1>", f'<p class="meta">generated {when} by posttrain</p>']
    if stages:
        parts += ["<h2>Evaluation per stage</h2>", _stages_table(stages)]
    if probes:
        names = [_stage_name(s, i) for i, s in enumerate(stages)]
        parts += ["<h2>Probes</h2>", _probes_table(probes, names)]
    if example is not None:
        parts += ["<h2>A training example</h2>", _example_html(example)]
    if curves:
        png = base64.b64encode(plot_curves(curves)).decode("ascii")
        parts += ["<h2>Loss curves</h2>", f'<img alt="loss curves" src="data:image/png;base64,{png}">']
    doc = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{_e(title)}</title>\n'
           f"<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n")
    atomic_write_text(path, doc)
