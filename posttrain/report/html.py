"""One self-contained HTML report: opens offline, no external URLs.

A report is a list of `Section`s (a title, an HTML body, an optional note), which the pipeline's stages
contribute (`pipeline.SECTIONS`). This module holds the renderers they use:

- `eval_table`: the evaluation, families as rows and models as columns (so it reads without horizontal
  scrolling however many families there are): the headline `eval.world.METRICS` with their intervals, then
  gold per family with its distinct-prompt count;
- `differences_table`: paired differences with their intervals (`eval.world.compare`);
- `probes_table`: each probe prompt with every model's response side by side;
- `example_html`: a training example, prompt tokens greyed, trained tokens highlighted, one box per token;
- `curves_html`: training curves as a matplotlib PNG (Agg, no display needed) embedded as a base64 `data:`
  URL; a curve with a single point is shown as a number instead.

Every piece of text goes through `html.escape`; the file is written atomically.
"""

from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import dataclass
from datetime import datetime, timezone

from posttrain.eval.world import METRICS
from posttrain.io import atomic_write_text


@dataclass
class Section:
    """One part of a report: a heading, its HTML body, and an optional note shown under the heading."""

    title: str
    body: str
    note: str = ""

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; } .ci { color: #777; font-size: 0.85em; }
tr.group th { text-align: left; background: #fafafa; } tr th:first-child { text-align: left; }
table.probes { table-layout: fixed; width: 100%; }
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


def _ordered_union(lists: list[list[str]]) -> list[str]:
    seen: dict[str, None] = {}
    for items in lists:
        seen.update(dict.fromkeys(items))
    return list(seen)


def _ci(ci: list[float] | None, digits: int = 3) -> str:
    return "" if ci is None else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def eval_table(evals: dict[str, dict]) -> str:
    """`evals`: model name -> `evaluate_world` result. One column per model; one row per headline metric
    (value, then its interval in grey), then one row per family (gold and interval; the family's distinct
    prompts in the row label)."""
    names = list(evals)
    head = "<tr><th></th>" + "".join(f"<th>{_e(n)}</th>" for n in names) + "</tr>"
    rows = []
    for m in METRICS:
        cells = []
        for n in names:
            r = evals[n]
            ci = f'<br><span class="ci">{_e(_ci(r.get(m.ci), m.digits))}</span>' if m.ci and r.get(m.ci) else ""
            cells.append(f'<td class="num">{_num(r.get(m.key), m.digits)}{ci}</td>')
        better = f" ({m.better} is better)" if m.better else ""
        rows.append(f"<tr><th>{_e(m.label)}<span class=\"meta\">{_e(better)}</span></th>{''.join(cells)}</tr>")
    families = _ordered_union([list(r.get("families", {})) for r in evals.values()])
    if families:
        rows.append(f'<tr class="group"><th colspan="{len(names) + 1}">gold per family</th></tr>')
    for f in families:
        distinct = next((r.get("family_distinct", {}).get(f) for r in evals.values() if f in r.get("family_distinct", {})), None)
        label = f"{f} ({distinct})" if distinct is not None else f
        cells = []
        for n in names:
            r = evals[n]
            ci = r.get("families_ci", {}).get(f)
            extra = f'<br><span class="ci">{_e(_ci(ci, 2))}</span>' if ci else ""
            cells.append(f'<td class="num">{_num(r.get("families", {}).get(f), 2)}{extra}</td>')
        rows.append(f"<tr><th>{_e(label)}</th>{''.join(cells)}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def differences_table(diffs: dict[str, dict]) -> str:
    """`diffs`: label ("sft - base") -> `eval.world.compare` result. One column per comparison; rows: all
    prompts (stratified by family), then each family: the difference of mean gold and its paired interval."""
    labels = list(diffs)
    head = "<tr><th></th>" + "".join(f"<th>{_e(label)}</th>" for label in labels) + "</tr>"

    def cell(d: dict | None) -> str:
        if d is None:
            return "<td>&ndash;</td>"
        return (f'<td class="num">{d["diff"]:+.3f}<br><span class="ci">[{d["lo"]:+.3f}, {d["hi"]:+.3f}]'
                "</span></td>")

    rows = ["<tr><th>all prompts</th>" + "".join(cell(diffs[k]) for k in labels) + "</tr>"]
    families = _ordered_union([list(d.get("families", {})) for d in diffs.values()])
    rows += [f"<tr><th>{_e(f)}</th>" + "".join(cell(diffs[k].get("families", {}).get(f)) for k in labels) + "</tr>"
             for f in families]
    return f"<table>{head}{''.join(rows)}</table>"


def simple_table(head: list[str], rows: list[list[object]], digits: int = 3) -> str:
    """A plain table: `head` as the header, each row's first cell as a row label, numbers to `digits` places
    (None as a dash)."""
    cells = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = []
    for row in rows:
        label, *rest = row
        tds = "".join(f'<td class="num">{_num(v, digits)}</td>' if not isinstance(v, str) else f"<td>{_e(v)}</td>"
                      for v in rest)
        body.append(f"<tr><th>{_e(label)}</th>{tds}</tr>")
    return f"<table><tr>{cells}</tr>{''.join(body)}</table>"


def png_html(png: bytes, alt: str) -> str:
    """PNG bytes as an inline image."""
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def probes_table(probes: list[dict]) -> str:
    """`probes`: [{"prompt": str, "outputs": {model name: response}}]; columns in the order the names first appear."""
    names = _ordered_union([list(p.get("outputs", {})) for p in probes])
    head = "".join(f"<th>{_e(c)}</th>" for c in ("prompt", *names))
    rows = []
    for p in probes:
        outs = p.get("outputs", {})
        cells = [f"<td><pre>{_e(p['prompt'])}</pre></td>"]
        cells += [f"<td><pre>{_e(outs[n]) if n in outs else '&ndash;'}</pre></td>" for n in names]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table class="probes"><tr>{head}</tr>{"".join(rows)}</table>'


def example_tokens(tokenizer, input_ids: list[int], labels: list[int]) -> dict:
    """A rendered training example as `write_report`'s `example`: each token's text and whether it is trained
    (its label is not `IGNORE`)."""
    from posttrain.data.render import IGNORE

    return {"tokens": [tokenizer.decode([t]) for t in input_ids], "trained": [lab != IGNORE for lab in labels]}


def example_html(example: dict) -> str:
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


def plot_family_changes(diffs: dict[str, dict]) -> bytes:
    """PNG bytes of a horizontal bar chart: per family, each comparison's paired gold difference (`diffs`:
    label -> `eval.world.compare` result) with its 95% interval as an error bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = list(diffs)
    families = _ordered_union([list(d["families"]) for d in diffs.values()])
    fig = Figure(figsize=(7.5, 0.22 * len(families) * max(1, len(labels)) ** 0.5 + 1.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    height = 0.8 / max(1, len(labels))
    for j, label in enumerate(labels):
        fams = diffs[label]["families"]
        ys, xs, err = [], [], [[], []]
        for i, f in enumerate(families):
            if f in fams:
                d = fams[f]
                ys.append(i + (j - (len(labels) - 1) / 2) * height)
                xs.append(d["diff"])
                err[0].append(max(0.0, d["diff"] - d["lo"]))
                err[1].append(max(0.0, d["hi"] - d["diff"]))
        ax.barh(ys, xs, height=height, xerr=err, label=label, capsize=2, error_kw={"linewidth": 0.8})
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(families)), families, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("gold difference (paired, 95% interval)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def plot_gold_kl(points: dict[str, tuple[float, float, float, float]], bon: list[tuple[float, float]]) -> bytes:
    """PNG bytes: gold against KL to a reference. `points`: label -> (kl, kl_lo, kl_hi, gold), drawn as markers
    with horizontal error bars; `bon`: (kl, gold) of best-of-n at each n, drawn as a line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if bon:
        ax.plot([k for k, _ in bon], [g for _, g in bon], "o--", color="gray", label="best-of-n (its own prompts)")
    for label, (kl, lo, hi, gold) in points.items():
        ax.errorbar([kl], [gold], xerr=[[max(0.0, kl - lo)], [max(0.0, hi - kl)]], fmt="o", capsize=3, label=label)
    ax.set_xlabel("KL to the SFT model (nats per response)")
    ax.set_ylabel("gold")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def family_changes_html(diffs: dict[str, dict]) -> str:
    """The per-family chart of `plot_family_changes` as an inline image."""
    return png_html(plot_family_changes(diffs), "per-family gold differences")


def curves_html(curves: dict[str, list[tuple[int, float]]]) -> str:
    """Curves with two or more points as one PNG (a panel each); a curve with one point as a number."""
    many = {k: v for k, v in curves.items() if len(v) > 1}
    single = {k: v[0] for k, v in curves.items() if len(v) == 1}
    parts = []
    if single:
        items = "".join(f"<li>{_e(k)}: <b>{v:.4f}</b> at step {step}</li>" for k, (step, v) in single.items())
        parts.append(f"<ul>{items}</ul>")
    if many:
        png = base64.b64encode(plot_curves(many)).decode("ascii")
        parts.append(f'<img alt="training curves" src="data:image/png;base64,{png}">')
    return "\n".join(parts)


def write_report(path: str | os.PathLike, title: str, sections: list[Section]) -> None:
    """Write the report: the title, then each section (`Section`) in order, to `path` (atomically)."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"<h1>{_e(title)}</h1>", f'<p class="meta">generated {when} by posttrain</p>']
    for s in sections:
        parts.append(f"<h2>{_e(s.title)}</h2>")
        if s.note:
            parts.append(f'<p class="meta">{_e(s.note)}</p>')
        parts.append(f'<div class="scroll">{s.body}</div>')
    doc = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{_e(title)}</title>\n'
           f"<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n")
    atomic_write_text(path, doc)
