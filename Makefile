# Two commands on a fresh machine: `make demo` makes the environment (first use only) and runs example.py;
# `make test` runs the test suite in that same environment. `make unit` is the one-minute verdict.
VENV := .venv
PYTHON := $(VENV)/bin/python3

.PHONY: demo test unit env

demo: $(VENV)/.installed
	$(PYTHON) example.py

test: $(VENV)/.installed
	$(PYTHON) -m pytest -q tests

unit: $(VENV)/.installed
	$(PYTHON) -m pytest -q tests/unit

env: $(VENV)/.installed

# The environment: a virtual one in the checkout, with requirements.txt and the offline MNIST copy (setup.sh).
$(VENV)/.installed: requirements.txt setup.sh
	test -d $(VENV) || python3 -m venv $(VENV)
	. $(VENV)/bin/activate && bash setup.sh
	touch $@
