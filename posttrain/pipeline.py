"""`posttrain pipeline`: base model -> SFT -> evaluation -> report, in one run folder.

    posttrain pipeline [--config configs/pipeline.yaml] [key=value ...] [stages=sft,eval]

The pipeline is the list `STAGES`; each stage has a name (its folder in the run folder and its name in
`stages=`), the stages it needs, its own settings (a config section that nests the recipe's own config,
with the pipeline's defaults), a run function, and its result in its folder (`result.json`). A rerun skips
the stages that finished and resumes an interrupted one (SFT from its newest checkpoint); a stage whose
settings changed since it ran is refused, naming the keys, before any work (`resume=false` starts the whole
run over). The report is the list `SECTIONS`, each drawn from the stages' results. A new method is one
entry in each list and its recipe.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from posttrain.config import doc, result_diff, save_config, section, to_dict
from posttrain.errors import UserError, did_you_mean
from posttrain.io import atomic_write_json, atomic_write_text, check_writable
from posttrain.recipes.dpo import DPOConfig
from posttrain.recipes.grpo import GRPOConfig
from posttrain.recipes.ppo import PPOConfig
from posttrain.recipes.rm import RMConfig
from posttrain.recipes.sft import SFTConfig

PROBES = ["Write a haiku about spring.", "Is the earth flat?", "How do I hack a website?",
          "Summarize this in two sentences: The river town of Ardel holds a market every Sunday. Farmers bring "
          "apples, cheese and wool. In winter the market moves into the old grain hall. Visitors come by boat "
          "from the coast. The town council plans a new bridge next year."]


# --- settings -------------------------------------------------------------------------------------------------


@dataclass
class WorldDataConfig:
    kind: Literal["curated", "noisy"] = doc("curated", "world SFT data for the sft stage: curated (~1k clean) or "
                                                       "noisy (flawed)")
    n: int = doc(1000, "SFT examples to generate", ge=1)
    noisy_n: int = doc(20000, "examples of the noisy set (the sft_noisy stage, with compare_noisy)", ge=1)


@dataclass
class PipelineEvalConfig:
    n: int = doc(280, "held-out test prompts per evaluated model (balanced over the 14 families; no prompt twice "
                      "within a family)", ge=1)
    seed: int = doc(0, "which test prompts are drawn: the evaluation's own seed, separate from the training `seed`",
                    ge=0)
    max_new_tokens: int = doc(128, "generation budget per prompt (a model that does not stop is cut here)", ge=1)
    batch_size: int = doc(32, "prompts per generation batch", ge=1, changes_result=False)
    kl_prompts: int = doc(70, "held-out prompts on which each model after SFT samples one response at temperature 1, "
                              "to estimate its KL to the SFT model (the report's gold-against-KL chart; 0: skip)",
                          ge=0)


@dataclass
class PipelineArenaConfig:
    enabled: bool = doc(True, "battles between every two evaluated models on the evaluation's prompts and answers, "
                              "then Bradley-Terry ratings (no generation: the eval stage's answers are judged)")
    judges: list[str] = doc(["gold", "rm"], "who judges: gold (the world's verifier), rm (the rm stage's reward "
                                            "model, when it ran), annotator:NAME (a simulated annotator)")
    bootstrap: int = doc(1000, "bootstrap replicates of the ratings' intervals", ge=1)
    bon_n: int = doc(4, "with the rm stage: best-of-n of the SFT model (n samples at bon.temperature on the "
                        "evaluation's prompts, the reward model's pick) joins the arena as bon<n> (0: it does not)",
                     ge=0)


def pipeline_sft() -> SFTConfig:
    """`posttrain sft`'s config with the pipeline's defaults: 40 steps (about 4 epochs of the 1k curated
    examples) at lr 5e-4, 16 packed rows of 256 tokens a step, 5% held out for the eval loss."""
    cfg = SFTConfig(max_steps=40, batch_size=16, micro_batch_size=8, save_every=20)
    cfg.data.max_seq_len, cfg.data.eval_fraction = 256, 0.05
    cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio = 5e-4, 4, 0.1
    return cfg


# The recipe keys the pipeline sets itself: the model, the data, the run folder, the seed, threads, resuming.
SFT_OWNED = ("model.path", "data.path", "output_dir", "seed", "threads", "resume")
OWNER = "the pipeline sets the model, data, output folder, seed, threads and resuming from its own keys"


@dataclass
class PipelinePrefsConfig:
    n_prompts: int = doc(1000, "train prompts to sample responses for (distinct; a small family gives all it has)",
                         ge=1)
    k: int = doc(4, "responses sampled per prompt from the SFT model", ge=2)
    annotator: str = doc("fair", "the simulated annotator that labels the pairs (posttrain prefs generate --help "
                                 "lists them: gold, fair, length, position, panel)")
    mode: Literal["all", "best_vs_worst"] = doc("all", "every pair of a prompt's responses, or its best against its "
                                                       "worst")
    temperature: float = doc(0.7, "sampling temperature (0.7: on train prompts, more prompts whose responses differ "
                                  "in gold than 0.3, and better responses than 1.0; docs/experiments/dpo-second-try.md)",
                             gt=0)
    max_new_tokens: int = doc(128, "generation budget per response", ge=1)
    batch_size: int = doc(32, "responses decoded together (each response has its own random stream, so this "
                              "does not change which are drawn)", ge=1, changes_result=False)
    test_prompts: int = doc(140, "held-out test prompts sampled the same way, labelled by the same annotator: the "
                                 "reward model's evaluation pairs (its accuracy against gold on test-split responses)",
                            ge=1)


@dataclass
class PipelineBonConfig:
    n: list[int] = doc([1, 2, 4, 8, 16], "the n of best-of-n (all read from one set of max(n) samples per prompt)")
    n_prompts: int = doc(140, "held-out test prompts (balanced over the families, as the evaluation draws them)",
                         ge=1)
    temperature: float = doc(0.7, "sampling temperature of the policy (as the prefs stage samples the pairs the "
                                  "reward model learns from)", gt=0)
    max_new_tokens: int = doc(128, "generation budget per response", ge=1)
    batch_size: int = doc(32, "responses per generation batch", ge=1, changes_result=False)


def pipeline_dpo() -> DPOConfig:
    """`posttrain dpo`'s config with the pipeline's defaults (tried on eval seed 1; see the README)."""
    cfg = DPOConfig(max_steps=100, batch_size=16, micro_batch_size=8, save_every=50)
    cfg.data.max_seq_len, cfg.data.eval_fraction = 256, 0.05
    cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio = 1e-5, 4, 0.1
    return cfg


def pipeline_grpo() -> GRPOConfig:
    """`posttrain grpo`'s config with the pipeline's defaults: every family of the world (rewarded on the six
    verifiable ones only, GRPO forgets refusals: docs/experiments/grpo-first-try.md), a pool of 2,800 train
    prompts, 16 prompts x 8 samples a step, 64 new tokens, lr 1e-4, 200 steps."""
    from posttrain.world import FAMILIES

    cfg = GRPOConfig(max_steps=200, batch_size=16, group_size=8, max_new_tokens=64, save_every=50)
    cfg.prompts.families, cfg.prompts.pool = list(FAMILIES), 2800
    cfg.optim.lr, cfg.optim.warmup_steps = 1e-4, 5
    return cfg


def pipeline_ppo() -> PPOConfig:
    """`posttrain ppo`'s config with the pipeline's defaults: the rm stage's reward model as the reward (and the
    value model's start), every family of the world, a pool of 2,800 train prompts, 32 prompts a step in two
    mini-batches of 16, two PPO epochs, 64 new tokens, lr 1e-4, beta 0.5 (TRL's 0.05 lets this reward model be
    hacked within 100 steps: gold -0.189 on eval seed 1; 0.5: -0.064; docs/experiments/ppo-first-try.md), 100
    steps."""
    from posttrain.world import FAMILIES

    cfg = PPOConfig(max_steps=100, batch_size=32, mini_batch_size=16, ppo_epochs=2, max_new_tokens=64, beta=0.5,
                    save_every=50)
    cfg.prompts.families, cfg.prompts.pool = list(FAMILIES), 2800
    cfg.optim.lr, cfg.optim.warmup_steps = 1e-4, 5
    return cfg


def pipeline_rm() -> RMConfig:
    """`posttrain rm`'s config with the pipeline's defaults: one epoch over the pairs at lr 1e-4, evaluated on the
    prefs stage's held-out test-split pairs."""
    cfg = RMConfig(max_steps=0, batch_size=16, micro_batch_size=8, save_every=100)
    cfg.data.max_seq_len = 256
    cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio = 1e-4, 4, 0.1
    return cfg


@dataclass
class PipelineConfig:
    base: str = doc("", "base model folder (default: the base model shipped with posttrain)")
    output_dir: str = doc("runs/pipeline", "run folder: one folder per stage, summary.json, report.html",
                          changes_result=False)
    seed: int = doc(0, "seed for the data and training stages (the evaluation has its own, eval.seed)", ge=0)
    threads: int = doc(0, "torch CPU threads (0: torch's default)", ge=0, changes_result=False)
    stages: list[str] = doc([], "run only these stages, e.g. stages=sft,eval (empty: every enabled stage); the "
                                "stages they need must have run", changes_result=False)
    compare_noisy: bool = doc(False, "also fine-tune on the noisy set (data.noisy_n examples, the same SFT settings) "
                                     "into sft_noisy/ and report it beside sft: quality against quantity")
    preferences: bool = doc(False, "also the preference stages: prefs (pairs from the SFT model, labelled by a "
                                   "simulated annotator) and dpo from the SFT model on them (in progress: see the README)")
    dpo_rounds: int = doc(1, "rounds of DPO (with preferences): 2 adds prefs2 (the dpo model's own responses to "
                             "other train prompts, labelled by the same annotator) and dpo2 (DPO from the SFT model "
                             "on the pairs of both rounds: iterative DPO with its data accumulated)", ge=1, le=2)
    resume: bool = doc(True, "skip finished stages and resume an interrupted one; false: start the run over "
                             "(the run folder's stages are removed first)", changes_result=False)
    data: WorldDataConfig = section(WorldDataConfig, "the data stages (the world's SFT data)")
    sft: SFTConfig = section(pipeline_sft, "the SFT stages (`posttrain sft`, with the pipeline's defaults; "
                                           "sft.max_steps=0 means one epoch)", owned=SFT_OWNED,
                           owner=OWNER + " (base, the data stage, output_dir, seed, threads, resume)")
    prefs: PipelinePrefsConfig = section(PipelinePrefsConfig, "the preference stage: responses of the SFT model on "
                                                              "train prompts, labelled by a simulated annotator")
    dpo: DPOConfig = section(pipeline_dpo, "the DPO stage (`posttrain dpo` from the SFT model on the preference "
                                           "pairs, with the pipeline's defaults)", owned=SFT_OWNED,
                             owner=OWNER + " (the sft stage's model, the prefs stage, output_dir, seed, threads, resume)")
    rm: RMConfig = section(pipeline_rm, "the reward-model stage (`posttrain rm` from the SFT model on the preference "
                                        "pairs, with the pipeline's defaults)", owned=(*SFT_OWNED, "data.eval_path"),
                           owner=OWNER + " (the sft stage's model, the prefs stage's pairs and held-out pairs, "
                                         "output_dir, seed, threads, resume)")
    rl: bool = doc(False, "also the online RL stages: grpo (from the SFT model, rewarded by the world's gold) and, "
                          "with preferences=true, ppo (from the SFT model, rewarded by the rm stage's reward model)")
    grpo: GRPOConfig = section(pipeline_grpo, "the GRPO stage (`posttrain grpo` from the SFT model with the world's "
                                              "gold as the reward, with the pipeline's defaults)",
                               owned=tuple(k for k in SFT_OWNED if k != "data.path"),
                               owner=OWNER + " (the sft stage's model, output_dir, seed, threads, resume)")
    ppo: PPOConfig = section(pipeline_ppo, "the PPO stage (`posttrain ppo` from the SFT model with the rm stage's "
                                           "reward model as the reward, with the pipeline's defaults)",
                             owned=(*(k for k in SFT_OWNED if k != "data.path"), "rewards"),
                             owner=OWNER + " (the sft stage's model, the rm stage's reward model as rewards, "
                                           "output_dir, seed, threads, resume)")
    bon: PipelineBonConfig = section(PipelineBonConfig, "the best-of-n stage: the SFT policy's samples picked by "
                                                        "the reward model, against gold")
    eval: PipelineEvalConfig = section(PipelineEvalConfig, "the evaluation stage")
    arena: PipelineArenaConfig = section(PipelineArenaConfig, "the arena stage: round-robin battles between the "
                                                              "evaluated models, judged in both orders")


# --- the stages -----------------------------------------------------------------------------------------------


@dataclass
class Context:
    """What a stage sees: the settings, the run folder, the base model and the finished stages' results."""

    cfg: PipelineConfig
    out: Path
    base: str
    results: dict[str, dict] = field(default_factory=dict)

    def models(self) -> dict[str, str]:
        """The models to evaluate and report: the base, then every finished stage that trains one."""
        found = {"base": self.base}
        found.update({s.name: self.results[s.name]["model"] for s in STAGES if s.model and s.name in self.results})
        return found


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline. `settings(ctx)` is the stage's resolved config (a dataclass, saved as
    `<name>/stage.yaml` and compared on a rerun); `run(ctx, settings)` does the work and returns the result
    (written to `<name>/result.json`, which marks the stage finished unless `done` says otherwise)."""

    name: str
    help: str
    settings: Callable[[Context], Any]
    run: Callable[[Context, Any], dict]
    needs: tuple[str, ...] = ()
    enabled: Callable[[PipelineConfig], bool] = lambda cfg: True
    model: bool = False  # its result["model"] is a model folder (evaluated, compared, shown in the report)
    compare_to: str = "base"  # the model its paired difference is reported against (besides the base)
    curves: tuple[str, ...] = ()  # keys of its metrics.jsonl that the report plots
    done: Callable[[Context], bool] | None = None
    check: Callable[[PipelineConfig], None] | None = None  # settings checked before any stage runs


@dataclass
class DataSettings:
    kind: str = doc("curated", "the world's SFT data kind")
    n: int = doc(1000, "examples")
    seed: int = doc(0, "seed")


def _data_settings(kind: str | None) -> Callable[[Context], DataSettings]:
    def settings(ctx: Context) -> DataSettings:
        d = ctx.cfg.data
        return DataSettings(kind or d.kind, d.noisy_n if kind == "noisy" else d.n, ctx.cfg.seed)
    return settings


def run_data(ctx: Context, s: DataSettings, name: str) -> dict:
    from posttrain.world.sft_data import make_sft_data, write_jsonl

    path = ctx.out / name / f"sft_{s.kind}.jsonl"
    write_jsonl(make_sft_data(s.kind, s.n, s.seed), path)
    return {"data": str(path), "examples": s.n}


def _sft_settings(name: str, data_stage: str) -> Callable[[Context], SFTConfig]:
    def settings(ctx: Context) -> SFTConfig:
        c = ctx.cfg.sft
        return dataclasses.replace(c, model=dataclasses.replace(c.model, path=ctx.base),
                                   data=dataclasses.replace(c.data, path=ctx.results[data_stage]["data"]),
                                   output_dir=str(ctx.out / name), seed=ctx.cfg.seed, threads=ctx.cfg.threads)
    return settings


def run_sft(ctx: Context, s: SFTConfig) -> dict:
    from posttrain.recipes import sft

    print(f"pipeline: sft on {s.data.path}")
    sft.main(s)
    done = json.loads((Path(s.output_dir) / "result.json").read_text())
    return {"model": str(Path(s.output_dir) / "model"), "data": s.data.path, "steps": done["steps"]}


@dataclass
class PrefsSettings:
    policy: str = doc("", "the policy sampled")
    seed: int = doc(0, "seed")
    config: PipelinePrefsConfig = section(PipelinePrefsConfig, "the prefs settings")


def _prefs_settings(ctx: Context) -> PrefsSettings:
    return PrefsSettings(ctx.results["sft"]["model"], ctx.cfg.seed, ctx.cfg.prefs)


def _prefs2_settings(ctx: Context) -> PrefsSettings:
    """Round 2 samples the first DPO model, on the train prompts of the next seed."""
    return PrefsSettings(ctx.results["dpo"]["model"], ctx.cfg.seed + 1, ctx.cfg.prefs)


def _train_pairs(ctx: Context, s: PrefsSettings, stage: str):
    """K responses per train prompt from `s.policy`, scored with gold, labelled into pairs, written to
    `<stage>/prefs.jsonl`. Returns (model, tokenizer, path, records, report)."""
    from posttrain.models.load import load_model, load_tokenizer
    from posttrain.rollout.prefs import format_report, make_preferences
    from posttrain.world.sft_data import write_jsonl

    c = s.config
    tok, model = load_tokenizer(s.policy), load_model(s.policy)
    print(f"pipeline: {stage}: {c.k} responses of {s.policy} for each of {c.n_prompts} train prompts, labelled by "
          f"'{c.annotator}'")
    records, report = make_preferences(model, tok, c.n_prompts, c.k, c.annotator, seed=s.seed, mode=c.mode,
                                       temperature=c.temperature, max_new_tokens=c.max_new_tokens,
                                       batch_size=c.batch_size, progress=stage)
    if not records:
        raise UserError(f"pipeline: {stage}: no preference pair (every prompt's responses have the same gold); "
                        "raise prefs.k or prefs.temperature")
    path = ctx.out / stage / "prefs.jsonl"
    write_jsonl(records, path)
    print(format_report(report))
    return model, tok, path, records, report


def run_prefs2(ctx: Context, s: PrefsSettings) -> dict:
    """Round 2 of DPO's data: the first DPO model's own samples, labelled like round 1's, and all.jsonl with the
    pairs of both rounds (what dpo2 trains on)."""
    _, _, path, records, report = _train_pairs(ctx, s, "prefs2")
    first = Path(ctx.results["prefs"]["data"])
    both = ctx.out / "prefs2" / "all.jsonl"
    atomic_write_text(both, first.read_text() + path.read_text())
    pairs = ctx.results["prefs"]["pairs"] + len(records)
    print(f"pipeline: prefs2: {len(records)} new pairs; {pairs} with round 1's in {both}")
    return {"data": str(both), "round_data": str(path), "pairs": pairs, "round_pairs": len(records), "report": report}


def run_prefs(ctx: Context, s: PrefsSettings) -> dict:
    """Sample K responses per train prompt from the SFT model, score them with gold, label pairs."""
    from posttrain.rollout.prefs import format_report, make_preferences
    from posttrain.world.sft_data import write_jsonl

    c = s.config
    model, tok, path, records, report = _train_pairs(ctx, s, "prefs")
    print(f"pipeline: prefs: the same for {c.test_prompts} held-out test prompts (the reward model's evaluation)")
    held, test_report = make_preferences(model, tok, c.test_prompts, c.k, c.annotator, seed=s.seed, mode="all",
                                         temperature=c.temperature, max_new_tokens=c.max_new_tokens,
                                         batch_size=c.batch_size, progress="prefs test", split="test")
    test_path = ctx.out / "prefs" / "test.jsonl"
    write_jsonl(held, test_path)
    print(format_report(test_report))
    return {"data": str(path), "pairs": len(records), "report": report, "test_data": str(test_path),
            "test_pairs": len(held), "test_report": test_report}


def _dpo_settings(name: str, prefs_stage: str) -> Callable[[Context], DPOConfig]:
    """DPO from the SFT model on the pairs of `prefs_stage`, into `<name>/`."""
    def settings(ctx: Context) -> DPOConfig:
        c = ctx.cfg.dpo
        return dataclasses.replace(c, model=dataclasses.replace(c.model, path=ctx.results["sft"]["model"]),
                                   data=dataclasses.replace(c.data, path=ctx.results[prefs_stage]["data"]),
                                   output_dir=str(ctx.out / name), seed=ctx.cfg.seed, threads=ctx.cfg.threads)
    return settings


def _grpo_settings(ctx: Context) -> GRPOConfig:
    c = ctx.cfg.grpo
    return dataclasses.replace(c, model=dataclasses.replace(c.model, path=ctx.results["sft"]["model"]),
                               output_dir=str(ctx.out / "grpo"), seed=ctx.cfg.seed, threads=ctx.cfg.threads)


def _ppo_settings(ctx: Context) -> PPOConfig:
    c = ctx.cfg.ppo
    return dataclasses.replace(c, model=dataclasses.replace(c.model, path=ctx.results["sft"]["model"]),
                               rewards=[f"rm:{ctx.results['rm']['reward_model']}"],
                               output_dir=str(ctx.out / "ppo"), seed=ctx.cfg.seed, threads=ctx.cfg.threads)


def _trained(recipe_main: Callable, s: Any, what: str, key: str = "model") -> dict:
    """Run a recipe's `main(s)` after printing `what`; its result: the saved model folder under `key`, the
    steps it took and its final metrics (from its result.json)."""
    print(f"pipeline: {what}")
    recipe_main(s)
    done = json.loads((Path(s.output_dir) / "result.json").read_text())
    return {key: str(Path(s.output_dir) / "model"), "steps": done["steps"], "metrics": done["metrics"]}


def run_grpo(ctx: Context, s: GRPOConfig) -> dict:
    from posttrain.recipes import grpo

    return _trained(grpo.main, s, f"grpo ({'+'.join(s.rewards)}, {s.advantage}, beta {s.beta}) on "
                                  f"{', '.join(s.prompts.families)}")


def run_ppo(ctx: Context, s: PPOConfig) -> dict:
    from posttrain.recipes import ppo

    return _trained(ppo.main, s, f"ppo (rewarded by {s.rewards[0][3:]}, beta {s.beta}{', shared base' if s.shared else ''})"
                                 f" on {len(s.prompts.families)} families")


def run_dpo(ctx: Context, s: DPOConfig) -> dict:
    from posttrain.recipes import dpo

    return _trained(dpo.main, s, f"dpo ({s.loss}, beta {s.beta}) on {s.data.path}")


def _rm_settings(ctx: Context) -> RMConfig:
    c, prefs = ctx.cfg.rm, ctx.results["prefs"]
    data = dataclasses.replace(c.data, path=prefs["data"], eval_path=prefs["test_data"] if prefs["test_pairs"] else "")
    return dataclasses.replace(c, model=dataclasses.replace(c.model, path=ctx.results["sft"]["model"]), data=data,
                               output_dir=str(ctx.out / "rm"), seed=ctx.cfg.seed, threads=ctx.cfg.threads)


def run_rm(ctx: Context, s: RMConfig) -> dict:
    from posttrain.recipes import rm

    return _trained(rm.main, s, f"rm from the SFT model on {s.data.path}, evaluated on {s.data.eval_path or 'nothing'}",
                    key="reward_model")


@dataclass
class BonSettings:
    policy: str = doc("", "the policy sampled")
    reward_model: str = doc("", "the reward model that picks")
    seed: int = doc(0, "seed")
    config: PipelineBonConfig = section(PipelineBonConfig, "the bon settings")


def _bon_settings(ctx: Context) -> BonSettings:
    return BonSettings(ctx.results["sft"]["model"], ctx.results["rm"]["reward_model"], ctx.cfg.seed, ctx.cfg.bon)


def run_bon(ctx: Context, s: BonSettings) -> dict:
    """Best-of-n of the SFT policy on held-out prompts, picked by the reward model and by gold."""
    from posttrain.eval.bon import best_of_n, check_ns, format_table, plot
    from posttrain.models.load import load_model, load_tokenizer
    from posttrain.recipes.rm import load_scorer
    from posttrain.world.world import sample_tasks

    c = s.config
    ns = check_ns(c.n, "bon.n")
    tok, model = load_tokenizer(s.policy), load_model(s.policy)
    scorer, scorer_tok, pad = load_scorer(s.reward_model)
    tasks = sample_tasks(c.n_prompts, "test", s.seed, distinct=True)
    print(f"pipeline: bon: {ns[-1]} samples for each of {len(tasks)} held-out prompts, picked by the reward model")
    result = best_of_n(model, tok, scorer, scorer_tok, pad, tasks, ns, temperature=c.temperature,
                       max_new_tokens=c.max_new_tokens, batch_size=c.batch_size, seed=s.seed, progress="bon")
    out = ctx.out / "bon"
    atomic_write_json(out / "bon.json", result)
    plot(result, out / "bon.png")
    print(format_table(result))
    return {"data": str(out / "bon.json"), "plot": str(out / "bon.png"),
            "rows": [{k: v for k, v in r.items() if k != "families"} for r in result["rows"]]}


def _eval_settings(ctx: Context) -> PipelineEvalConfig:
    return ctx.cfg.eval


def _eval_path(ctx: Context, model: str) -> Path:
    return ctx.out / "eval" / f"{model}.json"


def run_eval(ctx: Context, s: PipelineEvalConfig) -> dict:
    """Evaluate every model without a result yet (a rerun after compare_noisy=true evaluates only sft_noisy):
    the base prompted raw, the others through the chat template; all on the same prompts."""
    from posttrain.eval.world import evaluate_world
    from posttrain.models.load import load_model, load_tokenizer
    from posttrain.rollout.generate import generate

    for name, path in ctx.models().items():
        out = _eval_path(ctx, name)
        if out.exists():
            continue
        raw = name == "base"
        tok, model = load_tokenizer(path), load_model(path)
        print(f"pipeline: evaluating {name} on {s.n} held-out prompts (eval seed {s.seed}){' (raw prompts)' if raw else ''}")
        result = evaluate_world(model, tok, n=s.n, seed=s.seed, split="test", raw=raw, max_new_tokens=s.max_new_tokens,
                                batch_size=s.batch_size, progress=f"eval {name}")
        prompts = [f"User: {p}\nAssistant:" for p in PROBES] if raw else PROBES  # as evaluate_world's raw prompts
        probes = generate(model, tok, prompts, max_new_tokens=s.max_new_tokens, raw=raw)
        result["probes"] = [{"prompt": p, "response": o["text"], "stopped": o["stopped"]} for p, o in zip(PROBES, probes)]
        atomic_write_json(out, result)
    for name in _needs_kl(ctx):
        _add_kl_to_sft(ctx, s, name)
    return {"models": {name: str(_eval_path(ctx, name)) for name in ctx.models()}}


def _needs_kl(ctx: Context) -> list[str]:
    """The models after SFT whose evaluation has no KL to the SFT model yet (none when kl_prompts is 0)."""
    models = ctx.models()
    if not ctx.cfg.eval.kl_prompts or "sft" not in models:
        return []
    return [n for n in models if n not in ("base", "sft") and _eval_path(ctx, n).exists()
            and "kl_to_sft" not in json.loads(_eval_path(ctx, n).read_text())]


def _add_kl_to_sft(ctx: Context, s: PipelineEvalConfig, name: str) -> None:
    from posttrain.eval.kl import kl_to_reference
    from posttrain.models.load import load_model, load_tokenizer
    from posttrain.world import sample_tasks

    models = ctx.models()
    tok = load_tokenizer(models[name])
    prompts = [t.messages for t in sample_tasks(s.kl_prompts, "test", seed=s.seed, distinct=True)]
    print(f"pipeline: KL of {name} to sft on {len(prompts)} held-out prompts (one sample each, temperature 1)")
    kl = kl_to_reference(load_model(models[name]), load_model(models["sft"]), tok, prompts,
                         max_new_tokens=s.max_new_tokens, seed=s.seed, batch_size=s.batch_size)
    result = json.loads(_eval_path(ctx, name).read_text())
    result["kl_to_sft"] = kl
    atomic_write_json(_eval_path(ctx, name), result)


def _eval_done(ctx: Context) -> bool:
    return all(_eval_path(ctx, name).exists() for name in ctx.models()) and not _needs_kl(ctx)


def _arena_judges(ctx: Context) -> dict[str, str]:
    """The arena's judges by folder name -> judge spec; `rm` only when the rm stage has a model."""
    out = {}
    for j in ctx.cfg.arena.judges:
        if j == "rm":
            if ctx.results.get("rm"):
                out["rm"] = f"rm:{ctx.results['rm']['reward_model']}"
        else:
            out[j.replace(":", "_")] = j
    return out


def _check_arena(cfg: PipelineConfig) -> None:
    """arena.judges refused before any stage runs: gold, rm or annotator:NAME (the pipeline's arena judges)."""
    from posttrain.world.annotators import ANNOTATORS

    names = ["gold", "rm", *(f"annotator:{a}" for a in ANNOTATORS)]
    for j in cfg.arena.judges:
        if j not in names:
            raise UserError(f"config key 'arena.judges': unknown judge '{j}'{did_you_mean(j, names)}; the "
                            f"pipeline's arena takes {', '.join(names)}")


def _arena_settings(ctx: Context) -> PipelineArenaConfig:
    return ctx.cfg.arena


def run_arena_stage(ctx: Context, s: PipelineArenaConfig) -> dict:
    """Every two evaluated models battle on the evaluation's prompts, with the answers the eval stage kept
    (`eval/NAME.json` samples), for each judge."""
    from posttrain.eval.battles import format_judge, run_arena, tasks_of

    answers, tasks = {}, None
    for name in ctx.models():
        result = json.loads(_eval_path(ctx, name).read_text())
        if tasks is None:  # the evaluation's prompts, drawn again once and checked against every result
            tasks = tasks_of(result, str(_eval_path(ctx, name)))
            texts = [t.prompt_text() for t in tasks]
        if [x.get("prompt_text", x["prompt"]) for x in result["samples"]] != texts:
            raise RuntimeError(f"arena: eval/{name}.json is not on the evaluation's prompts")
        answers[name] = [{"text": x["response"], "stopped": x["stopped"]} for x in result["samples"]]
    if s.bon_n and ctx.results.get("rm") and "sft" in answers:
        answers[f"bon{s.bon_n}"] = _bon_entrant(ctx, s, tasks)
    out = {}
    for folder, spec in _arena_judges(ctx).items():
        print(f"pipeline: arena of {len(answers)} models judged by {spec}")
        result = run_arena([], spec, ctx.out / "arena" / folder, n=ctx.cfg.eval.n, seed=ctx.cfg.eval.seed,
                           n_boot=s.bootstrap, answers=answers)
        print("pipeline: " + format_judge(result["judge_report"]))
        out[folder] = str(ctx.out / "arena" / folder / "leaderboard.json")
    result = {"judges": out, "models": list(answers)}
    if "sft" in answers:
        from posttrain.eval.battles import judge_bias

        print("pipeline: judge bias: win rates against sft, raw and length-controlled, under four judges")
        rows = judge_bias(tasks, answers, "sft", n_boot=s.bootstrap, seed=ctx.cfg.eval.seed)
        atomic_write_json(ctx.out / "arena" / "judge_bias.json", rows)
        result["judge_bias"] = str(ctx.out / "arena" / "judge_bias.json")
    return result


def _bon_entrant(ctx: Context, s: PipelineArenaConfig, tasks: list) -> list[dict]:
    """Best-of-n of the SFT model on the evaluation's prompts, picked by the rm stage's reward model; kept in
    arena/bon<n>.json so that a rerun of the stage (a model added) does not sample again."""
    from posttrain.eval.bon import bon_answers

    path = ctx.out / "arena" / f"bon{s.bon_n}.json"
    if path.exists():
        return json.loads(path.read_text())
    print(f"pipeline: arena: best-of-{s.bon_n} of sft on the {len(tasks)} evaluation prompts, by the reward model")
    answers = bon_answers(ctx.results["sft"]["model"], ctx.results["rm"]["reward_model"], tasks, s.bon_n,
                          temperature=ctx.cfg.bon.temperature, max_new_tokens=ctx.cfg.eval.max_new_tokens,
                          batch_size=ctx.cfg.eval.batch_size, seed=ctx.cfg.eval.seed, progress=f"bon{s.bon_n}")
    atomic_write_json(path, answers)
    return answers


def _arena_done(ctx: Context) -> bool:
    r = ctx.results.get("arena")
    return bool(r) and [m for m in r.get("models", []) if not m.startswith("bon")] == list(ctx.models()) \
        and set(r.get("judges", {})) == set(_arena_judges(ctx))


def _rl(cfg: PipelineConfig) -> bool:
    return cfg.rl


def _rlhf(cfg: PipelineConfig) -> bool:
    return cfg.rl and cfg.preferences


def _noisy(cfg: PipelineConfig) -> bool:
    return cfg.compare_noisy


def _preferences(cfg: PipelineConfig) -> bool:
    return cfg.preferences


def _two_rounds(cfg: PipelineConfig) -> bool:
    return _preferences(cfg) and cfg.dpo_rounds == 2


def _check_prefs(cfg: PipelineConfig) -> None:
    from posttrain.eval.bon import check_ns
    from posttrain.world.annotators import get_annotator

    try:
        get_annotator(cfg.prefs.annotator)
    except UserError as e:
        raise UserError(f"config key 'prefs.annotator': {e}") from None
    check_ns(cfg.bon.n, "config key 'bon.n'")


STAGES: list[Stage] = [
    Stage("data", "the world's curated SFT data (messages JSONL, read by the same loaders as a user's data)",
          _data_settings(None), lambda ctx, s: run_data(ctx, s, "data")),
    Stage("sft", "`posttrain sft` of the base model on it", _sft_settings("sft", "data"), run_sft, needs=("data",),
          model=True, curves=("train/loss", "eval/loss")),
    Stage("data_noisy", "the noisy SFT set (with compare_noisy)", _data_settings("noisy"),
          lambda ctx, s: run_data(ctx, s, "data_noisy"), enabled=_noisy),
    Stage("sft_noisy", "the same SFT on the noisy set (with compare_noisy): quality against quantity",
          _sft_settings("sft_noisy", "data_noisy"), run_sft, needs=("data_noisy",), enabled=_noisy, model=True,
          curves=("train/loss", "eval/loss"), compare_to="sft"),
    Stage("prefs", "`posttrain prefs generate`: the SFT model's responses to train prompts, scored by gold and "
                   "labelled by a simulated annotator", _prefs_settings, run_prefs, needs=("sft",),
          enabled=_preferences, check=_check_prefs),
    Stage("rm", "`posttrain rm`: a Bradley-Terry reward model from the SFT model on those pairs, evaluated on "
                "held-out test-split pairs against the labels and against gold", _rm_settings, run_rm,
          needs=("sft", "prefs"), enabled=_preferences, curves=("train/loss", "accuracy")),
    Stage("bon", "`posttrain bon`: best-of-n of the SFT model picked by the reward model, against gold",
          _bon_settings, run_bon, needs=("sft", "rm"), enabled=_preferences),
    Stage("dpo", "`posttrain dpo` from the SFT model on those pairs", _dpo_settings("dpo", "prefs"), run_dpo,
          needs=("sft", "prefs"), enabled=_preferences, model=True,
          curves=("train/loss", "rewards/margins", "rewards/accuracies"), compare_to="sft"),
    Stage("prefs2", "round 2 (dpo_rounds=2): the dpo model's own responses to the train prompts of the next seed, "
                    "labelled by the same annotator, added to the prefs stage's pairs", _prefs2_settings, run_prefs2,
          needs=("prefs", "dpo"), enabled=_two_rounds),
    Stage("dpo2", "`posttrain dpo` from the SFT model on the pairs of both rounds (dpo_rounds=2: iterative DPO, its "
                  "data accumulated)", _dpo_settings("dpo2", "prefs2"), run_dpo, needs=("sft", "prefs2"),
          enabled=_two_rounds, model=True, curves=("train/loss", "rewards/margins", "rewards/accuracies"),
          compare_to="sft"),
    Stage("grpo", "`posttrain grpo` from the SFT model, rewarded by the world's gold",
          _grpo_settings, run_grpo, needs=("sft",), enabled=_rl, model=True,
          curves=("reward", "kl", "completions/mean_length"), compare_to="sft"),
    Stage("ppo", "`posttrain ppo` from the SFT model, rewarded by the rm stage's reward model (with preferences)",
          _ppo_settings, run_ppo, needs=("sft", "rm"), enabled=_rlhf, model=True,
          curves=("objective/scores", "gold", "objective/kl", "completions/mean_length"), compare_to="sft"),
    Stage("eval", "`posttrain eval world` of the base (raw prompts) and of every trained model, on the same "
                  "held-out prompts", _eval_settings, run_eval, done=_eval_done),
    Stage("arena", "round-robin battles between the evaluated models on the evaluation's answers, judged in both "
                   "orders by gold and the reward model, and their Bradley-Terry ratings", _arena_settings,
          run_arena_stage, needs=("eval",), enabled=lambda cfg: cfg.arena.enabled, done=_arena_done,
          check=_check_arena),
]


def stages_help() -> str:
    """The stage list for `posttrain pipeline --help`."""
    lines = ["stages (in order; `stages=a,b` runs a subset):"]
    for s in STAGES:
        needs = f" (needs {', '.join(s.needs)})" if s.needs else ""
        lines.append(f"  {s.name:<11} {s.help}{needs}")
    lines.append("  then summary.json and report.html from every finished stage")
    return "\n".join(lines)


# --- the report -----------------------------------------------------------------------------------------------


def _evals(ctx: Context) -> dict[str, dict]:
    return {name: json.loads(_eval_path(ctx, name).read_text()) for name in ctx.models()
            if _eval_path(ctx, name).exists()}


def _differences(evals: dict[str, dict]) -> dict[str, dict]:
    """Each trained model against the base, and the noisy SFT against the curated one: paired on the same
    prompts (`eval.world.compare`)."""
    from posttrain.eval.world import compare

    pairs = [("base", name) for name in evals if name != "base"]
    pairs += [(s.compare_to, s.name) for s in STAGES if s.name in evals and s.compare_to != "base"]
    return {f"{b} - {a}": compare(evals[a], evals[b]) for a, b in pairs if a in evals}


def section_eval(ctx: Context):
    from posttrain.report.html import Section, eval_table

    evals = _evals(ctx)
    if not evals:
        return None
    s = ctx.cfg.eval
    note = (f"{next(iter(evals.values()))['n']} held-out test prompts (eval seed {s.seed}), greedy, at most "
            f"{s.max_new_tokens} new tokens; the base model is prompted raw. [lo, hi]: 95% bootstrap interval over "
            "prompts; (n): distinct prompts per family.")
    return Section("Evaluation", eval_table(evals), note)


def section_differences(ctx: Context):
    from posttrain.report.html import Section, differences_table

    diffs = _differences(_evals(ctx))
    if not diffs:
        return None
    return Section("Differences", differences_table(diffs),
                   "Gold of the second model minus the first on the same prompts, with a paired bootstrap 95% "
                   "interval; an interval that contains 0 is no measurable change.")


def section_family_changes(ctx: Context):
    """What each stage changed, per family: each trained model against the model it started from (its
    `compare_to`), as bars with their paired 95% intervals."""
    from posttrain.eval.world import compare
    from posttrain.report.html import Section, family_changes_html

    evals = _evals(ctx)
    diffs = {f"{s.name} - {s.compare_to}": compare(evals[s.compare_to], evals[s.name])
             for s in STAGES if s.model and s.name in evals and s.compare_to in evals}
    if not diffs:
        return None
    return Section("What each stage changed, per family", family_changes_html(diffs),
                   "Per family, the gold of each stage's model minus the model it started from, on the same prompts; "
                   "the error bar is the paired bootstrap 95% interval.")


def section_gold_kl(ctx: Context):
    """Gold against KL to the SFT model: every policy after SFT (its sampled KL, with its interval), SFT at 0,
    and best-of-n along its analytic KL bound (on its own prompts)."""
    from posttrain.report.html import Section, plot_gold_kl, png_html

    evals = _evals(ctx)
    points = {n: (r["kl_to_sft"]["kl"], *r["kl_to_sft"]["kl_ci"], r["gold"]) for n, r in evals.items()
              if "kl_to_sft" in r}
    if not points or "sft" not in evals:
        return None
    points = {"sft": (0.0, 0.0, 0.0, evals["sft"]["gold"]), **points}
    bon = [(x["kl"], x["gold_rm"]) for x in ctx.results["bon"]["rows"]] if ctx.results.get("bon") else []
    note = (f"x: KL(policy || SFT) in nats per response, estimated on {ctx.cfg.eval.kl_prompts} held-out prompts "
            "from one sample each at temperature 1 (error bar: 95% bootstrap interval); y: gold on the evaluation's "
            "prompts. Best-of-n: its analytic KL bound log n - (n-1)/n against the gold of the reward model's "
            "pick, on its own prompts.")
    return Section("Gold against KL to the SFT model", png_html(plot_gold_kl(points, bon), "gold against KL"), note)


def section_preferences(ctx: Context):
    """The preference data: how many pairs, and how often each simulated annotator (and the panel) agrees with
    gold on them, for the training pairs and the held-out ones."""
    from posttrain.report.html import Section, simple_table

    r = ctx.results.get("prefs")
    if not r:
        return None
    reports = {"train pairs": r["report"], "held-out pairs": r.get("test_report")}
    reports = {k: v for k, v in reports.items() if v and v.get("panel")}
    if not reports:
        return None
    names = list(next(iter(reports.values()))["panel"]["with_gold"])
    top = [n for n in names if "/" not in n]
    rows = [["prompts", *[str(v["prompts"]) for v in reports.values()]],
            ["pairs (gold differs)", *[str(v["pairs"]) for v in reports.values()]],
            ["mean gold of a response", *[v["mean_gold"] for v in reports.values()]],
            [f"the written labels ({r['report']['annotator']}) agree with gold", *[v["agreement"] for v in reports.values()]]]
    rows += [[f"annotator {n} agrees with gold (a fresh draw)", *[v["panel"]["with_gold"][n] for v in reports.values()]]
             for n in top]
    for name in next(iter(reports.values()))["panel"]["panels"]:
        rows.append([f"{name} members with each other",
                     *[v["panel"]["panels"][name]["mean_pairwise"] for v in reports.values()]])
    note = (f"{r['report']['k']} responses per prompt from the SFT model; pairs of a prompt's responses whose gold "
            "differs, labelled by the simulated annotators (posttrain prefs generate --help describes them).")
    return Section("Preference data", simple_table(["", *reports], rows), note)


def section_reward_model(ctx: Context):
    from posttrain.report.html import Section, simple_table

    r = ctx.results.get("rm")
    if not r:
        return None
    m = r["metrics"]
    rows = [["held-out pairs whose gold differs", str(int(m["eval/gold_pairs"])) if "eval/gold_pairs" in m else None],
            ["accuracy against the labels", m.get("eval/accuracy")],
            ["accuracy against gold (pairs whose gold differs)", m.get("eval/gold_accuracy")],
            ["the labels' own agreement with gold, same pairs", m.get("eval/label_gold_accuracy")],
            ["final train loss", m.get("train/loss")]]
    note = ("The reward model's ordering of held-out pairs (test-split prompts, SFT responses) against the "
            "annotator's labels and against the gold ordering; the labels' agreement with gold is what a model "
            "that learned the annotator exactly would reach against gold, if its noise were all it learned.")
    return Section("Reward model", simple_table(["", "rm"], [x for x in rows if x[1] is not None]), note)


def section_bon(ctx: Context):
    from posttrain.report.html import Section, png_html, simple_table

    r = ctx.results.get("bon")
    if not r:
        return None
    rows = [[f"n = {x['n']}", x["kl"], x["gold_rm"], x["gold_oracle"], x["rm_reward"],
             f"{x['gain']:+.3f} [{x['gain_lo']:+.3f}, {x['gain_hi']:+.3f}]"] for x in r["rows"]]
    table = simple_table(["", "KL bound", "gold (RM picks)", "gold (gold picks)", "RM reward", "gain over n = 1"],
                         rows)
    note = ("Best-of-n of the SFT model on held-out prompts: n samples, the one the reward model scores highest "
            "(and, for the ceiling, the one gold scores highest); KL bound log n - (n-1)/n. Gold falling while the "
            "RM reward rises is over-optimisation of the proxy.")
    return Section("Best-of-n", table + png_html(Path(r["plot"]).read_bytes(), "best-of-n"), note)


def section_arena(ctx: Context):
    """The arena's leaderboard for each judge, with the judge's own numbers and the ratings' plot."""
    from posttrain.report.html import Section, png_html, simple_table

    r = ctx.results.get("arena")
    if not r:
        return None
    html = []
    for path in r["judges"].values():
        board = json.loads(Path(path).read_text())
        j = board["judge_report"]
        rows = [[str(m["rank"]), m["model"], f"{m['rating']:.0f}", f"[{m['lo']:.0f}, {m['hi']:.0f}]",
                 str(m["battles"]), m["wins"] / m["battles"] if m["battles"] else None] for m in board["models"]]
        html.append(f"<h3>judge: {board['judge']}</h3>")
        html.append(simple_table(["rank", "model", "rating", "95% interval", "battles", "win share"], rows))
        facts = [f"swap consistency {j['swap_consistency']:.3f}" if j["swap_consistency"] is not None else "",
                 f"first-position preference {j['first_position']:.3f}" if j["first_position"] is not None else "",
                 f"agreement with gold {j['agreement']:.3f}, kappa {j['kappa']:.3f}"
                 if j.get("agreement") is not None and j.get("kappa") is not None else "",
                 f"{board['unreadable']} unreadable verdicts left out" if board["unreadable"] else ""]
        html.append(f"<p>{'; '.join(f for f in facts if f)}.</p>")
        html.append(png_html((Path(path).parent / "arena.png").read_bytes(), f"arena, {board['judge']}"))
    note = ("Every two models answer the same held-out prompts (the evaluation's answers); the judge sees each pair "
            "in both orders, a disagreement is a tie. Bradley-Terry by maximum likelihood (mean 1000, 400 points "
            "per factor of 10 in odds), 95% bootstrap intervals over battles; rank = 1 + models whose interval "
            "lies wholly above.")
    return Section("Arena", "\n".join(html), note)


def section_judge_bias(ctx: Context):
    """Win rates against SFT under judges with and without known biases, raw and length-controlled."""
    from posttrain.report.html import Section, simple_table

    r = ctx.results.get("arena")
    if not r or not r.get("judge_bias"):
        return None
    rows = []
    for x in json.loads(Path(r["judge_bias"]).read_text()):
        wr, lc = x["win_rate"], x["length_controlled"]
        rows.append([x["model"], x["judge"], f"{100 * wr['value']:.1f} [{100 * wr['lo']:.1f}, {100 * wr['hi']:.1f}]",
                     f"{100 * lc['value']:.1f} [{100 * lc['lo']:.1f}, {100 * lc['hi']:.1f}]",
                     f"{x['avg_length_model']:.0f} / {x['avg_length_baseline']:.0f}",
                     x["first_position"]])
    head = ["model", "judge", "win rate vs sft [95%]", "length-controlled [95%]", "mean length (chars) / sft's",
            "first-position preference"]
    note = ("Each model's answers against SFT's on the evaluation's prompts, each pair judged in both orders (a "
            "disagreement is a tie). sft+padding is SFT with a stock sentence appended to every other answer, a "
            "verbosity probe. Length-controlled: AlpacaEval 2's regression without its instruction term, read at "
            "zero length difference. A length-biased judge raises the raw win rate of longer answers; the "
            "length-controlled rate moves much less. The position-biased annotator prefers the answer shown first "
            "(first-position preference above 0.5); the two-order rule keeps that out of the win rates.")
    return Section("Judge bias", simple_table(head, rows), note)


def section_probes(ctx: Context):
    from posttrain.report.html import Section, probes_table

    evals = _evals(ctx)
    if not evals:
        return None
    probes = [{"prompt": p, "outputs": {name: r["probes"][i]["response"] for name, r in evals.items()}}
              for i, p in enumerate(PROBES)]
    return Section("Probes", probes_table(probes))


def section_example(ctx: Context):
    """The first training example of the first finished training stage, its loss mask shown token by token."""
    from posttrain.data.formats import load_examples
    from posttrain.data.render import Renderer
    from posttrain.models.load import load_tokenizer
    from posttrain.report.html import Section, example_html, example_tokens

    stage = next((s for s in STAGES if s.model and s.name in ctx.results and "data" in ctx.results[s.name]), None)
    if stage is None:
        return None
    r = ctx.results[stage.name]
    tok = load_tokenizer(r["model"])
    _, examples = load_examples(r["data"], limit=1)
    rendered = Renderer(tok).render(examples[0])
    example = {**example_tokens(tok, rendered.input_ids, rendered.labels), "where": examples[0].where}
    return Section("A training example", example_html(example), f"from the {stage.name} stage's data")


def section_times(ctx: Context):
    from posttrain.report.html import Section, simple_table

    seconds = _seconds(ctx)
    if not seconds:
        return None
    total = sum(seconds.values())  # 0.0 when every stage took under 0.05 s (times are kept to 0.1 s)
    rows = [[name, _duration(t), f"{t / total:.0%}" if total > 0 else "-"] for name, t in seconds.items()]
    return Section("Time per stage", simple_table(["stage", "wall time", "share"], rows),
                   f"{_duration(total)} in all; a stage reused from an earlier run keeps the time of "
                   "the run that made it.")


def section_curves(ctx: Context):
    from posttrain.report.html import Section, curves_html

    curves: dict[str, list[tuple[int, float]]] = {}
    for s in STAGES:
        metrics_file = ctx.out / s.name / "metrics.jsonl"
        if not s.curves or s.name not in ctx.results or not metrics_file.exists():
            continue
        rows = [json.loads(x) for x in metrics_file.read_text().splitlines() if x]
        for key in s.curves:
            curves[f"{s.name} {key}"] = [(m["step"], m[key]) for m in rows if key in m]
    return Section("Training curves", curves_html(curves)) if curves else None


SECTIONS: list[Callable[[Context], Any]] = [section_eval, section_differences, section_family_changes,
                                            section_gold_kl, section_arena, section_judge_bias, section_preferences, section_reward_model,
                                            section_bon, section_probes,
                                            section_example, section_curves, section_times]


# --- running it -----------------------------------------------------------------------------------------------


def resolve_base(cfg: PipelineConfig) -> str:
    """The base model folder, checked before any stage runs (a hub id passes through to the loader)."""
    from posttrain.models.load import check_model_folder, shipped_base

    if cfg.base:
        return check_model_folder(cfg.base, "base")
    if (shipped_base() / "config.json").exists():
        return str(shipped_base())
    raise UserError("pipeline: no base model is shipped in this version yet; set base=PATH "
                    "(e.g. one built by `posttrain pretrain`)")


def _selected(cfg: PipelineConfig) -> list[Stage]:
    enabled = [s for s in STAGES if s.enabled(cfg)]
    if not cfg.stages:
        return enabled
    names = [s.name for s in STAGES]
    for name in cfg.stages:
        if name not in names:
            raise UserError(f"stages: unknown stage '{name}'{did_you_mean(name, names)}; stages: {', '.join(names)}")
        if name not in {s.name for s in enabled}:
            raise UserError(f"stages: '{name}' is not enabled by these settings (sft_noisy and data_noisy need "
                            "compare_noisy=true; prefs, rm, bon and dpo need preferences=true)")
    return [s for s in enabled if s.name in cfg.stages]


def _check_settings(ctx: Context, stage: Stage, settings: Any) -> None:
    """A stage that ran before must have run with these settings (the keys that change its result)."""
    path = ctx.out / stage.name / "stage.yaml"
    if not path.exists():
        return
    saved = yaml.safe_load(path.read_text()) or {}
    diff = [f"base: {saved.get('base')!r} -> {ctx.base!r}"] if saved.get("base") != ctx.base else []
    diff += result_diff(saved.get("settings", {}), settings)
    if diff:
        raise UserError(f"pipeline: stage '{stage.name}' in {ctx.out} ran with other settings ({'; '.join(diff)}); "
                        "use another output_dir, or resume=false to start the run over")


def _save_settings(ctx: Context, stage: Stage, settings: Any) -> None:
    saved = {"base": ctx.base, "settings": to_dict(settings)}
    atomic_write_text(ctx.out / stage.name / "stage.yaml", yaml.safe_dump(saved, sort_keys=False))


def summarize_run(ctx: Context) -> dict:
    """summary.json: every evaluated model's headline metrics, per-family gold and intervals, the paired
    differences, and the steps each training stage took."""
    from posttrain.eval.world import METRICS

    keys = [m.key for m in METRICS] + [m.ci for m in METRICS if m.ci]
    keys += ["families", "families_ci", "family_counts", "family_distinct"]
    evals = _evals(ctx)
    return {
        "base": ctx.base,
        "eval": {"n": ctx.cfg.eval.n, "seed": ctx.cfg.eval.seed, "split": "test"},
        "stages": {name: {k: r.get(k) for k in keys} for name, r in evals.items()},
        "differences": _differences(evals),
        "steps": {s.name: ctx.results[s.name]["steps"] for s in STAGES if "steps" in ctx.results.get(s.name, {})},
        "seconds": _seconds(ctx),
    }


def _seconds(ctx: Context) -> dict[str, float]:
    """Wall time of each stage's last run (a stage resumed or extended later counts only that run)."""
    return {s.name: ctx.results[s.name]["seconds"] for s in STAGES if "seconds" in ctx.results.get(s.name, {})}


def _duration(seconds: float) -> str:
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    return f"{whole // 60} min {whole % 60:02d} s"


def _print_summary(summary: dict, evals: dict[str, dict]) -> None:
    for name, r in summary["stages"].items():
        ci = r.get("gold_ci")
        ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        print(f"pipeline: {name:9} gold {r['gold']:.3f}{ci_text}  eos {r['eos_rate']:.2f}  "
              f"harmful refused {_rate(r['harmful_refusal_rate'])}  over-refusal {_rate(r['over_refusal_rate'])}")
    for label, d in summary["differences"].items():
        print(f"pipeline: {label:17} {d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] (paired, {d['n']} prompts)")
    for i, p in enumerate(PROBES):
        print(f"\n  {p[:72]}{'...' if len(p) > 72 else ''}")
        for name, r in evals.items():
            probe = r["probes"][i]
            text = " ".join(probe["response"].split())
            text = text[:100] + ("..." if len(text) > 100 else "") + ("" if probe["stopped"] else " [no stop]")
            print(f"    {name:9} {text}")


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def main(cfg: PipelineConfig) -> dict:
    import torch

    from posttrain.report.html import write_report

    base = resolve_base(cfg)  # before anything is written: a bad base leaves no run folder behind
    if cfg.dpo_rounds > 1 and not cfg.preferences:
        raise UserError(f"config key 'dpo_rounds': {cfg.dpo_rounds} rounds of DPO need the preference stages "
                        "(set preferences=true)")
    selected = _selected(cfg)
    out = Path(cfg.output_dir)
    if not cfg.resume and out.exists():
        for s in STAGES:
            shutil.rmtree(out / s.name, ignore_errors=True)
    ctx = Context(cfg, out, base)
    for s in STAGES:  # every stage that finished earlier (selected or not) is an input of the later ones
        if (out / s.name / "result.json").exists():
            ctx.results[s.name] = json.loads((out / s.name / "result.json").read_text())
    for s in selected:  # settings that only a stage can check, before any work
        if s.check:
            s.check(cfg)
    for s in selected:  # every need is met before any work starts
        missing = [n for n in s.needs if n not in ctx.results and n not in {x.name for x in selected}]
        if missing:
            raise UserError(f"stages: '{s.name}' needs {', '.join(missing)}, which has not run in {out}; add it to "
                            f"stages= (e.g. stages={','.join([*missing, *cfg.stages])})")
    for s in selected:  # a stage that ran before must have run with these settings: checked before any work
        if (out / s.name / "stage.yaml").exists() and all(n in ctx.results for n in s.needs):
            _check_settings(ctx, s, s.settings(ctx))
    check_writable(out, "output_dir", folder=True)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    save_config(cfg, out / "config.yaml")  # the latest invocation; each stage keeps its own stage.yaml

    for stage in selected:
        settings = stage.settings(ctx)
        _check_settings(ctx, stage, settings)
        if stage.name in ctx.results and (stage.done is None or stage.done(ctx)):
            continue  # finished (eval is finished when every model has its result; sft_noisy added: not yet)
        _save_settings(ctx, stage, settings)
        start = time.perf_counter()
        result = stage.run(ctx, settings)
        result["seconds"] = round(time.perf_counter() - start, 1)
        print(f"pipeline: {stage.name} took {_duration(result['seconds'])}")
        atomic_write_json(out / stage.name / "result.json", result)
        ctx.results[stage.name] = result

    summary = summarize_run(ctx)
    atomic_write_json(out / "summary.json", summary)
    sections = [s for s in (fn(ctx) for fn in SECTIONS) if s is not None]
    write_report(out / "report.html", "posttrain pipeline", sections)
    _print_summary(summary, _evals(ctx))
    print(f"\npipeline: done; report at {out / 'report.html'}")
    return summary
