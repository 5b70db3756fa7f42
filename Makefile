.PHONY: install test test-gpu bench lint format

install:
	pip install torch==2.13.0 -e ".[test]"

test:
	python -m pytest -q -n auto --dist worksteal

test-gpu:
	python -m pytest -q -m gpu

# Every benchmark at its default (CPU) size, one after another: hours on 2 cores. The GPU figures
# come from scripts/gpu_check.sh; each script alone: python benchmarks/NAME.py --help.
BENCHMARKS = bench_annotate bench_checkpoint bench_curate bench_distopt bench_grad_stats bench_lm_head_stats bench_online \
	bench_per_example_loss bench_score bench_threads bench_tokenize bench_tokenize_scale bench_train
bench:
	for b in $(BENCHMARKS); do python benchmarks/$$b.py || exit 1; done
	python benchmarks/bench_quality.py --work bench_out/quality

lint:
	ruff check . && ruff format --check .

format:
	ruff format . && ruff check --fix .
