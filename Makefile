# One-word entry points. Every target does its own set-up (idempotent).
VENV := .venv
PY   := $(VENV)/bin/python

.PHONY: setup demo test test-unit test-emulation bench clean

setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/daitn run experiments/quickstart.yaml

# Unit tier (no root) first, then the emulation tier (root, real networks),
# then the leftovers check, which must run last.
test: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/unit tests/emulation tests/final

test-unit:
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

test-emulation: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/emulation tests/final

bench: setup
	$(PY) bench/bench_network.py

clean:
	$(VENV)/bin/daitn clean
