# mtaserver: `make run` starts the MTA on conf/mtaserver.yaml; `make test` runs the whole suite.
# The virtual environment is made from Debian's own python3 when the machine has it: Debian
# builds it with profile-guided and link-time optimisation into one static binary, and it runs
# mtaserver with about a fifth less CPU per message than a default source build of the same Python
# version (such as pyenv's) that may come first on PATH (bench/RESULTS.md, step 11).
# `make PYTHON=...` chooses another interpreter; an existing .venv is kept (`make clean` first).
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
CONFIG ?= conf/mtaserver.yaml

.PHONY: run check-config test test-services unit bench clean

$(STAMP): pyproject.toml
	bash scripts/bootstrap.sh $(PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/mtaserver run -c $(CONFIG)

check-config: $(STAMP)
	$(BIN)/mtaserver check-config -c $(CONFIG)

test-services:
	bash scripts/test-services.sh

test: $(STAMP) test-services
	$(BIN)/pytest -q tests

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

bench: $(STAMP)
	bash bench/all.sh $(ARGS)

clean:
	rm -rf $(VENV) var build *.egg-info
