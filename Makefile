# tunery: `make quickstart` sets everything up and runs the main job; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0

.PHONY: install quickstart test test-all bench clean

$(BIN)/tunery: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: this takes the CPU wheel; an unpinned torch pulls a multi-GB CUDA build
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev,onnx,explain,attack,federated]'
	touch $(BIN)/tunery

install: $(BIN)/tunery

quickstart: install
	$(BIN)/python scripts/quickstart_data.py
	$(BIN)/tunery train examples/quickstart.yaml

# One pytest worker per core (pytest-xdist), each test file on one worker (its module fixtures built once),
# files handed out in collection order (tests/conftest.py puts the long ones first).
# `make test` (what CI runs, under 20 minutes) leaves out the real-model checks marked `slow` (MiniLM
# fine-tuned on ../shared/data: about 4 more minutes); `make test-all` runs them too.
test: install
	$(BIN)/python -m pytest -q -n auto --dist loadfile --no-loadscope-reorder -m "not slow"

test-all: install
	$(BIN)/python -m pytest -q -n auto --dist loadfile --no-loadscope-reorder

bench: install
	$(BIN)/python bench/sst2.py

clean:
	rm -rf $(VENV) runs data .tunery
