"""The `posttrain` command line.

    posttrain sft --config configs/sft.yaml optim.lr=1e-4
    posttrain sft model=PATH data=FILE output_dir=DIR max_steps=N seed=N
    posttrain pretrain data=CORPUS output_dir=DIR
    posttrain pipeline [--config FILE] base=PATH
    posttrain rm model=SFT_MODEL data=PREFS output_dir=DIR; posttrain rm score --model RM --data FILE [--json]
    posttrain kto model=SFT_MODEL data=UNPAIRED output_dir=DIR [beta=0.1 desirable_weight=1.0 undesirable_weight=1.0]
    posttrain data check FILE [--model PATH] [--json]
    posttrain generate --model PATH --prompt TEXT [--prompt TEXT ...]
    posttrain serve --model PATH [--port 8000] [--host 127.0.0.1] [--max-batch 32] [--max-tokens 512]
    posttrain merge --adapter DIR --out DIR
    posttrain eval world --model PATH [--raw] [--n 300] [--seed S] [--out FILE]
    posttrain eval compare A.json B.json
    posttrain eval ifeval --model PATH [--n 300] [--seed S] [--json] [--out FILE]
    posttrain eval two-turn --model PATH [--n 300] [--seed S] [--json] [--out FILE]
    posttrain eval annotate --baseline A.json --model B.json --judge gold|annotator:NAME|rm:PATH|... --out FILE
    posttrain eval winrate --annotations FILE [--bootstrap 1000] [--json]
    posttrain arena ratings --battles FILE [--bootstrap 1000] [--anchor MODEL] [--json]
    posttrain arena --models a=PATH,b=PATH --judge gold|annotator:NAME|rm:PATH|llm:PATH|http:URL [--n 140] [--out DIR]
    posttrain world sft-data --kind curated|noisy --n N --out FILE
    posttrain world corpus --n N --out FILE
    posttrain world tasks --split train|test --n N [--family F ...] [--json]
    posttrain prefs generate --policy PATH --n-prompts N --k K --annotator NAME --out FILE [--unpaired]
    posttrain bon --policy PATH --reward-model RM [--n 1,2,4,8,16,32] [--n-prompts 280] [--out FILE] [--plot PNG]
    posttrain sweep ppo beta=0.01,0.1,1.0 [--config FILE] [key=value ...] [--out DIR] [--report-only]
    posttrain init-model --arch llama --data FILE --out DIR

Bad input ends with one line `error: ...` and exit code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from posttrain.config import check_flags
from posttrain.errors import TrainingDiverged, UserError, did_you_mean
from posttrain.io import check_writable

# recipe name -> module with a `<Name>Config` dataclass and `main(cfg)`
RECIPES = {
    "sft": ("posttrain.recipes.sft", "SFTConfig"),
    "pretrain": ("posttrain.recipes.pretrain", "PretrainConfig"),
    "dpo": ("posttrain.recipes.dpo", "DPOConfig"),
    "rm": ("posttrain.recipes.rm", "RMConfig"),
    "kto": ("posttrain.recipes.kto", "KTOConfig"),
    "grpo": ("posttrain.recipes.grpo", "GRPOConfig"),
    "ppo": ("posttrain.recipes.ppo", "PPOConfig"),
    "pipeline": ("posttrain.pipeline", "PipelineConfig"),
}
COMMANDS = [*RECIPES, "data", "generate", "merge", "init-model", "eval", "world", "prefs", "bon", "sweep", "arena", "serve"]


def _recipe(name: str, argv: list[str]) -> int:
    from posttrain.config import config_help, load_config

    module_name, cls_name = RECIPES[name]
    module = importlib.import_module(module_name)
    cls = getattr(module, cls_name)
    p = argparse.ArgumentParser(prog=f"posttrain {name}", add_help=False,
                                description=(module.__doc__ or "").strip().splitlines()[0])
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--help", "-h", action="store_true")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-4")
    args, unknown = p.parse_known_args(argv)
    if unknown:
        raise UserError(f"unknown option {unknown[0]}; overrides are key=value (see posttrain {name} --help)")
    if args.help:
        print(f"usage: posttrain {name} [--config FILE] [key=value ...]\n\n{module.__doc__.strip()}\n")
        if hasattr(module, "stages_help"):
            print(module.stages_help() + "\n")
        print("fields (type and valid range, default):")
        print(config_help(cls))
        return 0
    cfg = load_config(cls, args.config, args.overrides)
    module.main(cfg)
    return 0


def _data(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="posttrain data")
    sub = p.add_subparsers(dest="action", required=True)
    c = sub.add_parser("check", help="the data doctor: format, lengths, truncation, the loss mask shown")
    c.add_argument("file")
    c.add_argument("--model", help="tokenizer to render with (default: a byte-level stand-in)")
    c.add_argument("--format", default="auto")
    c.add_argument("--max-seq-len", type=int, default=1024)
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.add_argument("--show", type=int, default=2, help="examples to render (0: none)")
    args = p.parse_args(argv)
    if args.max_seq_len < 1:
        raise UserError(f"data check: --max-seq-len must be at least 1, got {args.max_seq_len}")
    if args.show < 0:
        raise UserError(f"data check: --show must be 0 or more, got {args.show}")
    from posttrain.data.check import run_check
    from posttrain.data.formats import load_examples
    from posttrain.models.load import load_tokenizer
    from posttrain.models.tiny import stand_in_tokenizer

    tok = load_tokenizer(args.model) if args.model else None  # a bad --model fails before the file is read
    fmt, examples = load_examples(args.file, args.format)
    name = args.model
    if tok is None:
        tok, name = stand_in_tokenizer(examples), "stand-in BPE trained on this file"
    return run_check(args.file, fmt, examples, tok, name, max_seq_len=args.max_seq_len, as_json=args.json,
                     show=args.show)


def _generate(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="posttrain generate", description="Sample from a model with its chat template.")
    p.add_argument("--model", required=True)
    p.add_argument("--prompt", action="append", default=[], help="a user message (repeat for a batch)")
    p.add_argument("--prompts-file", help="one prompt per line")
    p.add_argument("--system", default="", help="an optional system message")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw", action="store_true", help="feed the prompt as plain text, without the chat template")
    p.add_argument("--json", action="store_true", help="print a JSON list of {prompt, response}")
    args = p.parse_args(argv)
    check_flags(args, max_new_tokens={"ge": 1}, temperature={"ge": 0}, top_p={"gt": 0, "le": 1}, batch_size={"ge": 1})
    from posttrain.rollout.generate import generate_cli

    return generate_cli(args)


def _merge(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="posttrain merge", description="Merge a LoRA adapter into its base model.")
    p.add_argument("--adapter", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--base", help="base model (default: the one named in adapter_config.json)")
    args = p.parse_args(argv)
    check_writable(args.out, "--out", folder=True)
    from posttrain.models.lora import merge_adapter

    merge_adapter(args.adapter, args.out, args.base)
    print(f"merged model saved to {args.out}")
    return 0


def _init_model(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="posttrain init-model",
                                description="Build a tiny random-init model, with a BPE tokenizer trained on a data file.")
    p.add_argument("--arch", default="llama")
    p.add_argument("--data", required=True, help="text to train the tokenizer on (any supported data file)")
    p.add_argument("--out", required=True)
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    check_flags(args, vocab_size={"ge": 263}, hidden={"ge": 1}, layers={"ge": 1}, heads={"ge": 1})
    check_writable(args.out, "--out", folder=True)
    from posttrain.models.tiny import build_tiny

    build_tiny(args.arch, args.data, args.out, vocab_size=args.vocab_size, hidden=args.hidden,
               layers=args.layers, heads=args.heads, seed=args.seed)
    print(f"tiny {args.arch} model saved to {args.out}")
    return 0


def _eval(argv: list[str]) -> int:
    if not argv or argv[0] not in ("world", "compare", "winrate", "annotate", "ifeval", "two-turn"):
        raise UserError("usage: posttrain eval world --model PATH [--n 300] [--seed S] [--split test] "
                        "[--family NAME] [--raw] [--out FILE] [--max-new-tokens 128] [--batch-size 16]; "
                        "posttrain eval compare A.json B.json [--json]; "
                        "posttrain eval ifeval --model PATH [--n 300] [--seed S] [--json] [--out FILE]; "
                        "posttrain eval two-turn --model PATH [--n 300] [--seed S] [--json] [--out FILE]; "
                        "posttrain eval annotate --baseline A.json --model B.json --judge SPEC --out FILE; "
                        "or posttrain eval winrate --annotations FILE [--bootstrap N] [--json]")
    if argv[0] == "ifeval":
        from posttrain.eval.ifeval import eval_ifeval_cli

        return eval_ifeval_cli(argv[1:])
    if argv[0] == "two-turn":
        from posttrain.eval.multiturn import eval_two_turn_cli

        return eval_two_turn_cli(argv[1:])
    if argv[0] == "annotate":
        from posttrain.eval.battles import annotate_main

        return annotate_main(argv[1:])
    if argv[0] == "winrate":
        from posttrain.eval.winrate import winrate_cli

        return winrate_cli(argv[1:])
    from posttrain.eval.world import eval_compare_cli, eval_world_cli

    return (eval_world_cli if argv[0] == "world" else eval_compare_cli)(argv[1:])


def _arena(argv: list[str]) -> int:
    if argv[:1] == ["ratings"]:
        from posttrain.eval.arena import ratings_cli

        return ratings_cli(argv[1:])
    from posttrain.eval.battles import arena_main

    return arena_main(argv)


def _world(argv: list[str]) -> int:
    from posttrain.world.commands import world_main

    return world_main(argv)


def _prefs(argv: list[str]) -> int:
    from posttrain.rollout.prefs import prefs_main

    return prefs_main(argv)


def _bon(argv: list[str]) -> int:
    from posttrain.eval.bon import bon_main

    return bon_main(argv)


def _serve(argv: list[str]) -> int:
    from posttrain.rollout.serve import serve_main

    return serve_main(argv)


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "rm" and rest[:1] == ["score"]:
        from posttrain.recipes.rm import score_cli

        return score_cli(rest[1:])
    if cmd == "sweep":
        from posttrain.sweep import sweep_main

        return sweep_main(rest)
    if cmd in RECIPES:
        return _recipe(cmd, rest)
    handlers = {"data": _data, "generate": _generate, "merge": _merge, "init-model": _init_model, "eval": _eval,
                "world": _world, "prefs": _prefs, "bon": _bon, "arena": _arena, "serve": _serve}
    if cmd not in handlers:
        raise UserError(f"unknown command '{cmd}'{did_you_mean(cmd, COMMANDS)}; commands: {', '.join(COMMANDS)}")
    return handlers[cmd](rest)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("POSTTRAIN_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    try:
        code = run(argv)
        sys.stdout.flush()  # a closed pipe (`posttrain ... | head`) shows up here, inside the handler
    except BrokenPipeError:
        # The reader went away: say nothing more (Python's documented recipe: stdout to devnull, exit 1).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    except (UserError, TrainingDiverged) as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        code = e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
