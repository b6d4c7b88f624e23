# Cardinal: `make demo` runs the main job on the embedded default, `make test` runs the tests.
# Both set up .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

DEMO_PLAN := --model deepseek-r1-distill-qwen-32b --quant awq --gpu a100-80gb-sxm --engine vllm \
	--target-qps 75 --prompt-tokens 512 --output-tokens 256 --ttft-slo 2s --tpot-slo 50ms

.PHONY: demo test bench accuracy seeds docs lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cardinal plan $(DEMO_PLAN) -o fleet.yaml

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m tests.bench

accuracy: $(STAMP)
	$(BIN)/cardinal check-accuracy -o docs/accuracy.md

seeds: $(STAMP)
	$(BIN)/cardinal seeds -o docs/seeds.md

docs: accuracy seeds

lint: $(STAMP)
	$(BIN)/ruff check gateway tests

clean:
	rm -rf $(VENV) build *.egg-info
