# Two commands for a fresh machine with Python 3.11:  make demo  ·  make test
# Each creates the virtual environment it needs on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
MLSERVER_VENV := .venv-mlserver
PORT ?= 8000

.PHONY: demo test lint bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip

# The demo serves a scikit-learn model (skops): the gateway with its `local` extra. Tests and
# lint install `dev`, which holds every extra (artifacts, llm, ...) and the tools.
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install -q -e '.[local]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

# MLServer is a real Open Inference Protocol server the tests put behind the gateway;
# its pinned dependencies clash with ours, so it lives in its own environment.
$(MLSERVER_VENV)/.installed:
	$(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/python -m pip install -q --upgrade pip
	$(MLSERVER_VENV)/bin/python -m pip install -q mlserver==1.7.1 mlserver-sklearn==1.7.1
	touch $@

# make demo RESET=1 forgets earlier runs first (modelfence demo --reset)
demo: $(VENV)/.installed
	$(VENV)/bin/modelfence demo --port $(PORT)$(if $(RESET), --reset)

test: $(VENV)/.installed-dev $(MLSERVER_VENV)/.installed
	MODELFENCE_TEST_MLSERVER=$(abspath $(MLSERVER_VENV))/bin/mlserver $(VENV)/bin/python -m pytest -n auto

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check src tests bench docs/hooks proto
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: $(VENV)/.installed-dev
	$(VENV)/bin/python bench/overhead.py

clean:
	rm -rf $(VENV) $(MLSERVER_VENV) .pytest_cache .mypy_cache .ruff_cache

# Run a config from examples/ with its secrets, keys, database role, model files and stand-in
# upstream made for it (in ~/.modelfence/examples/NAME):  make example NAME=local-model
# The `examples` extra makes the models; llm-* examples also need `llm` (torch: large).
comma := ,
EXAMPLE_EXTRAS = examples$(if $(filter llm-%,$(NAME)),$(comma)llm)

$(VENV)/.installed-$(EXAMPLE_EXTRAS): pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install -q -e '.[$(EXAMPLE_EXTRAS)]'
	touch $@

ifneq ($(filter example,$(MAKECMDGOALS)),)
ifeq ($(NAME),)
$(error usage: make example NAME=<one of: $(basename $(notdir $(wildcard examples/*.yaml)))>)
endif
endif

.PHONY: example
example: $(VENV)/.installed-$(EXAMPLE_EXTRAS)
	$(VENV)/bin/modelfence example $(NAME) --port $(PORT)
