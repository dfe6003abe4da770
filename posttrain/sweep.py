"""`posttrain sweep`: one run of a recipe per value of one setting, then a report that sets them side by side.

    posttrain sweep ppo beta=0.01,0.1,1.0 [--config FILE] [key=value ...] [--out DIR] [--report-only]
    posttrain sweep ppo beta=0.01,0.1,1.0 --config configs/sweep_ppo.yaml --out runs/sweep_ppo_beta

- The first argument names the recipe (ppo). Exactly one key=value has comma-separated values: the swept key
  (any config key: beta, optim.lr, ...). The other key=values and --config (the recipe's own YAML config) apply to
  every run. A value in brackets (`prompts.families=[a,b]`) is a list, not a sweep.
- Before any run starts, each value's config is loaded and checked (`load_config`, the recipe's checks across
  fields, and the settings of a run already in its folder).
- Each run goes to OUT/<key>=<value>/ (the sweep sets output_dir; one in --config is replaced) and runs
  in-process with the recipe's `main(cfg)`, one after another. A rerun skips a finished run (result.json) and
  resumes an interrupted one (the recipe's own resume, from its newest checkpoint).
- A run stopped by `TrainingDiverged` (a non-finite loss, `max_kl`) does not stop the others: the report shows
  how far it got, and the sweep exits with code 3 after writing it.
- Then (or with --report-only, which trains nothing) OUT/sweep.json (per run: the swept value, per logged step
  step, kl, sqrt_kl, proxy, gold; the last step's values; a summary) and OUT/report.html: the proxy reward (what
  the run maximises) and the gold reward against sqrt(KL to the starting model), a table of first, final and
  peak values, what that measures, and example responses at the first, middle and last step and where gold
  peaked.

Only ppo: its `objective/kl` is the KL to the starting (SFT) model in nats per sample, summed over the response,
which is the x axis of Gao et al.'s overoptimisation curves. grpo's `kl` is a per-token k3 mean taken during the
update, and is not logged at all at beta=0, so its runs would not share that axis.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import importlib
import io
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from posttrain.config import load_config, result_diff
from posttrain.errors import TrainingDiverged, UserError, did_you_mean
from posttrain.io import atomic_write_json, check_writable

SMOOTH = 5  # logged steps in the centred moving average of the report's lines and summary values
SWEEP_HINT = "sweep: give one key with comma-separated values, e.g. beta=0.01,0.1,1.0"


@dataclass(frozen=True)
class Recipe:
    """What the sweep reads of a recipe: its config class, and the metrics.jsonl and samples.jsonl keys."""

    module: str
    config: str
    kl: str            # KL to the starting model, nats per sample
    proxy: str         # the reward the run maximises
    gold: str          # the world's gold of the step's samples
    score: str         # a sample's proxy score in samples.jsonl
    proxy_label: str
    kl_label: str


RECIPES = {
    "ppo": Recipe("posttrain.recipes.ppo", "PPOConfig", "objective/kl", "objective/scores", "gold", "score",
                  proxy_label="proxy: objective/scores (reward-model score - missing-EOS penalty)",
                  kl_label="objective/kl: the step's samples' KL to the starting model, nats per sample "
                           "(kl_estimator summed over the response)"),
}
NOT_SUPPORTED = {
    "grpo": "its kl is a per-token k3 mean taken during the update (not logged at beta=0), not the per-sample KL "
            "to the starting model that ppo logs",
}


@dataclass
class SweepRun:
    value: Any       # the swept key's value in the run's config
    text: str        # the value as given
    label: str       # key=value, also the run's folder name
    out: Path
    cfg: Any


# --- the command line --------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, as every posttrain error
        raise UserError(f"sweep: {message} (see posttrain sweep --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="posttrain sweep", add_help=False)
    p.add_argument("recipe", nargs="?")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--config")
    p.add_argument("--out")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--help", "-h", action="store_true")
    return p


def split_sweep(overrides: list[str]) -> tuple[str, list[str], list[str]]:
    """The swept key, its values (as given) and the other overrides."""
    swept, others = [], []
    for item in overrides:
        key, eq, value = item.partition("=")
        if eq and "," in value and not value.lstrip().startswith(("[", "{")):
            swept.append((key.strip(), value))
        else:
            others.append(item)
    if not swept:
        raise UserError(SWEEP_HINT)
    if len(swept) > 1:
        raise UserError(f"sweep: one key may have comma-separated values, got {len(swept)} "
                        f"({', '.join(k for k, _ in swept)}); give the others one value each")
    key, text = swept[0]
    values = [v.strip() for v in text.split(",")]
    if "" in values:
        raise UserError(f"sweep: {key}={text} has an empty value")
    if len(set(values)) < len(values):
        raise UserError(f"sweep: {key}={text} repeats a value")
    set_keys = [o.partition("=")[0].strip() for o in others]
    if "output_dir" in (key, *set_keys):
        raise UserError("sweep: output_dir is set by the sweep (OUT/<key>=<value>); give --out DIR instead")
    if key in set_keys:
        raise UserError(f"sweep: {key} is both swept ({key}={text}) and set once")
    return key, values, others


def _recipe(name: str | None) -> Recipe:
    if name in RECIPES:
        return RECIPES[name]
    if name in NOT_SUPPORTED:
        raise UserError(f"sweep: {name} is not supported: {NOT_SUPPORTED[name]}; sweep supports "
                        f"{', '.join(RECIPES)}")
    if name is None or "=" in name:
        raise UserError(f"sweep: name the recipe first, e.g. posttrain sweep ppo beta=0.01,0.1,1.0 "
                        f"(supported: {', '.join(RECIPES)})")
    raise UserError(f"sweep: unknown recipe '{name}'{did_you_mean(name, [*RECIPES, *NOT_SUPPORTED])}; sweep "
                    f"supports {', '.join(RECIPES)}")


def _label(key: str, value: str) -> str:
    return f"{key}={re.sub(r'[^A-Za-z0-9._+:-]', '_', value)}"


def _get(cfg: Any, key: str) -> Any:
    """The value of dotted `key` in `cfg` (a section's primary field for a section: `model` -> model.path)."""
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    primary = getattr(value, "PRIMARY", None) if dataclasses.is_dataclass(value) else None
    return getattr(value, primary) if primary else value


def plan(spec: Recipe, key: str, values: list[str], config_file: str | None, others: list[str],
         out: Path) -> list[SweepRun]:
    """Every run's config, loaded and checked; a folder holding a run with other settings is refused."""
    from posttrain.recipes.common import RUN_FILES

    module = importlib.import_module(spec.module)
    cls = getattr(module, spec.config)
    runs = []
    for text in values:
        label = _label(key, text)
        cfg = load_config(cls, config_file, [*others, f"{key}={text}", f"output_dir={out / label}"])
        if not cfg.resume:
            raise UserError(f"sweep: resume=false is not supported (a rerun of the sweep resumes its runs); remove "
                            f"{out / label} to train that run again")
        check = getattr(module, "check_settings", None)
        if check is not None:
            check(cfg)
        runs.append(SweepRun(_get(cfg, key), text, label, out / label, cfg))
    if len({r.label for r in runs}) < len(runs):
        raise UserError(f"sweep: two values of {key} give the same folder name; give values that differ in "
                        "letters, digits or . _ + : -")
    for r in runs:
        saved = r.out / "config.yaml"
        earlier = [f for f in RUN_FILES if (r.out / f).exists()]
        if earlier and not saved.exists():
            raise UserError(f"sweep: {r.out} holds a run ({', '.join(earlier)}) without its config.yaml; use "
                            "another --out, or remove that folder")
        diff = result_diff(yaml.safe_load(saved.read_text()) or {}, r.cfg) if saved.exists() else []
        if diff:
            raise UserError(f"sweep: {r.out} holds a run with other settings ({'; '.join(diff)}); use another "
                            "--out, or remove that folder")
    return runs


def run_all(spec: Recipe, runs: list[SweepRun]) -> list[str]:
    """Run every unfinished run, one after another; returns what stopped a run (a TrainingDiverged), one line
    each."""
    main = importlib.import_module(spec.module).main
    stopped = []
    for i, r in enumerate(runs, 1):
        if (r.out / "result.json").exists():
            print(f"sweep: run {i} of {len(runs)}: {r.label} finished already ({r.out}/result.json); skipped")
            continue
        how = "resuming" if (r.out / "config.yaml").exists() else "starting"
        print(f"sweep: run {i} of {len(runs)}: {r.label}, {how} in {r.out}")
        try:
            main(r.cfg)
        except TrainingDiverged as e:
            print(f"sweep: {r.label} stopped: {e}; the other runs go on")
            stopped.append(f"{r.label}: {e}")
    return stopped


def sweep_main(argv: list[str]) -> int:
    args = _parser().parse_intermixed_args(argv)
    if args.help:
        print(f"usage: posttrain sweep RECIPE KEY=V1,V2,... [--config FILE] [key=value ...] [--out DIR] "
              f"[--report-only]\n\n{__doc__.strip()}")
        return 0
    spec = _recipe(args.recipe)
    key, values, others = split_sweep(args.overrides)
    out = Path(args.out or f"runs/sweep_{args.recipe}_{key}")
    check_writable(out, "--out", folder=True)
    runs = plan(spec, key, values, args.config, others, out)
    stopped = [] if args.report_only else run_all(spec, runs)
    if args.report_only and not any((r.out / "metrics.jsonl").exists() for r in runs):
        raise UserError(f"sweep: nothing to report in {out}: no run of {key}={','.join(values)} has logged a step "
                        "(run it without --report-only)")
    if int(os.environ.get("RANK", "0")) == 0:
        data = collect(spec, runs, {"recipe": args.recipe, "key": key, "values": values, "config": args.config,
                                    "overrides": others, "out": str(out)})
        atomic_write_json(out / "sweep.json", data)
        write_sweep_report(out / "report.html", spec, data)
        for line in findings(data):
            print(f"sweep: {line}")
        print(f"sweep: {out / 'report.html'} and {out / 'sweep.json'} written")
    if stopped:
        raise TrainingDiverged(f"sweep: {len(stopped)} run(s) stopped ({'; '.join(stopped)}); the report shows "
                               "how far they got")
    return 0


# --- what the runs measured --------------------------------------------------------------------------------------


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def moving_average(xs: list[float], window: int = SMOOTH) -> list[float]:
    """Centred moving average over `window` points (fewer at the ends)."""
    h = window // 2
    return [sum(xs[max(0, i - h):i + h + 1]) / len(xs[max(0, i - h):i + h + 1]) for i in range(len(xs))]


def _window(xs: list[float], i: int, window: int = SMOOTH) -> list[float]:
    h = window // 2
    return xs[max(0, i - h):i + h + 1]


def _se_of_difference(a: list[float], b: list[float]) -> float | None:
    """Standard error of mean(a) - mean(b) from the spread within each (None when either has one point)."""
    if len(a) < 2 or len(b) < 2:
        return None

    def var(x: list[float]) -> float:
        m = sum(x) / len(x)
        return sum((v - m) ** 2 for v in x) / (len(x) - 1)

    return math.sqrt(var(a) / len(a) + var(b) / len(b))


def summarize(steps: list[dict]) -> dict:
    """First, final and peak values of the smoothed proxy and gold (moving averages over SMOOTH logged steps),
    where gold peaked, how far it ended below its peak (with a standard error from the raw steps of the two
    windows), and the KL of the last logged step (not smoothed)."""
    if not steps:
        return {}
    proxy, gold = [s["proxy"] for s in steps], [s["gold"] for s in steps]
    ps, gs, xs = moving_average(proxy), moving_average(gold), moving_average([s["sqrt_kl"] for s in steps])
    ip, ig = max(range(len(ps)), key=ps.__getitem__), max(range(len(gs)), key=gs.__getitem__)
    last = len(steps) - 1
    return {
        "proxy_first": ps[0], "proxy_final": ps[-1], "proxy_peak": ps[ip], "proxy_peak_step": steps[ip]["step"],
        "gold_first": gs[0], "gold_final": gs[-1], "gold_peak": gs[ig], "gold_peak_step": steps[ig]["step"],
        "gold_peak_sqrt_kl": xs[ig], "gold_final_minus_peak": gs[-1] - gs[ig],
        "gold_final_minus_peak_se": None if ig == last else _se_of_difference(_window(gold, last), _window(gold, ig)),
        "kl_final": steps[-1]["kl"], "sqrt_kl_final": steps[-1]["sqrt_kl"],
    }


def _status(r: SweepRun, steps: list[dict], result: dict | None) -> str:
    if result is not None:
        return f"finished ({result['steps']} steps)"
    if not (r.out / "config.yaml").exists():
        return "not started"
    total = f" of {r.cfg.max_steps}" if r.cfg.max_steps else ""
    return f"not finished: {steps[-1]['step'] if steps else 0}{total} steps logged"


def collect(spec: Recipe, runs: list[SweepRun], header: dict) -> dict:
    """sweep.json: the sweep's settings, and per run its value, status, logged steps, last step and summary."""
    out = []
    for r in runs:
        steps = []
        for m in _jsonl(r.out / "metrics.jsonl"):
            if all(isinstance(m.get(k), (int, float)) for k in (spec.kl, spec.proxy, spec.gold)):
                steps.append({"step": m["step"], "kl": m[spec.kl], "sqrt_kl": math.sqrt(max(m[spec.kl], 0.0)),
                              "proxy": m[spec.proxy], "gold": m[spec.gold],
                              **({"beta": m["beta"]} if "beta" in m else {})})
        result = json.loads((r.out / "result.json").read_text()) if (r.out / "result.json").exists() else None
        out.append({"value": r.value, "label": r.label, "dir": str(r.out), "status": _status(r, steps, result),
                    "finished": result is not None, "steps": steps, "final": steps[-1] if steps else None,
                    "summary": summarize(steps)})
    return {**header, "smooth": SMOOTH, "metrics": {"kl": spec.kl, "proxy": spec.proxy, "gold": spec.gold},
            "runs": out}


def findings(data: dict) -> list[str]:
    """One sentence per run with a logged step: the numbers of the summary, and whether gold ended below its
    peak by more than two standard errors while the proxy rose."""
    lines = []
    for run in data["runs"]:
        s = run["summary"]
        if not s:
            lines.append(f"{run['label']}: no step logged yet")
            continue
        se = s["gold_final_minus_peak_se"]
        drop = s["gold_final_minus_peak"]
        fell = se is not None and drop < -2 * se
        rose = s["proxy_final"] > s["proxy_first"]
        verdict = ("the proxy rose while gold fell from its peak by more than 2 s.e." if fell and rose else
                   "gold fell from its peak by more than 2 s.e. and the proxy did not rise" if fell else
                   "gold ended at its peak" if se is None and drop == 0 else
                   "gold ended within 2 s.e. of its peak" if se is not None else
                   "too few steps to tell a fall of gold from noise")
        lines.append(f"{run['label']}: proxy {s['proxy_first']:.3f} -> {s['proxy_final']:.3f} (peak "
                     f"{s['proxy_peak']:.3f} at step {s['proxy_peak_step']}); gold {s['gold_first']:.3f} -> "
                     f"{s['gold_final']:.3f} (peak {s['gold_peak']:.3f} at step {s['gold_peak_step']}, sqrt KL "
                     f"{s['gold_peak_sqrt_kl']:.2f}; final - peak {drop:+.3f}"
                     f"{f' +- {se:.3f}' if se is not None else ''}); KL {s['kl_final']:.2f} nats at the last step: "
                     f"{verdict}")
    return lines


# --- the report ----------------------------------------------------------------------------------------------------


def plot_sweep(spec: Recipe, runs: list[dict]) -> bytes:
    """PNG bytes: two panels, proxy and gold against sqrt KL; one colour per run; faint points for the logged
    steps, a line through their moving averages (of both coordinates, in step order), a dot at the last."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11.5, 4.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, 2, i) for i in (1, 2)]
    for i, run in enumerate(r for r in runs if r["steps"]):
        color, steps = f"C{i % 10}", run["steps"]
        x = [s["sqrt_kl"] for s in steps]
        for ax, key in zip(axes, ("proxy", "gold")):
            y = [s[key] for s in steps]
            ax.scatter(x, y, s=9, alpha=0.25, color=color, linewidths=0)
            xs, ys = moving_average(x), moving_average(y)
            ax.plot(xs, ys, color=color, linewidth=1.6, label=run["label"])
            ax.plot(xs[-1:], ys[-1:], "o", color=color, markersize=4)
    for ax, title, ylabel in zip(axes, ("proxy reward (what the run maximises)", "gold reward (the world's score)"),
                                 (spec.proxy_label, "gold")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("sqrt(KL to the starting model), KL in nats per sample")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
    if any(r["steps"] for r in runs):
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _f(x: float | None, digits: int = 3) -> str:
    return "&ndash;" if x is None else f"{x:.{digits}f}"


def runs_table(runs: list[dict]) -> str:
    head = ["run", "status", "proxy first", "proxy final", "proxy peak (step)", "gold first", "gold final",
            "gold peak (step, sqrt KL)", "gold final - peak (s.e.)", "KL, last step (nats)", "sqrt KL, last step"]
    rows = []
    for run in runs:
        s = run["summary"]
        if not s:
            cells = ["&ndash;"] * (len(head) - 2)
        else:
            se = s["gold_final_minus_peak_se"]
            cells = [_f(s["proxy_first"]), _f(s["proxy_final"]),
                     f"{_f(s['proxy_peak'])} ({s['proxy_peak_step']})", _f(s["gold_first"]), _f(s["gold_final"]),
                     f"{_f(s['gold_peak'])} ({s['gold_peak_step']}, {_f(s['gold_peak_sqrt_kl'], 2)})",
                     f"{s['gold_final_minus_peak']:+.3f}" + (f" ({se:.3f})" if se is not None else ""),
                     _f(s["kl_final"], 2), _f(s["sqrt_kl_final"], 2)]
        rows.append(f"<tr><th>{_e(run['label'])}</th><td>{_e(run['status'])}</td>"
                    + "".join(f'<td class="num">{c}</td>' for c in cells) + "</tr>")
    return "<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>"


def example_points(samples: list[dict], summary: dict) -> list[tuple[int, str]]:
    """(index into `samples`, why) for the first, middle and last logged sample step and the one nearest to
    where smoothed gold peaked, in step order, each once."""
    if not samples:
        return []
    steps = [row["step"] for row in samples]
    picks: dict[int, list[str]] = {}
    for i, why in ((0, "first step"), (len(samples) // 2, "middle"), (len(samples) - 1, "last step")):
        picks.setdefault(i, []).append(why)
    if summary:
        peak = min(range(len(steps)), key=lambda i: abs(steps[i] - summary["gold_peak_step"]))
        picks.setdefault(peak, []).append("where gold peaked")
    return [(i, ", ".join(picks[i])) for i in sorted(picks)]


def examples_html(spec: Recipe, run: dict) -> str:
    samples = [row for row in _jsonl(Path(run["dir"]) / "samples.jsonl") if row.get("samples")]
    if not samples:
        return '<p class="meta">no samples logged (log_samples=0, or no step done yet)</p>'
    by_step = {s["step"]: s for s in run["steps"]}
    parts = []
    for i, why in example_points(samples, run["summary"]):
        row = samples[i]
        m = by_step.get(row["step"])
        where = (f": sqrt KL {m['sqrt_kl']:.2f}, proxy {m['proxy']:.3f}, gold {m['gold']:.3f} (the step's means)"
                 if m else "")
        parts.append(f"<h3>step {row['step']} ({_e(why)}){where}</h3>")
        cells = "".join(f"<tr><td>{_e(s.get('family', ''))}</td><td><pre>{_e(s.get('prompt', ''))}</pre></td>"
                        f"<td><pre>{_e(s.get('response', ''))}</pre></td>"
                        f'<td class="num">{_f(s.get(spec.score))}</td><td class="num">{_f(s.get("gold"))}</td></tr>'
                        for s in row["samples"])
        parts.append('<table class="probes"><tr><th style="width:8%">family</th><th style="width:30%">prompt</th>'
                     f'<th>response</th><th style="width:7%">proxy</th><th style="width:7%">gold</th></tr>{cells}'
                     "</table>")
    return "\n".join(parts)


def write_sweep_report(path: Path, spec: Recipe, data: dict) -> None:
    """OUT/report.html: the figure, the table, what it measures, example responses per run, the settings."""
    from posttrain.report.html import Section, png_html, write_report

    runs = data["runs"]
    key = data["key"]
    sections = [
        Section("Proxy and gold against KL", png_html(plot_sweep(spec, runs), "proxy and gold against sqrt KL"),
                note=f"x: sqrt of {spec.kl_label}, clipped at 0 (a batch estimate can be slightly negative). Points: "
                     f"every logged step; lines: centred moving averages over {data['smooth']} logged steps (of "
                     "both coordinates, in step order; fewer at the ends), a dot at the last step. Left: "
                     f"{spec.proxy_label}; right: gold, the world's mean score of the same samples."),
        Section("Runs", runs_table(runs),
                note=f"First, final and peak proxy and gold are of the {data['smooth']}-step moving averages (KL: "
                     "the last logged step, as result.json has it). The s.e. of "
                     "gold final - peak is from the raw steps in the two windows; the peak is the maximum, so the "
                     "difference leans below 0 even without a fall."),
        Section("What we measure", "<ul>" + "".join(f"<li>{_e(line)}</li>" for line in findings(data)) + "</ul>"),
    ]
    sections += [Section(f"Example responses: {run['label']}", examples_html(spec, run),
                         note="Samples of the step as samples.jsonl logged them (log_samples a step), their proxy "
                              "score and gold.")
                 for run in runs]
    settings = [("recipe", data["recipe"]), ("swept key", key), ("values", ", ".join(data["values"])),
                ("--config", data["config"] or "none"), ("other settings", " ".join(data["overrides"]) or "none")]
    settings += [(run["label"], run["dir"]) for run in runs]
    sections.append(Section("Settings", "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>"
                                                             for k, v in settings) + "</table>"))
    title = f"posttrain sweep: {data['recipe']}, {key} = {', '.join(data['values'])}"
    write_report(path, title, sections)
