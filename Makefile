# The two commands a newcomer needs are `make run` and `make test`; both set the machine up first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Known-good pins on these machines (see ../shared/DESIGN.md): torch first, so `pip install -e .` finds it satisfied.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= cpu,dev,onnx,watch,milvus
PIP := $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: setup run demo test lint bench clean-runs gpu-wheels gpu-check-dry

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) $(TORCH_PINS)
	$(PIP) -e ".[$(EXTRAS)]"
	touch $@

# Main job: the app on the embedded demo model and collection (offline).
run: setup
	$(BIN)/python app.py

# Re-make the demo model from scratch with this project's own trainer (issue 18's corpus recipe, vlm/README.md):
# the corpus from pinned npm packages (needs npm and the registry once; then cached in runs/demo-packages), the
# app's held-out icons, about 90 minutes of training on 2 quiet CPU cores (`vlm train --config configs/demo.yaml
# --resume` continues an interrupted run), and the fp16 export with its model card.
# The first demo model's recipe, offline from this repository alone: configs/demo-first.yaml.
demo: setup
	$(BIN)/vlm demo corpus runs/demo-corpus --category-captions --artwork-pairs --more-styles
	$(BIN)/vlm demo collection runs/demo-corpus
	$(BIN)/vlm train --config configs/demo.yaml
	$(BIN)/vlm demo export runs/demo/final

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	$(BIN)/python -m pytest -q

clean-runs:
	rm -rf runs

# Wheels for the GPU machine (bench/README.md), which has PyTorch (Python 3.12, CUDA 13) but not these and cannot
# download: carried in .whl/ (ignored by git) with a device call's `carry`, 64 MiB in all with the working tree.
# faiss is the CPU wheel: the faiss GPU wheels need CUDA 12 (faiss-gpu 1.15.1, 135 MB) or, for CUDA 13, cuVS
# (faiss-gpu-cu13-cuvs 81 MB + libcuvs 241 MB), each over the limit; so the check measures faiss on the CPU there.
GPU_WHEELS ?= open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.1 faiss-cpu==1.15.1 webdataset==1.0.2 braceexpand==0.1.7
WHEEL_PLATFORMS := $(foreach n,2_17 2_24 2_27 2_28 2_31 2_34,--platform manylinux_$(n)_x86_64) --platform manylinux2014_x86_64
gpu-wheels: setup
	rm -rf .whl && mkdir -p .whl
	$(BIN)/pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp $(WHEEL_PLATFORMS) -d .whl $(GPU_WHEELS)
	du -ch .whl/*.whl | tail -1

# The GPU check on this CPU with tiny sizes: walks every line of bench/gpu_check.py (about 2 minutes).
gpu-check-dry: setup
	PY_DRY=$(BIN)/python bash bench/gpu_check.sh --dry
