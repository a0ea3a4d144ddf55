# Two entry points for a new machine; each makes or reuses .venv by itself.
#   make demo   - generate a small image set, then ingest, train and evaluate it
#   make test   - run the test suite
# PYTHON may name another interpreter (3.10-3.12), e.g. make test PYTHON=python3.11
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRA ?= test

.PHONY: demo test venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when setup.py changes.
$(VENV)/.installed-$(EXTRA): setup.py | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRA)]"
	touch $@

venv: $(VENV)/.installed-$(EXTRA)

test: venv
	@$(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

demo: venv
	$(BIN)/python cli.py demo $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
