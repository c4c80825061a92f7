# Every target builds its own virtual environment on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test drill bench bench-quick bench-tools clean-demo clean

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

# Benchmarks against Postfix's smtp-sink (installed here if missing), beside mailmerge 2.3.0 in its
# own virtual environment. `make bench` takes a while (N = 50,000 and 1,000,000) and adds its figures
# on top of bench/RESULTS.md; `make bench-quick` is the same suite at small N, well under a minute.
# The interpreter moves every figure (about a fifth between this VM's two CPython 3.11 builds, see
# bench/RESULTS.md); to measure another, give it its own environments:
#   make bench PYTHON=/usr/bin/python3 VENV=.venv-system MAILMERGE_VENV=bench/.venv-mailmerge-system
MAILMERGE_VENV ?= bench/.venv-mailmerge

bench-tools:
	@command -v smtp-sink >/dev/null || test -x /usr/sbin/smtp-sink || \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix)
	@test -x $(MAILMERGE_VENV)/bin/mailmerge || \
		($(PYTHON) -m venv $(MAILMERGE_VENV) && $(MAILMERGE_VENV)/bin/pip install --quiet mailmerge==2.3.0)

bench: $(STAMP) bench-tools
	$(BIN)/python bench/bench.py --mailmerge $(MAILMERGE_VENV)/bin/mailmerge --out bench/RESULTS.md

bench-quick: $(STAMP) bench-tools
	$(BIN)/python bench/bench.py --mailmerge $(MAILMERGE_VENV)/bin/mailmerge --quick

clean-demo:
	rm -rf campaigns/example/.notify campaigns/example/outbox campaigns/example/dry-run

clean: clean-demo
	rm -rf $(VENV)
