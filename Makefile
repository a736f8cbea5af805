# mtaserver: `make run` starts the MTA on conf/mtaserver.yaml; `make test` runs the whole suite.
# The virtual environment is made from Debian's own python3 when the machine has one that is
# 3.11 or newer, else from the python3 on PATH. Debian builds it with profile-guided and
# link-time optimisation into one static binary, and mtaserver on it uses about a fifth less
# CPU per message than on a default source build of the same version (such as pyenv's, which
# may come first on PATH): bench/RESULTS.md, step 11.
# `make PYTHON=...` chooses another interpreter; an existing .venv is kept (`make clean` first).
PYTHON ?= $(shell /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && echo /usr/bin/python3 || echo python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
CONFIG ?= conf/mtaserver.yaml

.PHONY: run check-config test test-services lint unit bench shots clean

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

test: $(STAMP) test-services lint
	$(BIN)/pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check mtaserver/

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

shots: $(STAMP) test-services
	MTASERVER_SHOTS=$(CURDIR)/docs/panel $(BIN)/pytest -q tests/integration/test_panel_core.py tests/integration/test_panel_settings.py

bench: $(STAMP)
	bash bench/all.sh $(ARGS)

clean:
	rm -rf $(VENV) var build *.egg-info
