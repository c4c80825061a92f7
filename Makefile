# Every target builds its own virtual environment on first use.
#
# The interpreter: the same code sends about a fifth faster on a CPython built with profile-guided
# and link-time optimization, libpython linked into the executable, as distributions build their
# python3 (Debian's /usr/bin/python3), than on a plain build from source (pyenv's default):
# bench/RESULTS.md. So /usr/bin/python3 is preferred where it is 3.11 or newer and can make a
# virtual environment (Debian: package python3-venv), and python3 on PATH is used otherwise.
# `make test PYTHON=python3` chooses for yourself; `make clean` first if .venv was built by another.
PREFERRED_PYTHON := /usr/bin/python3
ifeq ($(origin PYTHON), undefined)
PYTHON := $(shell $(PREFERRED_PYTHON) -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' \
	2>/dev/null && echo $(PREFERRED_PYTHON) || echo python3)
endif
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint drill bench bench-quick bench-feedback bench-deferrals bench-workers bench-tools postgres-trial clean-demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,lint,postgres]'
	touch $(STAMP)

# The example campaign end to end through the outbox provider (files on disk, no account, no server).
# A second run finds nothing left to send; `make clean-demo` starts over.
demo: $(STAMP)
	$(BIN)/notify check campaigns/example
	$(BIN)/notify send campaigns/example
	$(BIN)/notify status campaigns/example
	$(BIN)/notify audit verify campaigns/example
	$(BIN)/notify regulators campaigns/example

test: $(STAMP)
	$(BIN)/pytest -q

# ruff (pycodestyle, pyflakes, bugbear, isort, pyupgrade) and mypy --strict, configured in pyproject.toml; the
# rooms' import contracts (tests/test_layers.py); no function or method above radon's complexity C, and no module
# of notify above 400 lines (#36).
lint: $(STAMP)
	$(BIN)/ruff check notify tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q -p no:cacheprovider tests/test_layers.py
	@above=$$($(BIN)/radon cc -n D -s notify); if [ -n "$$above" ]; then \
		echo "lint: above radon's complexity C (split them):"; echo "$$above"; exit 1; fi
	@long=$$(find notify -name '*.py' -exec wc -l {} + | awk '$$2 != "total" && $$1 > 400'); if [ -n "$$long" ]; then \
		echo "lint: modules over 400 lines (split them):"; echo "$$long"; exit 1; fi

# Crash drill: 50 trials of 20,000 recipients, each SIGKILLed at seeded random moments and resumed; then three
# workers on PostgreSQL (a cluster of its own, tests/pg.py) sending 20,000, one of them SIGKILLed mid-run.
drill: $(STAMP)
	$(BIN)/python -m tests.drill --trials 50 --recipients 20000 --seed 1
	$(BIN)/python -m tests.workers --recipients 20000 --workers 3

# A private throwaway PostgreSQL for trying notify on it (as the tests start one: Debian's binaries, a temporary
# directory, its Unix socket only). Prints the URL to export; Ctrl-C stops it and deletes its data.
postgres-trial: $(STAMP)
	$(BIN)/python -m tests.pg

# Benchmarks against Postfix's smtp-sink (installed here if missing), beside mailmerge 2.3.0 in its
# own virtual environment. `make bench` takes a while (N = 50,000 and 1,000,000) and adds its figures
# on top of bench/RESULTS.md; `make bench-quick` is the same suite at small N, well under a minute.
# mailmerge runs on the same interpreter as notify. The interpreter moves every figure (see PYTHON
# above); to measure another, give it its own environments:
#   make bench PYTHON=python3 VENV=.venv-python3 MAILMERGE_VENV=bench/.venv-mailmerge-python3
MAILMERGE_VENV ?= bench/.venv-mailmerge

bench-tools:
	@command -v smtp-sink >/dev/null || test -x /usr/sbin/smtp-sink || \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix)
	@test -x $(MAILMERGE_VENV)/bin/mailmerge || \
		($(PYTHON) -m venv $(MAILMERGE_VENV) && $(MAILMERGE_VENV)/bin/pip install --quiet mailmerge==2.3.0)

bench: $(STAMP) bench-tools
	$(BIN)/python bench/bench.py --mailmerge $(MAILMERGE_VENV)/bin/mailmerge --out bench/RESULTS.md

# Feedback (#26): notify's SQS reader beside a bare parallel client and the reader before, against
# moto's server in its own process with 20 ms added to every call; and the reader on a queue in memory.
bench-feedback: $(STAMP)
	$(BIN)/python bench/feedback.py --events 10000 --receivers 8

# Deferrals (#28): the same send against aiosmtpd deferring 2% of recipients at random, and deferring none.
bench-deferrals: $(STAMP)
	$(BIN)/python bench/deferrals.py

# Workers (#29): 1, 2 and 4 `send --worker` on PostgreSQL (a cluster of its own) beside one process on SQLite,
# to one smtp-sink; outcomes/s, commits and WAL per outcome.
bench-workers: $(STAMP) bench-tools
	$(BIN)/python bench/workers.py --n 20000

bench-quick: $(STAMP) bench-tools
	$(BIN)/python bench/bench.py --mailmerge $(MAILMERGE_VENV)/bin/mailmerge --quick

clean-demo:
	rm -rf campaigns/example/.notify campaigns/example/outbox campaigns/example/dry-run campaigns/example/audit-checkpoints.log

clean: clean-demo
	rm -rf $(VENV)
