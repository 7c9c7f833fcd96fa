# Two commands do everything on a fresh Debian 12 machine, as root:
#   make demo   bootstrap, then a 2-node local cluster running the sample app
#   make test   bootstrap, then lint + type checks + every test tier
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: bootstrap demo test lint unit netns e2e clean-test-leftovers

bootstrap:
	@scripts/bootstrap

demo: bootstrap
	@scripts/demo

lint: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

clean-test-leftovers: bootstrap
	@$(PY) -m localcluster.teardown --test-leftovers

test: lint clean-test-leftovers
	$(PY) -m pytest tests

unit: bootstrap
	$(PY) -m pytest tests/unit
netns: bootstrap
	$(PY) -m pytest tests/netns
e2e: bootstrap
	$(PY) -m pytest tests/e2e
