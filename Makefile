# editkit: every target sets up its own environment in .venv from this checkout.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
EXTRAS  ?= dev,train
export HF_HUB_OFFLINE ?= 1

.PHONY: venv test edit tiny-model clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	# torch first, from the pinned pair (CPU machines take the local wheel files)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

venv: $(BIN)/.installed

test: venv
	$(BIN)/python -m pytest -q

edit: venv
	mkdir -p outputs
	$(BIN)/editkit edit docs/examples/shapes.png "segment the red circle" -o outputs/edit.png

clean:
	rm -rf $(VENV) outputs .pytest_cache
