# Every target builds its own virtual environment on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test drill clean-demo clean

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

# Crash drill: 50 trials of 20,000 recipients, each SIGKILLed at seeded random moments and resumed.
drill: $(STAMP)
	$(BIN)/python -m tests.drill --trials 50 --recipients 20000 --seed 1

clean-demo:
	rm -rf campaigns/example/.notify campaigns/example/outbox campaigns/example/dry-run

clean: clean-demo
	rm -rf $(VENV)
