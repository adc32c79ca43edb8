# Front door for the alexnet project. `make help` lists the targets.
# The environment is a venv in .venv with torch/torchvision pinned by constraints.txt.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

CONFIG ?= configs/ilsvrc2012.yaml
RAW    ?= /data/ILSVRC2012
DATA   ?= data/ilsvrc2012
CKPT   ?= runs/ilsvrc2012/best.pt
RUN    ?= runs/demo
GPUS   ?= 8
RESTARTS ?= 3
TUNE   ?= configs/scene15_finetune.yaml
IMAGES ?= ../shared/data/imagenet_sample_images
SET    ?=
SETS   := $(foreach s,$(SET),--set $(s))
# torch's CPU allocator on transparent huge pages: fewer page faults in CPU training
export THP_MEM_ALLOC_ENABLE ?= 1

.PHONY: help venv lint format test test-slow test-gpu demo demo-data prepare train train-2gpu train-ddp eval \
	figures tensorboard bench bench-data bench-train clean scene15-data finetune predict export

help:  ## list the targets, and where the code lives
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "code: alexnet/{config,model,data} (the net, the data) <- alexnet/{training,inference}"
	@echo "      <- alexnet/{figures,bench}; commands: python -m alexnet.<train|finetune|eval|"
	@echo "      prepare|synthetic|predict|features|export|figures|bench|model> --help (README: Layout)"

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)  ## create .venv with pinned torch 2.14.1 / torchvision 0.29.1

lint: $(STAMP)  ## ruff: lint rules and the formatter's check (what CI runs)
	$(VENV)/bin/ruff check alexnet tests scripts
	$(VENV)/bin/ruff format --check alexnet tests scripts

format: $(STAMP)  ## ruff: fix what can be fixed, then format the code
	$(VENV)/bin/ruff check --fix alexnet tests scripts
	$(VENV)/bin/ruff format alexnet tests scripts

test: $(STAMP)  ## the test suite on the CPU, but for the slow tests (GPU tests skip themselves)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)  ## the slow tests: real torchrun DDP runs and restarts, torch.compile of the net
	$(PY) -m pytest -q -m slow

test-gpu: $(STAMP)  ## run only the tests that need CUDA
	$(PY) -m pytest -q -m "cuda or two_gpus"

demo-data: $(STAMP)  ## generate and prepare the built-in data set (data/synthetic*)
	$(PY) -m alexnet.synthetic data/synthetic
	$(PY) -m alexnet.prepare data/synthetic data/synthetic-prepared

demo: demo-data  ## train the paper's net on the built-in data on CPU (<10 min), evaluate 1 and 10 crops, draw its figures
	$(PY) -m alexnet.train --config configs/demo.yaml --resume auto $(SETS)
	$(PY) -m alexnet.eval --checkpoint runs/demo/best.pt --crops 1 --crops 10 \
		--json runs/demo/eval.json --no-progress
	$(PY) -m alexnet.figures all runs/demo --crops 1

prepare: $(STAMP)  ## RAW=/downloads (the 3 ILSVRC-2012 files, or train/ val/) DATA=data/ilsvrc2012: shards, mean, PCA
	$(PY) -m alexnet.prepare $(RAW) $(DATA)

train: $(STAMP)  ## CONFIG=... SET="k=v ...": train on one device (or resume: SET stays the same)
	$(PY) -m alexnet.train --config $(CONFIG) --resume auto $(SETS)

train-2gpu: $(STAMP)  ## the paper's two towers on cuda:0 and cuda:1 (model parallel, one process)
	$(PY) -m alexnet.train --config $(CONFIG) --resume auto --set parallel.mode=two_device $(SETS)

# a lost process restarts the group, which resumes from last.pt; the variable gives each restart
# a store of its own (pytorch/pytorch#135712, README "When things go wrong")
train-ddp: $(STAMP)  ## GPUS=8 RESTARTS=3: data parallel with torchrun (global batch = train.batch_size)
	TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 $(VENV)/bin/torchrun --standalone --nproc_per_node=$(GPUS) \
		--max-restarts=$(RESTARTS) -m alexnet.train --config $(CONFIG) \
		--resume auto --set parallel.mode=ddp $(SETS)

eval: $(STAMP)  ## CKPT=runs/x/best.pt: top-1/top-5 error with 1 and 10 crops
	$(PY) -m alexnet.eval --checkpoint $(CKPT)

scene15-data: $(STAMP)  ## prepare ../shared/data/scene15 (15-Scene, 1500 train / 2985 test) into data/scene15
	$(PY) -m alexnet.prepare ../shared/data/scene15 data/scene15

finetune: $(STAMP)  ## TUNE=configs/scene15_finetune.yaml: train from trained weights (finetune.init_from)
	$(PY) -m alexnet.finetune --config $(TUNE) --resume auto $(SETS)

predict: $(STAMP)  ## CKPT=... IMAGES="a.jpg photos/": the top-5 classes of image files, in words
	$(PY) -m alexnet.predict --checkpoint $(CKPT) $(IMAGES)

export: $(STAMP)  ## CKPT=...: a torch.export program (.pt2) of the network with its preprocessing
	$(PY) -m alexnet.export --checkpoint $(CKPT)

figures: $(STAMP)  ## RUN=runs/x: kernels, predictions, neighbours, curves, confusion PNGs in RUN/figures/
	$(PY) -m alexnet.figures all $(RUN)

tensorboard: $(STAMP)  ## serve runs/ on http://localhost:6006
	$(VENV)/bin/tensorboard --logdir runs

bench: bench-data bench-train  ## all benchmarks (figures go to docs/BENCHMARKS.md by hand)

bench-data: demo-data  ## loader images/s vs ImageFolder+PIL on the built-in data
	$(PY) -m alexnet.bench data --data data/synthetic-prepared --raw data/synthetic

bench-train: $(STAMP)  ## training-step images/s on synthetic input
	$(PY) -m alexnet.bench train

clean:  ## remove the venv, caches and the generated demo data (never runs/ or prepared data)
	rm -rf $(VENV) .pytest_cache .ruff_cache data/synthetic data/.synthetic.partial
	find alexnet tests scripts -name __pycache__ -type d -prune -exec rm -rf {} +
