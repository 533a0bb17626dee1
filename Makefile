# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PQ = $(VENV)/bin/pqorder

.PHONY: setup demo test lint bench bench-vision clean-cache

setup:
	bash scripts/setup.sh

demo: setup
	$(PQ) demo

test: setup
	$(VENV)/bin/python -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

bench: setup
	$(VENV)/bin/python benchmarks/compress.py --eval

bench-vision: setup
	$(VENV)/bin/python benchmarks/vision.py
