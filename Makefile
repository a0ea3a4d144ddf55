# Two entry points for a new machine; each makes or reuses .venv by itself.
#   make demo   - generate a small image set, then ingest, train and evaluate it
#   make test   - run the test suite
#   make check-outside OUTSIDE=dir [RUN=runs/...] - the release check on labelled outside photos
# PYTHON may name another interpreter (3.10-3.12), e.g. make test PYTHON=python3.11
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRA ?= test
# make test runs the suite in this many processes (pytest-xdist), each test file whole in one of them
# (module fixtures are built once); 0 runs it in this process alone.
TEST_WORKERS ?= 2

.PHONY: demo test venv clean check-outside outside-given

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when setup.py changes.
$(VENV)/.installed-$(EXTRA): setup.py | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRA)]"
	touch $@

venv: $(VENV)/.installed-$(EXTRA)

test: venv
	@$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

demo: venv
	$(BIN)/python cli.py demo $(ARGS)

# The release check: RUN (default the newest run) on OUTSIDE/<class>/..., at the val threshold
# `evaluate` recorded; exit 1 below MIN_ACCURACY.
MIN_ACCURACY ?= 0.90
check-outside: outside-given venv
	$(BIN)/python cli.py check-outside "$(OUTSIDE)" $(if $(RUN),--run "$(RUN)") --min-accuracy $(MIN_ACCURACY) $(ARGS)

outside-given:
	@test -n "$(OUTSIDE)" || { echo "Error: name the photos: make check-outside OUTSIDE=dir [RUN=runs/...]" >&2; exit 2; }

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
