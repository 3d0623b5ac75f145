# The two commands a newcomer needs are `make run` and `make test`; both set the machine up first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Known-good pins on these machines (see ../shared/DESIGN.md): torch first, so `pip install -e .` finds it satisfied.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= cpu,dev
PIP := $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: setup run demo test lint bench clean-runs

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) $(TORCH_PINS)
	$(PIP) -e ".[$(EXTRAS)]"
	touch $@

# Main job: the app on the embedded demo model and collection (offline).
run: setup
	$(BIN)/python app.py

# Re-make the demo model from scratch with this project's own trainer.
# About 45 minutes on 2 CPU cores; `vlm train --config configs/demo.yaml --resume` continues an interrupted run.
demo: setup
	$(BIN)/vlm demo data runs/demo-data
	$(BIN)/vlm train --config configs/demo.yaml
	$(BIN)/vlm demo export runs/demo/final

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	$(BIN)/python -m pytest -q

clean-runs:
	rm -rf runs
