# posttrain: `make demo` and `make test` work on a fresh machine (they create .venv first).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch; never a multi-GB CUDA build.
TORCH := torch==2.13.0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test lint bench bench-dpo bench-grpo bench-ppo bench-ppo-memory bench-sampling base clean

$(BIN)/posttrain: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH) 2>&1 | grep -v "is ignored" || true
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import posttrain, torch, transformers, peft, accelerate"
	touch $@

demo: $(BIN)/posttrain
	$(BIN)/posttrain pipeline --config configs/pipeline.yaml

test: $(BIN)/posttrain
	$(BIN)/python -m pytest tests -p no:cacheprovider

lint: $(BIN)/posttrain
	$(BIN)/ruff check posttrain tests benchmarks examples

# Rebuild the shipped base model from scratch (about 45 minutes on 2 cores): corpus -> pretrain -> assets.
base: $(BIN)/posttrain
	$(BIN)/posttrain world corpus --n 110000 --seed 0 --out runs/base/corpus.jsonl
	$(BIN)/posttrain pretrain --config configs/pretrain_base.yaml
	rm -rf posttrain/assets/base && mkdir -p posttrain/assets && cp -r runs/base/pretrain/model posttrain/assets/base
	printf '\nRebuild: `make base` in the posttrain repository (corpus: `posttrain world corpus --n 110000 --seed 0`).\n' >> posttrain/assets/base/README.md

# The benchmark against TRL has its own environment (TRL is not a dependency of posttrain).
bench:
	test -x benchmarks/.venv/bin/python || $(PY) -m venv benchmarks/.venv
	benchmarks/.venv/bin/pip install -q $(TORCH) 2>&1 | grep -v "is ignored" || true
	benchmarks/.venv/bin/pip install -q -r benchmarks/requirements.txt -e . 2>&1 | grep -v "is ignored" || true
	benchmarks/.venv/bin/python benchmarks/sft_vs_trl.py --out runs/bench/sft_vs_trl.json

# Our DPO against TRL's DPOTrainer, in the same environment (about 12 minutes on 2 cores).
bench-dpo:
	test -x benchmarks/.venv/bin/python || $(PY) -m venv benchmarks/.venv
	benchmarks/.venv/bin/pip install -q $(TORCH) 2>&1 | grep -v "is ignored" || true
	benchmarks/.venv/bin/pip install -q -r benchmarks/requirements.txt -e . 2>&1 | grep -v "is ignored" || true
	benchmarks/.venv/bin/python benchmarks/dpo_vs_trl.py --out runs/bench/dpo_vs_trl.json

bench-grpo:
	test -x benchmarks/.venv/bin/python || $(PY) -m venv benchmarks/.venv
	benchmarks/.venv/bin/pip install -q $(TORCH) 2>&1 | grep -v "is ignored" || true
	benchmarks/.venv/bin/pip install -q -r benchmarks/requirements.txt -e . 2>&1 | grep -v "is ignored" || true
	benchmarks/.venv/bin/python benchmarks/grpo_vs_trl.py --steps 8 --out runs/bench/grpo_vs_trl.json

# Our PPO against TRL 1.12.0's PPOTrainer (its last release with one), in its own environment benchmarks/.venv-ppo;
# the script runs from the project's .venv (posttrain's side is `posttrain ppo`). About 2 minutes on idle cores, plus
# about 5 the first time (the SFT policy and the reward model, trained once).
bench-ppo: $(BIN)/posttrain
	test -x benchmarks/.venv-ppo/bin/python || $(PY) -m venv benchmarks/.venv-ppo
	benchmarks/.venv-ppo/bin/pip install -q $(TORCH) 2>&1 | grep -v "is ignored" || true
	benchmarks/.venv-ppo/bin/pip install -q -r benchmarks/requirements-ppo.txt 2>&1 | grep -v "is ignored" || true
	$(BIN)/python benchmarks/ppo_vs_trl.py --steps 8 --out runs/bench/ppo_vs_trl.json

# PPO's peak memory (shared LoRA base, separate models) over SFT's, on a random-init 157M Llama: the project's
# own environment is enough (no TRL). About 8 minutes on 2 quiet cores.
bench-ppo-memory: $(BIN)/posttrain
	$(BIN)/python benchmarks/ppo_memory.py --out runs/bench/ppo_memory.json

# posttrain's decode loop against model.generate: the project's own environment is enough.
bench-sampling: $(BIN)/posttrain
	$(BIN)/python benchmarks/sampling.py --out runs/bench/sampling.json

clean:
	rm -rf $(VENV) runs
