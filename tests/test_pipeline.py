"""`posttrain pipeline` end to end on a tiny model: the run folder, the summary, resuming without redoing stages."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import read_metrics

from posttrain import pipeline
from posttrain.config import load_config
from posttrain.errors import UserError
from posttrain.pipeline import PipelineConfig


def small(model_dir, out, *extra):
    return load_config(PipelineConfig, None, [f"base={model_dir}", f"output_dir={out}", "data.n=40", "sft.max_steps=2",
                                              "sft.batch_size=4", "sft.micro_batch_size=4", "eval.n=14",
                                              "eval.max_new_tokens=4", *extra])


def test_pipeline_run_folder_and_resume(model_dir, tmp_path):
    out = tmp_path / "p"
    summary = pipeline.main(small(model_dir, out))
    assert {"config.yaml", "data", "sft", "eval", "summary.json", "report.html"} <= {p.name for p in out.iterdir()}
    assert (out / "sft" / "model" / "config.json").exists()
    assert set(summary["stages"]) == {"base", "sft"}
    for r in summary["stages"].values():
        assert 0.0 <= r["gold"] <= 1.0 and len(r["families"]) == 14
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Is the earth flat?" in html

    # A second run finds every stage done and redoes none of them.
    stamps = {p: p.stat().st_mtime_ns for p in [out / "eval" / "base.json", out / "eval" / "sft.json",
                                                 out / "sft" / "model" / "model.safetensors"]}
    pipeline.main(small(model_dir, out))
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_pipeline_without_base_says_so(tmp_path, monkeypatch):
    from posttrain.models import load

    monkeypatch.setattr(load, "shipped_base", lambda: tmp_path / "none")
    with pytest.raises(UserError, match="set base=PATH"):
        pipeline.main(load_config(PipelineConfig, None, [f"output_dir={tmp_path / 'p'}"]))


def test_pipeline_interrupted_mid_sft_resumes_there(model_dir, tmp_path, monkeypatch):
    """Killed right after SFT's step-2 checkpoint, a rerun resumes SFT at step 2 and ends with the same
    weights as an uninterrupted pipeline; the data stage is not redone."""
    from posttrain.recipes import common

    whole = tmp_path / "whole"
    pipeline.main(small(model_dir, whole, "sft.max_steps=4", "sft.save_every=2"))

    out = tmp_path / "cut"
    save = common.save_checkpoint

    def save_then_die(ckpt_dir, step, *args, **kwargs):
        save(ckpt_dir, step, *args, **kwargs)
        raise KeyboardInterrupt
    monkeypatch.setattr(common, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pipeline.main(small(model_dir, out, "sft.max_steps=4", "sft.save_every=2"))
    assert not (out / "sft" / "model").exists() and (out / "sft" / "checkpoints" / "step-0000002").exists()
    data_stamp = (out / "data" / "sft_curated.jsonl").stat().st_mtime_ns

    monkeypatch.setattr(common, "save_checkpoint", save)
    pipeline.main(small(model_dir, out, "sft.max_steps=4", "sft.save_every=2"))
    assert (out / "data" / "sft_curated.jsonl").stat().st_mtime_ns == data_stamp
    records = [json.loads(x) for x in (out / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3, 4]  # none lost, none repeated
    assert ((out / "sft" / "model" / "model.safetensors").read_bytes()
            == (whole / "sft" / "model" / "model.safetensors").read_bytes())


def test_compare_noisy_added_to_a_finished_run_runs_only_the_new_stages(model_dir, tmp_path):
    out = tmp_path / "p"
    pipeline.main(small(model_dir, out))
    done = {p: p.stat().st_mtime_ns for p in [out / "eval" / "base.json", out / "eval" / "sft.json",
                                               out / "sft" / "model" / "model.safetensors", out / "sft" / "config.yaml"]}
    summary = pipeline.main(small(model_dir, out, "compare_noisy=true", "data.noisy_n=60"))
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())  # nothing that had finished ran again
    assert set(summary["stages"]) == {"base", "sft", "sft_noisy"}
    noisy = [json.loads(x) for x in (out / "data_noisy" / "sft_noisy.jsonl").read_text().splitlines()]
    assert len(noisy) == 60 and sum(r["world"]["flaw"] is not None for r in noisy) == 24
    assert (out / "sft_noisy" / "model" / "config.json").exists()
    assert set(summary["differences"]) == {"sft - base", "sft_noisy - base", "sft_noisy - sft"}
    assert "<th>sft_noisy</th>" in (out / "report.html").read_text()
    # the arena ran again for the new model, on the answers the evaluation kept
    board = json.loads((out / "arena" / "gold" / "leaderboard.json").read_text())
    assert {m["model"] for m in board["models"]} == {"base", "sft", "sft_noisy"}


def test_a_finished_stage_with_other_settings_is_refused_before_any_work(model_dir, tmp_path):
    out = tmp_path / "p"
    pipeline.main(small(model_dir, out))
    stamp = (out / "summary.json").stat().st_mtime_ns
    saved = (out / "config.yaml").read_text()
    for override, named in [("sft.optim.lr=1e-3", "stage 'sft' in"), ("eval.n=28", "stage 'eval' in"),
                            ("data.n=41", "stage 'data' in"), ("seed=1", "stage 'data' in")]:
        with pytest.raises(UserError) as e:
            pipeline.main(small(model_dir, out, override))
        key = override.split("=")[0].split(".", 1)[-1] if not override.startswith("seed") else "seed"
        assert named in str(e.value) and f"{key}: " in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert (out / "summary.json").stat().st_mtime_ns == stamp and (out / "config.yaml").read_text() == saved
    # What does not change a result may change: generation batch size, logging, threads.
    pipeline.main(small(model_dir, out, "eval.batch_size=7", "sft.log_every=3", "threads=1"))
    # resume=false starts the run over with the new settings.
    summary = pipeline.main(small(model_dir, out, "eval.n=28", "resume=false"))
    assert summary["stages"]["sft"]["family_counts"] == {f: 2 for f in summary["stages"]["sft"]["families"]}


def test_stages_runs_a_subset_and_needs_are_checked_first(model_dir, tmp_path):
    out = tmp_path / "p"
    with pytest.raises(UserError, match="'sft' needs data, which has not run"):
        pipeline.main(small(model_dir, out, "stages=sft,eval"))
    assert not out.exists()
    with pytest.raises(UserError, match=r"unknown stage 'evl' \(did you mean 'eval'\?\)"):
        pipeline.main(small(model_dir, out, "stages=data,evl"))
    with pytest.raises(UserError, match="needs compare_noisy=true|compare_noisy=true"):
        pipeline.main(small(model_dir, out, "stages=sft_noisy"))
    summary = pipeline.main(small(model_dir, out, "stages=data,eval"))  # no SFT: the base alone is evaluated
    assert set(summary["stages"]) == {"base"} and not (out / "sft").exists()
    first = summary["seconds"]
    assert set(first) == {"data", "eval"} and all(t >= 0 for t in first.values())
    summary = pipeline.main(small(model_dir, out, "stages=sft,eval"))  # data has run: SFT and its evaluation now
    assert set(summary["stages"]) == {"base", "sft"} and summary["steps"] == {"sft": 2}
    # Each stage's wall time of the run that made it: data is reused, so its time is the first run's.
    assert set(summary["seconds"]) == {"data", "sft", "eval"} and summary["seconds"]["data"] == first["data"]
    assert summary["seconds"]["sft"] > 0 and "Time per stage" in (out / "report.html").read_text()


def test_the_time_table_takes_stages_that_took_no_time():
    """On a fast machine a tiny run's stages can all round to 0.0 s: the table says so instead of dividing by 0."""
    from types import SimpleNamespace

    zero = pipeline.section_times(SimpleNamespace(results={"data": {"seconds": 0.0}, "eval": {"seconds": 0.0}}))
    assert "0.0 s in all" in zero.note and zero.body.count("<td>-</td>") == 2
    some = pipeline.section_times(SimpleNamespace(results={"data": {"seconds": 1.0}, "eval": {"seconds": 3.0}}))
    assert "25%" in some.body and "75%" in some.body


def test_stage_times_read_as_people_write_them():
    assert [pipeline._duration(t) for t in (5.04, 59.96, 119.5, 3599.6)] == [
        "5.0 s", "1 min 00 s", "2 min 00 s", "60 min 00 s"]


def test_sft_max_steps_zero_is_one_epoch_and_the_steps_are_recorded(model_dir, tmp_path):
    """40 examples, 5% held out (38 left), packed into rows of 256 tokens, batch 4: the steps one epoch takes."""
    out = tmp_path / "p"
    summary = pipeline.main(small(model_dir, out, "sft.max_steps=0", "stages=data,sft"))
    steps = summary["steps"]["sft"]
    rows = json.loads((out / "sft" / "result.json").read_text())["steps"]
    assert steps == rows and steps >= 1
    assert load_config(PipelineConfig, None, []).sft.epochs == 1.0


def test_pipeline_help_lists_the_stages_and_their_fields(capsys):
    from posttrain.cli import run

    assert run(["pipeline", "--help"]) == 0
    text = capsys.readouterr().out
    for name in ("data", "sft", "data_noisy", "sft_noisy", "eval"):
        assert f"\n  {name} " in text, name
    assert "  sft.optim.lr (float >= 0, default 0.0005):" in text and "  eval.seed (int >= 0, default 0):" in text
    assert "sft.model.path" not in text and "sft.output_dir" not in text


@pytest.mark.parametrize("case", ["missing", "no_tokenizer", "bad_key", "missing_config"])
def test_pipeline_bad_input_is_one_line_and_exit_2(model_dir, tmp_path, capsys, case):
    import shutil

    from posttrain.cli import main as cli_main

    out = tmp_path / "p"
    if case == "no_tokenizer":
        bare = tmp_path / "bare"
        bare.mkdir()
        shutil.copy(f"{model_dir}/config.json", bare / "config.json")
    args = {"missing": [f"base={tmp_path / 'nope'}"], "no_tokenizer": [f"base={tmp_path / 'bare'}"],
            "bad_key": [f"base={model_dir}", "sft.optim.lrr=1"],
            "missing_config": ["--config", str(tmp_path / "nope.yaml")]}[case]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["pipeline", *args, f"output_dir={out}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert {"missing": "is not a model folder", "no_tokenizer": "has no tokenizer", "bad_key": "did you mean 'sft.optim.lr'",
            "missing_config": "no such file"}[case] in err[0]
    assert not (out / "data").exists()  # nothing ran
    if case in ("missing", "no_tokenizer"):
        assert not out.exists()  # a bad base is found before the run folder is made


def fake_generate(monkeypatch) -> None:
    """Responses that give preference pairs on a random tiny model: sample 0 of a prompt is its reference,
    every other sample is "ok"."""
    import posttrain.rollout.generate as gen
    from posttrain.world import sample_tasks

    refs = {tuple((m.role, m.content) for m in t.messages): t.reference
            for split in ("train", "test") for seed in (0, 1) for t in sample_tasks(40, split, seed, distinct=True)}

    real = gen.generate

    def fake(model, tokenizer, prompts, n=1, **kw):
        if kw.get("return_logprobs"):   # the KL estimate's samples: the real loop
            return real(model, tokenizer, prompts, n=n, **kw)
        out = []
        for i, p in enumerate(prompts):
            key = tuple((m.role, m.content) for m in p) if isinstance(p, list) else None
            out += [{"text": refs.get(key, "ok") if s == 0 else "ok", "stopped": True, "ids": [1], "token_ids": [1],
                     "prompt_ids": [], "prompt_index": i, "sample_index": s} for s in range(n)]
        return out

    monkeypatch.setattr(gen, "generate", fake)


def test_preference_stages_make_pairs_and_train_dpo_from_sft(model_dir, tmp_path, monkeypatch):
    """prefs samples the SFT model on train prompts (faked here: a random tiny model's answers all score 0),
    labels pairs with the gold annotator, and dpo trains from the SFT model on them; both are evaluated and
    dpo is compared with sft."""
    fake_generate(monkeypatch)
    out = tmp_path / "p"
    summary = pipeline.main(small(model_dir, out, "preferences=true", "prefs.n_prompts=8", "prefs.k=2",
                                  "prefs.annotator=gold", "prefs.test_prompts=8", "rm.max_steps=2", "rm.batch_size=4",
                                  "rm.micro_batch_size=2", "bon.n=[1,2]", "bon.n_prompts=4", "bon.max_new_tokens=4",
                                  "dpo.max_steps=2", "dpo.batch_size=4", "dpo.micro_batch_size=2"))
    assert set(summary["stages"]) == {"base", "sft", "dpo"} and summary["steps"]["dpo"] == 2
    assert "dpo - sft" in summary["differences"] and "dpo - base" in summary["differences"]
    rows = [json.loads(x) for x in (out / "prefs" / "prefs.jsonl").read_text().splitlines()]
    assert rows and all(r["world"]["gold_chosen"] > r["world"]["gold_rejected"] for r in rows)
    from posttrain.recipes.dpo import DPOConfig

    cfg = load_config(DPOConfig, str(out / "dpo" / "config.yaml"))
    assert cfg.model.path == str(out / "sft" / "model") and cfg.data.path == str(out / "prefs" / "prefs.jsonl")
    html = (out / "report.html").read_text()
    assert "<th>dpo</th>" in html and "<th>dpo - sft</th>" in html
    assert "<h2>What each stage changed, per family</h2>" in html
    # rm trained on the train pairs and evaluated on the held-out test-split pairs; bon read its rewards.
    test_rows = [json.loads(x) for x in (out / "prefs" / "test.jsonl").read_text().splitlines()]
    assert test_rows and not {r["prompt"][-1]["content"] for r in test_rows} & {r["prompt"][-1]["content"] for r in rows}
    rm_cfg = yaml.safe_load((out / "rm" / "config.yaml").read_text())
    assert rm_cfg["data"]["eval_path"] == str(out / "prefs" / "test.jsonl") and rm_cfg["max_steps"] == 2
    bon = json.loads((out / "bon" / "bon.json").read_text())
    assert [r["n"] for r in bon["rows"]] == [1, 2] and bon["prompts"] == 4
    for title in ("Preference data", "Reward model", "Best-of-n", "Arena", "Judge bias"):
        assert f"<h2>{title}</h2>" in html, title
    # the arena: every two evaluated models on the evaluation's answers, judged by gold and by the reward model
    for judge in ("gold", "rm"):
        board = json.loads((out / "arena" / judge / "leaderboard.json").read_text())
        assert {m["model"] for m in board["models"]} == {"base", "sft", "dpo", "bon4"}, judge
        battles = (out / "arena" / judge / "battles.jsonl").read_text().splitlines()
        assert len(battles) == 6 * board["n_prompts"]  # every two of four entrants, on every prompt
    bon = json.loads((out / "arena" / "bon4.json").read_text())
    assert len(bon) == board["n_prompts"] and all(set(a) == {"text", "stopped"} for a in bon)
    gold = json.loads((out / "arena" / "gold" / "judge.json").read_text())
    assert gold["agreement"] == 1.0 and gold["swap_consistency"] == 1.0
    assert json.loads((out / "arena" / "rm" / "leaderboard.json").read_text())["judge"].startswith("rm:")
    bias = json.loads((out / "arena" / "judge_bias.json").read_text())
    assert {(x["model"], x["judge"]) for x in bias} == {
        (m, j) for m in ("base", "dpo", "bon4", "sft+padding")
        for j in ("gold", "annotator:fair", "annotator:length", "annotator:position")}


def test_two_dpo_rounds_add_the_first_dpo_models_pairs_and_train_dpo2_from_sft(model_dir, tmp_path, monkeypatch):
    """dpo_rounds=2: prefs2 samples the dpo model (on the next seed's train prompts), all.jsonl holds round 1's
    pairs followed by round 2's, and dpo2 trains from the SFT model (the reference) on all of them; dpo2 is
    evaluated and compared with sft."""
    fake_generate(monkeypatch)
    out = tmp_path / "p"
    summary = pipeline.main(small(model_dir, out, "preferences=true", "dpo_rounds=2", "prefs.n_prompts=8",
                                  "prefs.k=2", "prefs.annotator=gold", "prefs.test_prompts=4", "rm.max_steps=1",
                                  "rm.batch_size=2", "rm.micro_batch_size=2", "bon.n=[1]", "bon.n_prompts=2",
                                  "bon.max_new_tokens=4", "dpo.max_steps=2", "dpo.batch_size=4",
                                  "dpo.micro_batch_size=2", "arena.enabled=false"))
    assert set(summary["stages"]) == {"base", "sft", "dpo", "dpo2"} and summary["steps"]["dpo2"] == 2
    assert "dpo2 - sft" in summary["differences"]
    first = (out / "prefs" / "prefs.jsonl").read_text()
    second = (out / "prefs2" / "prefs.jsonl").read_text()
    assert first and second and (out / "prefs2" / "all.jsonl").read_text() == first + second
    done = json.loads((out / "prefs2" / "result.json").read_text())
    assert done["pairs"] == len(first.splitlines()) + len(second.splitlines()) == len(
        (out / "prefs2" / "all.jsonl").read_text().splitlines())
    assert yaml.safe_load((out / "prefs2" / "stage.yaml").read_text())["settings"]["policy"] == str(out / "dpo" / "model")
    from posttrain.recipes.dpo import DPOConfig

    cfg = load_config(DPOConfig, str(out / "dpo2" / "config.yaml"))
    assert cfg.model.path == str(out / "sft" / "model") and cfg.data.path == str(out / "prefs2" / "all.jsonl")
    assert "<th>dpo2 - sft</th>" in (out / "report.html").read_text()


def test_two_dpo_rounds_without_preferences_are_refused_before_any_work(model_dir, tmp_path):
    with pytest.raises(UserError, match=r"config key 'dpo_rounds': 2 rounds of DPO need the preference stages"):
        pipeline.main(small(model_dir, tmp_path / "p", "dpo_rounds=2"))
    assert not (tmp_path / "p").exists()


def test_an_unknown_annotator_is_refused_before_any_work(model_dir, tmp_path):
    with pytest.raises(UserError, match=r"config key 'prefs.annotator': unknown annotator 'fiar' \(did you mean 'fair'"):
        pipeline.main(small(model_dir, tmp_path / "p", "preferences=true", "prefs.annotator=fiar"))
    assert not (tmp_path / "p").exists()


def test_rl_adds_a_grpo_stage_from_sft(model_dir, tmp_path):
    """rl=true trains grpo from the SFT model on the world's verifiable families; it is evaluated, compared with
    sft, and its reward curve is in the report."""
    out = tmp_path / "rl"
    summary = pipeline.main(small(model_dir, out, "rl=true", "grpo.max_steps=2", "grpo.batch_size=2",
                                  "grpo.group_size=2", "grpo.max_new_tokens=4", "grpo.prompts.pool=6"))
    assert set(summary["stages"]) == {"base", "sft", "grpo"} and summary["steps"]["grpo"] == 2
    assert "grpo - sft" in summary["differences"]
    cfg = yaml.safe_load((out / "grpo" / "config.yaml").read_text())
    assert cfg["model"]["path"] == str(out / "sft" / "model") and cfg["output_dir"] == str(out / "grpo")
    assert "<th>grpo</th>" in (out / "report.html").read_text()


def test_kl_to_sft_is_zero_for_sft_itself_and_the_report_plots_it(model_dir, tok, tmp_path):
    """The sequence KL of a model to itself is 0 (the sampler's log-probs and the reference's forward agree to
    1e-4 per response); a perturbed model is farther; the rl run's report has the gold-against-KL chart."""
    import torch

    from posttrain.eval.kl import kl_to_reference
    from posttrain.models.load import load_model

    prompts = ["hi", "What is 2 + 3?", "List 2 words."]
    model = load_model(str(model_dir))
    same = kl_to_reference(model, model, tok, prompts, max_new_tokens=8)
    assert abs(same["kl"]) < 1e-4 and same["prompts"] == 3
    noisy = load_model(str(model_dir))
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    assert kl_to_reference(noisy, model, tok, prompts, max_new_tokens=8)["kl"] > 0.1
    out = tmp_path / "klrun"
    pipeline.main(small(model_dir, out, "rl=true", "grpo.max_steps=1", "grpo.batch_size=2", "grpo.group_size=2",
                        "grpo.max_new_tokens=4", "grpo.prompts.pool=6", "eval.kl_prompts=3"))
    grpo_eval = json.loads((out / "eval" / "grpo.json").read_text())
    assert grpo_eval["kl_to_sft"]["prompts"] == 3
    assert "<h2>Gold against KL to the SFT model</h2>" in (out / "report.html").read_text()


def test_rl_with_preferences_adds_a_ppo_stage_rewarded_by_the_reward_model(model_dir, tmp_path, monkeypatch):
    """With preferences=true, rl=true also trains ppo from the SFT model with the rm stage's reward model as its
    reward (and its value model's start); it is evaluated, compared with sft, placed on the gold-KL chart."""
    fake_generate(monkeypatch)   # the prefs stage's samples; ppo samples through the real loop
    out = tmp_path / "ppo"
    summary = pipeline.main(small(model_dir, out, "preferences=true", "rl=true", "prefs.n_prompts=8", "prefs.k=2",
                                  "prefs.annotator=gold", "prefs.test_prompts=8", "rm.max_steps=2", "rm.batch_size=4",
                                  "rm.micro_batch_size=2", "bon.n=[1,2]", "bon.n_prompts=4", "bon.max_new_tokens=4",
                                  "dpo.max_steps=1", "dpo.batch_size=4", "dpo.micro_batch_size=2", "grpo.max_steps=1", "grpo.batch_size=2",
                                  "grpo.group_size=2", "grpo.max_new_tokens=4", "grpo.prompts.pool=6",
                                  "ppo.max_steps=2", "ppo.batch_size=4", "ppo.mini_batch_size=2",
                                  "ppo.max_new_tokens=4", "ppo.prompts.pool=8", "eval.kl_prompts=4"))
    assert summary["steps"]["ppo"] == 2 and "ppo - sft" in summary["differences"]
    cfg = yaml.safe_load((out / "ppo" / "config.yaml").read_text())
    assert cfg["rewards"] == [f"rm:{out / 'rm' / 'model'}"] and cfg["model"]["path"] == str(out / "sft" / "model")
    assert "kl_to_sft" in json.loads((out / "eval" / "ppo.json").read_text())
    html = (out / "report.html").read_text()
    assert "<th>ppo</th>" in html and "objective/scores" in read_metrics(out / "ppo")[-1]
    with pytest.raises(UserError, match="ppo.rewards"):
        pipeline.main(small(model_dir, tmp_path / "x", "ppo.rewards=[world]"))


def test_an_unknown_arena_judge_is_refused_before_any_work(model_dir, tmp_path):
    with pytest.raises(UserError, match=r"'arena.judges': unknown judge 'annotator:lenght' \(did you mean 'annotator:length'"):
        pipeline.main(small(model_dir, tmp_path / "p", "arena.judges=[gold,annotator:lenght]"))
    assert not (tmp_path / "p").exists()
