.PHONY: install test test-gpu bench lint format

install:
	pip install torch==2.13.0 -e ".[test]"

test:
	python -m pytest -q

test-gpu:
	python -m pytest -q -m gpu

bench:
	for b in benchmarks/*.py; do python $$b || exit 1; done

lint:
	ruff check lqs_megatron tests benchmarks && ruff format --check lqs_megatron tests benchmarks

format:
	ruff format lqs_megatron tests benchmarks && ruff check --fix lqs_megatron tests benchmarks
