# The README's two commands: `make drive` and `make test`. Each creates .venv with pip when
# it is missing, installs the project into it, then runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stagepilot-installed
SCENARIO ?= town_loop
OUT ?= runs/$(SCENARIO)

.PHONY: drive test bench maps install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

drive: $(STAMP)
	$(BIN)/stagepilot drive --scenario $(SCENARIO) --out $(OUT) --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/stagepilot bench sim --json

maps: $(STAMP)
	$(BIN)/python scripts/build_maps.py

clean:
	rm -rf $(VENV) build *.egg-info
