.PHONY: install test test-gpu bench lint format

install:
	pip install torch==2.13.0 -e ".[test]"

test:
	python -m pytest -q -n auto --dist worksteal

test-gpu:
	python -m pytest -q -m gpu

# Every benchmark at its default (CPU) size, one after another: hours on 2 cores. The GPU figures
# come from scripts/gpu_check.sh; each script alone: python benchmarks/NAME.py --help.
BENCHMARKS = annotate bench_checkpoint bench_curate bench_distopt bench_grad_stats bench_lm_head_stats \
	bench_per_example_loss score threads tokenize tokenize_scale train
bench:
	for b in $(BENCHMARKS); do python benchmarks/$$b.py || exit 1; done
	python benchmarks/quality.py --work bench_out/quality

lint:
	ruff check lqs_megatron tests benchmarks && ruff format --check lqs_megatron tests benchmarks

format:
	ruff format lqs_megatron tests benchmarks && ruff check --fix lqs_megatron tests benchmarks
