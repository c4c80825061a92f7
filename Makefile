# Every target builds its own virtual environment on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test clean-demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The example campaign end to end through the outbox provider (files on disk, no account, no server).
# A second run finds nothing left to send; `make clean-demo` starts over.
demo: $(STAMP)
	$(BIN)/notify check campaigns/example
	$(BIN)/notify send campaigns/example
	$(BIN)/notify status campaigns/example
	$(BIN)/notify audit verify campaigns/example

test: $(STAMP)
	$(BIN)/pytest -q

clean-demo:
	rm -rf campaigns/example/.notify campaigns/example/outbox campaigns/example/dry-run

clean: clean-demo
	rm -rf $(VENV)
