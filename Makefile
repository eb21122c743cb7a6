# Both targets set up everything they need: a virtual environment in .venv with a CPU build of
# ONNX Runtime. torch/torchvision are pinned to the releases this project is tested with.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.14.1 torchvision==0.29.1
ORT    ?= cpu
ARGS   ?=

.PHONY: demo test clean
demo: $(VENV)/.installed
	$(BIN)/itr-distill demo $(ARGS)

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q $(ARGS)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[$(ORT),dev]'
	touch $@

clean:
	rm -rf $(VENV) runs
