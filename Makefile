# One entry point. `make demo` and `make test` work on a fresh machine: they create .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow bench bench-full bench-engine bench-speed bench-stress bench-distributed demo-distributed gpu-check bench-lme4 bench-lme4-full r-lme4 clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The CPU wheel first: a bare torch requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m gmenn_formula demo

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(PY) -m pytest -m slow -q

# The paper's simulation grid (benchmarks/paper_grid.py): quick version (about 10 minutes on 2 cores
# when the machine is otherwise idle) and the paper's sizes (100,000 rows, 5 seeds: hours).
bench: $(STAMP)
	$(PY) benchmarks/paper_grid.py

bench-full: $(STAMP)
	$(PY) benchmarks/paper_grid.py --full

# Engine benchmarks: design memory, sampler mixing, epoch cost, engine scale (minutes).
bench-engine: $(STAMP)
	$(PY) benchmarks/design_memory.py
	$(PY) benchmarks/sampler_mixing.py
	$(PY) benchmarks/epoch_cost.py
	$(PY) benchmarks/engine_scale.py

# Benchmark extras (GPBoost, psutil) and R with lme4 (Debian packages; OpenBLAS makes lmer several times faster).
BENCH_STAMP := $(VENV)/.bench-installed
R_PACKAGES := r-base-core r-cran-lme4 libopenblas0-pthread

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

r-lme4:
	@if Rscript -e 'suppressPackageStartupMessages(library(lme4))' >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(R_PACKAGES); \
	elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(R_PACKAGES); \
	else echo "R/lme4 missing and no root: install $(R_PACKAGES); the benchmark reports lme4 as not installed"; fi

# Whole-fit speed against Ignore / GPBoost in the same run (benchmarks/speed.py, a few minutes).
bench-speed: $(BENCH_STAMP)
	$(PY) benchmarks/speed.py

# The data-parallel E-step on 1 and 2 processes (torchrun, gloo), 10^6 binomial rows (~1.5 minutes on 2 cores).
bench-distributed: $(STAMP)
	$(PY) benchmarks/distributed_estep.py

# A 2-process fit (torchrun, gloo) of Parquet shards against 1 process: summary, per-process memory (~1.5 minutes on 2 cores).
demo-distributed: $(STAMP)
	$(PY) benchmarks/demo_distributed.py

# The GPU path at 100,000 and 10^6 rows (needs a GPU and JAX's CUDA build; exits 2 without one).
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py

# 20 consecutive long fits of the scenarios that once hung in XLA (benchmarks/stress_estep.py, ~40 minutes on 2 cores).
bench-stress: $(STAMP)
	$(PY) benchmarks/stress_estep.py

bench-lme4: $(BENCH_STAMP) r-lme4
	$(PY) benchmarks/glmm_vs_lme4.py

bench-lme4-full: $(BENCH_STAMP) r-lme4
	$(PY) benchmarks/glmm_vs_lme4.py --full

clean:
	rm -rf $(VENV) build dist *.egg-info
