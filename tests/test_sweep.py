"""`posttrain sweep` on a tiny random Llama: a PPO sweep of beta=0,0.5 (2 steps each) puts each run in
OUT/beta=<value>/ with that beta in its config.yaml; sweep.json holds every logged step of each run with
sqrt_kl = sqrt(max(kl, 0)) and the run's own proxy and gold; report.html holds the example responses, escaped;
an interrupted sweep resumes the unfinished run only, and a rerun of a finished sweep trains nothing; bad input
is one line and exit 2 before any run starts."""

from __future__ import annotations

import html
import json
import math

import pytest
import yaml
from conftest import cli_fails, read_metrics

from posttrain import sweep
from posttrain.recipes import ppo

pytestmark = pytest.mark.usefixtures("one_thread")

# tests/test_ppo.py's BASE, 2 steps
BASE = ["batch_size=6", "mini_batch_size=3", "ppo_epochs=2", "max_steps=2", "max_new_tokens=12", "prompts.pool=12",
        "optim.lr=1e-3", "optim.warmup_steps=0", "micro_batch_size=6", "max_seq_len=256", "log_samples=100",
        "rewards=[grpo_rewards:letters]"]


def argv(model_dir, out, *extra) -> list[str]:
    return ["ppo", "beta=0,0.5", f"model={model_dir}", *BASE, "save_every=1", "--out", str(out), *extra]


def test_a_sweep_runs_each_value_resumes_and_reports(model_dir, tmp_path, monkeypatch, capsys):
    from posttrain.recipes import common

    out = tmp_path / "sweep"
    calls, real, real_check = [], ppo.main, common.check_finite

    def interrupted(value, step, ckpt_dir):   # the second run (beta=0.5) is killed in its step 2
        if calls[-1] == 0.5 and step == 2:
            raise KeyboardInterrupt
        real_check(value, step, ckpt_dir)

    monkeypatch.setattr(ppo, "main", lambda cfg: calls.append(cfg.beta) or real(cfg))
    monkeypatch.setattr(common, "check_finite", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep.sweep_main(argv(model_dir, out))
    assert calls == [0.0, 0.5] and not (out / "sweep.json").exists()
    assert (out / "beta=0" / "result.json").exists() and not (out / "beta=0.5" / "result.json").exists()
    assert (out / "beta=0.5" / "checkpoints").exists()      # step 1's checkpoint (save_every=1)
    first = (out / "beta=0" / "result.json").stat().st_mtime_ns

    monkeypatch.setattr(common, "check_finite", real_check)
    calls.clear()
    from posttrain.cli import run as cli_run

    assert cli_run(["sweep", *argv(model_dir, out)]) == 0      # through the command line: resumes beta=0.5 only
    assert calls == [0.5] and (out / "beta=0" / "result.json").stat().st_mtime_ns == first

    for value in (0.0, 0.5):
        run_dir = out / f"beta={value:g}"
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["beta"] == value
        assert (run_dir / "result.json").exists()
    data = json.loads((out / "sweep.json").read_text())
    assert data["key"] == "beta" and [r["value"] for r in data["runs"]] == [0.0, 0.5]
    for r in data["runs"]:
        metrics = read_metrics(out / r["label"])
        assert [s["step"] for s in r["steps"]] == [m["step"] for m in metrics] == [1, 2]
        for s, m in zip(r["steps"], metrics):
            assert s["kl"] == m["objective/kl"] and s["sqrt_kl"] == math.sqrt(max(m["objective/kl"], 0.0))
            assert s["proxy"] == m["objective/scores"] and s["gold"] == m["gold"]
        assert r["final"] == r["steps"][-1] and r["finished"]
        assert r["summary"]["proxy_final"] == pytest.approx(sum(m["objective/scores"] for m in metrics) / 2)
    assert data["runs"][0]["steps"][0]["kl"] == pytest.approx(0.0, abs=1e-6)   # step 1: the policy is the reference

    text = (out / "report.html").read_text()
    assert "data:image/png;base64," in text and "beta=0.5" in text
    for r in data["runs"]:
        rows = [json.loads(x) for x in (out / r["label"] / "samples.jsonl").read_text().splitlines()]
        for row in (rows[0], rows[-1]):                            # the first and the last step's samples
            for s in row["samples"]:
                assert f"<pre>{html.escape(s['response'], quote=True)}</pre>" in text
                assert f"<pre>{html.escape(s['prompt'], quote=True)}</pre>" in text

    # A finished sweep reruns nothing (main would fail) and rewrites its report; --report-only trains nothing.
    monkeypatch.setattr(ppo, "main", lambda cfg: pytest.fail("a finished run was trained again"))
    (out / "report.html").unlink()
    assert sweep.sweep_main(argv(model_dir, out)) == 0 and (out / "report.html").exists()
    assert sweep.sweep_main(argv(model_dir, out, "--report-only")) == 0
    assert json.loads((out / "sweep.json").read_text())["runs"] == data["runs"]
    # Another setting for the same folders is refused before anything runs.
    capsys.readouterr()
    assert "holds a run with other settings (optim.lr: 0.001 -> 0.002)" in cli_fails(
        capsys, ["sweep", *argv(model_dir, out), "optim.lr=2e-3"])


def test_the_summary_and_the_example_points():
    """Centred 5-step moving averages (fewer at the ends); gold peaks at step 4, where the example points' middle is."""
    gold = [0.0, 0.2, 0.6, 0.8, 0.6, 0.2, 0.0]
    steps = [{"step": i + 1, "kl": k, "sqrt_kl": math.sqrt(max(k, 0)), "proxy": i, "gold": g}
             for i, (k, g) in enumerate(zip([-0.01, 1, 4, 9, 16, 25, 36], gold))]
    assert sweep.moving_average([1, 2, 3, 4, 5, 6, 7]) == [2, 2.5, 3, 4, 5, 5.5, 6]
    s = sweep.summarize(steps)
    assert s["proxy_first"] == 1 and s["proxy_final"] == 5 and s["proxy_peak_step"] == 7
    assert s["gold_peak_step"] == 4 and s["gold_peak"] == pytest.approx(0.48)    # (.2 + .6 + .8 + .6 + .2) / 5
    assert s["gold_peak_sqrt_kl"] == pytest.approx(3.0)                          # (1 + 2 + 3 + 4 + 5) / 5
    assert s["gold_final"] == pytest.approx(0.8 / 3) and s["gold_final_minus_peak"] == pytest.approx(0.8 / 3 - 0.48)
    assert s["kl_final"] == 36 and s["sqrt_kl_final"] == 6                        # the last step, not smoothed
    # the raw steps of the two windows, (.6 .2 0) and (.2 .6 .8 .6 .2): variances 0.28/3 and 0.072
    assert s["gold_final_minus_peak_se"] == pytest.approx(math.sqrt(0.28 / 3 / 3 + 0.072 / 5))
    line = sweep.findings({"runs": [{"label": "beta=0", "summary": s}]})[0]
    assert line.startswith("beta=0: proxy 1.000 -> 5.000") and "final - peak -0.213 +- 0.213" in line
    assert line.endswith("gold ended within 2 s.e. of its peak")          # 7 noisy steps: a fall not told from noise
    clear = [{"step": i + 1, "kl": i, "sqrt_kl": i ** 0.5, "proxy": i, "gold": g + 0.01 * (-1) ** i}
             for i, g in enumerate([0.5] * 5 + [0.9] * 5 + [0.1] * 5)]
    verdict = sweep.findings({"runs": [{"label": "b", "summary": sweep.summarize(clear)}]})[0].split(": ")[-1]
    assert verdict == "the proxy rose while gold fell from its peak by more than 2 s.e."
    rising = sweep.summarize([{**x, "gold": x["step"] / 10} for x in steps])
    assert sweep.findings({"runs": [{"label": "b", "summary": rising}]})[0].endswith("gold ended at its peak")
    rows = [{"step": i + 1} for i in range(7)]
    assert sweep.example_points(rows, s) == [(0, "first step"), (3, "middle, where gold peaked"), (6, "last step")]


def test_bad_input_is_one_line_before_any_run(model_dir, tmp_path, capsys):
    out = tmp_path / "bad"

    def fails(*args) -> str:   # the recipe and the swept key first, then the settings, then the rest
        return cli_fails(capsys, ["sweep", *args[:2], f"model={model_dir}", *BASE, *args[2:], "--out", str(out)])

    assert fails("ppo", "beta=0.5") == f"error: {sweep.SWEEP_HINT}"
    assert "one key may have comma-separated values, got 2 (beta, vf_coef)" in fails("ppo", "beta=0,1",
                                                                                      "vf_coef=0.1,0.2")
    assert "unknown config key 'betta' (did you mean 'beta'?)" in fails("ppo", "betta=0,1")
    assert "unknown config key 'max_step' (did you mean 'max_steps'?)" in fails("ppo", "beta=0,1", "max_step=3")
    assert "config key 'beta': must be >= 0, got -1.0" in fails("ppo", "beta=0,-1")
    assert "unknown recipe 'ppx' (did you mean 'ppo'?)" in fails("ppx", "beta=0,1")
    assert "grpo is not supported: its kl is a per-token k3 mean" in fails("grpo", "beta=0,1")
    assert "name the recipe first" in cli_fails(capsys, ["sweep", "beta=0,1", f"model={model_dir}"])
    assert "beta=0, has an empty value" in fails("ppo", "beta=0,")
    assert "repeats a value" in fails("ppo", "beta=0,0")
    assert "output_dir is set by the sweep" in fails("ppo", "beta=0,1", "output_dir=x")
    assert "mini_batch_size=4 does not divide batch_size=6" in fails("ppo", "beta=0,1", "mini_batch_size=4")
    assert "unrecognized arguments: --bogus" in fails("ppo", "beta=0,1", "--bogus")
    assert "nothing to report" in fails("ppo", "beta=0,1", "--report-only")
    assert not out.exists()                                   # nothing ran, nothing was left behind
    assert sweep.sweep_main(["--help"]) == 0 and "posttrain sweep RECIPE KEY=V1,V2" in capsys.readouterr().out


def test_a_stopped_run_does_not_stop_the_others(model_dir, tmp_path, monkeypatch, capsys):
    """A run that raises TrainingDiverged: the next one still runs, the report is written, then exit code 3."""
    from posttrain.cli import main as cli_main
    from posttrain.errors import TrainingDiverged

    calls = []

    def diverges(cfg):
        calls.append(cfg.beta)
        raise TrainingDiverged(f"non-finite loss at step 1 (beta {cfg.beta})")

    monkeypatch.setattr(ppo, "main", diverges)
    out = tmp_path / "stopped"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["sweep", *argv(model_dir, out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 3 and calls == [0.0, 0.5]
    assert err[-1] == ("error: sweep: 2 run(s) stopped (beta=0: non-finite loss at step 1 (beta 0.0); beta=0.5: "
                       "non-finite loss at step 1 (beta 0.5)); the report shows how far they got")
    data = json.loads((out / "sweep.json").read_text())
    assert [(r["status"], r["steps"], r["summary"]) for r in data["runs"]] == [("not started", [], {})] * 2
    assert "no samples logged" in (out / "report.html").read_text()
