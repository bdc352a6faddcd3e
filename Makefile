# Two commands on a fresh machine: `make demo` and `make test` (each installs first if needed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch goes in first and on its own: installing the project first would let pip pull a
# multi-GB CUDA build. Override for GPUs, e.g. TORCH_SPEC='torch==2.13.0 --index-url ...'.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install test lint demo

install: $(VENV)

$(VENV): $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e '.[test]'
	$(PY) -m pip install --no-deps 'sweeps==0.3.0'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest

# The main job: one default run (its summary table is printed), then a small study on the
# embedded model (early-exit and DSSD at three targets, early-exit again with each lossy KV
# strategy of an exited token, LayerSkip at two exit layers), then
# the figures for it. Finished configs are skipped, so a second `make demo` only redraws.
demo: $(STAMP)
	$(PY) run.py
	$(PY) run.py -m mode=early-exit,dssd calibration.target=0.6,0.8,0.95
	$(PY) run.py -m mode=early-exit engine.kv=propagate,skip calibration.target=0.6,0.8,0.95
	$(PY) run.py -m mode=layerskip mode.exit_layer=2,4
	$(PY) run.py -m mode=dssd calibration.target=0.6,0.8,0.95 calibration.heads=priced
	$(MAKE) figures
	@echo "figures and summary: $(FIGURES)/ (start with $(FIGURES)/speed_accuracy_speedup.png and $(FIGURES)/summary.md)"

# Every figure (PNG + PDF) and figures/summary.md, redrawn from the stored records; runs no model.
RESULTS ?= results/records.jsonl
FIGURES ?= figures
.PHONY: figures
figures: $(STAMP)
	$(PY) -m analysis --results $(RESULTS) --out $(FIGURES)
