# flux2-split: `make demo` and `make test` work on a fresh machine; nothing is installed by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TINY_MODEL := .cache/tiny-flux2
TINY_KLEIN := .cache/tiny-klein
DEMO_OUT := out
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install browser test test-gpu lint proto tiny-model demo bench-tiny clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[dev,ray,studio]'
	touch $(STAMP)

test: install browser
	$(BIN)/pytest -n 3 --dist loadfile

# The page's tests drive the system's Chromium: installed here when root can, else one line saying how.
browser:
	@bash scripts/ensure_chromium.sh

test-gpu: install
	$(BIN)/pytest -m gpu

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

proto: install
	$(BIN)/python proto/generate_python.py

$(TINY_MODEL)/model_index.json: $(STAMP) shared/tiny_snapshot.py
	$(BIN)/flux2-tiny-model $(TINY_MODEL)

$(TINY_KLEIN)/model_index.json: $(STAMP) shared/tiny_klein.py shared/tiny_snapshot.py
	$(BIN)/flux2-tiny-model $(TINY_KLEIN) --klein distilled

tiny-model: $(TINY_MODEL)/model_index.json $(TINY_KLEIN)/model_index.json

demo: install tiny-model
	PYTHON=$(BIN)/python BIN=$(BIN) MODEL=$(TINY_MODEL) KLEIN_MODEL=$(TINY_KLEIN) OUT=$(DEMO_OUT) bash scripts/demo.sh

bench-tiny: install browser
	$(BIN)/python -m bench.encoder --tiny
	$(BIN)/python -m bench.encoder --tiny --quantize none,int8,nf4
	$(BIN)/python -m bench.client --tiny
	$(BIN)/python -m bench.upsample --tiny
	$(BIN)/python -m bench.team --tiny
	$(BIN)/python -m bench.wire --tiny
	$(BIN)/python -m bench.train --tiny
	$(BIN)/python -m bench.marking --tiny
	$(BIN)/python -m bench.studio --tiny
	$(BIN)/python -m bench.batch --tiny
	$(BIN)/python -m bench.serve --tiny

clean:
	rm -rf $(VENV) .cache $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache
