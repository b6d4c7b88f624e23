# Cardinal: `make demo` runs the main job on the embedded default, `make test` runs the tests.
# Both set up .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

DEMO_PLAN := --model deepseek-r1-distill-qwen-7b --quant awq --gpu l4 --engine vllm \
	--target-qps 15 --prompt-tokens 512 --output-tokens 128 --ttft-slo 2s --tpot-slo 50ms \
	--headroom 10%

# The top-level docker-compose.yml and monitoring/ are this plan rendered on FLEET_CARDS simulated
# cards (one small host); `make fleet-files` writes them, a test fails when they drift.
FLEET_CARDS := 4

# System servers the tests and the benchmark run for real (Debian packages).
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
SYSTEM := nginx prometheus promtool ab redis-server

.PHONY: demo test bench accuracy seeds docs lint clean system fleet-files llama-server load-tools soak \
	serving-data fit

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cardinal plan $(DEMO_PLAN) -o fleet.yaml
	$(BIN)/cardinal prove fleet.yaml --check-minimal --report report

system:
	@missing=; for t in $(SYSTEM); do PATH="$$PATH:/usr/sbin" command -v $$t >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
		echo "installing nginx, prometheus, ab and redis-server (Debian packages)"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			nginx-light prometheus apache2-utils redis-server >/dev/null; \
	fi

# The real llama.cpp server the engine tests run: built from source once (about 10 minutes on
# 2 cores), cached under $${XDG_CACHE_HOME:-~/.cache}/cardinal/llama.cpp, never rebuilt after.
llama-server: $(STAMP)
	$(BIN)/python -m tests.llama_server

# guidellm and AIPerf, which tests/test_load_tools.py runs unchanged against the gateway: each in a
# virtualenv of its own (about a GB each), cached under $${XDG_CACHE_HOME:-~/.cache}/cardinal/load-tools.
load-tools: $(STAMP)
	$(BIN)/python -m tests.load_tools

test: $(STAMP) system llama-server load-tools
	$(BIN)/python -m pytest

# The gateway for SOAK_MINUTES (default 30) at 80 % of a planned fleet's capacity on simulated
# cards, with its RSS and open file descriptors compared from start to end (growth under 10 %).
SOAK_MINUTES ?= 30
soak: $(STAMP) system
	SOAK_MINUTES=$(SOAK_MINUTES) $(BIN)/python -m tests.soak

bench: $(STAMP) system
	$(BIN)/pip install --quiet -e '.[bench]' || echo "vllm-router did not install: its column is skipped"
	$(BIN)/python -m tests.bench

accuracy: $(STAMP)
	$(BIN)/cardinal check-accuracy -o docs/accuracy.md
	$(BIN)/python -m gateway.calibrate.fit --error-table

# Measured serving points: aiconfigurator-core's silicon sample (Apache-2.0, data only, never
# imported by the gateway) reduced to serving.csv; `make fit` refits the step-model constants.
serving-data: $(STAMP)
	$(BIN)/pip install --quiet aiconfigurator-core==0.12.0
	$(BIN)/python -m gateway.calibrate.silicon -o gateway/planner/data/serving.csv
	$(BIN)/python -m gateway.calibrate.silicon_scale -o gateway/planner/data/scale_silicon.csv

fit: $(STAMP)
	$(BIN)/python -m gateway.calibrate.fit

seeds: $(STAMP)
	$(BIN)/cardinal seeds -o docs/seeds.md

docs: accuracy seeds

fleet-files: $(STAMP)
	$(BIN)/cardinal plan $(DEMO_PLAN) -o $(VENV)/demo-fleet.yaml >/dev/null
	$(BIN)/cardinal render $(VENV)/demo-fleet.yaml --sim --replicas $(FLEET_CARDS) \
		--only docker-compose.yml --only monitoring -o .

lint: $(STAMP)
	$(BIN)/ruff check gateway tests

clean:
	rm -rf $(VENV) build *.egg-info
