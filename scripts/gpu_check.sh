#!/usr/bin/env bash
# Verify and time the whole GPU path in one command (issue 10): on one H100/H200 with the machine's own
# torch/triton and no network, in under 8 minutes:
#   1. install the project (pip install --no-deps --no-build-isolation -e .);
#   2. the gpu-marked tests: the Triton kernels compiled for real against the torch references, fp32 and bf16;
#   3. the benchmarks at GPU sizes: kernels, annotation (160M, L=1024, bf16), pretraining (160M, L=1024,
#      bf16), scorer inference (125M-class backbone, bf16, length-bucketed), the distributed optimizer (2 dp
#      ranks on the GPU); then, in the time left, pretraining and scoring again under torch.compile;
#   4. one markdown table of every figure with its goal (benchmarks/gpu_table.py).
# Each part runs alone under its own timeout (and the whole under GPU_CHECK_BUDGET seconds), so a failure
# in one part leaves the others' figures. Everything goes under $OUT if set, else gpu_check_out/:
# table.md, env.txt, status.tsv, logs/PART.log, json/PART.jsonl.
#
#   bash scripts/gpu_check.sh             # on the GPU machine
#   bash scripts/gpu_check.sh --dry-run   # the same steps on the CPU at tiny sizes (< 3 minutes on 2 cores)
#
# pytest is the one test dependency the GPU machine may lack: with no network, put its wheels in
# gpu_wheels/ (or WHEELS=DIR) beforehand and the install part installs them from there:
#   pip download pytest pluggy iniconfig packaging --no-deps --only-binary=:all: -d gpu_wheels
# Exit status: 0 when every part succeeded, 1 otherwise (the table is printed either way).
set -uo pipefail

DRY=0
for a in "$@"; do
    case "$a" in
        --dry-run) DRY=1 ;;
        -h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: error: unknown argument $a (expected --dry-run)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT/logs" "$OUT/json"
OUT=$(cd "$OUT" && pwd)
rm -f "$OUT"/status.tsv "$OUT"/json/*.jsonl
PY=${PYTHON:-python3}
if [ "$DRY" = 1 ]; then
    BUDGET=${GPU_CHECK_BUDGET:-170}
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    DEV="--device cpu --tiny"
else
    BUDGET=${GPU_CHECK_BUDGET:-450}
    DEV="--device cuda"
fi
DEADLINE=$(($(date +%s) + BUDGET))

# run_part NAME SECONDS CMD...: CMD's output to logs/NAME.log, its status and time to status.tsv
run_part() {
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE - $(date +%s)))
    if [ "$left" -lt 5 ]; then
        printf '%s\tskipped: out of time\t0\n' "$name" >>"$OUT/status.tsv"
        echo "[gpu_check] $name: skipped (the ${BUDGET}s budget is spent)"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "[gpu_check] $name (timeout ${limit}s): $*"
    local t0 rc st
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$OUT/logs/$name.log" 2>&1
    rc=$?
    case $rc in
        0) st=ok ;;
        124 | 137) st="timeout after ${limit}s" ;;
        *) st="failed (exit $rc)" ;;
    esac
    printf '%s\t%s\t%s\n' "$name" "$st" "$(($(date +%s) - t0))" >>"$OUT/status.tsv"
    echo "[gpu_check] $name: $st"
}

{
    date -u
    "$PY" -c 'import platform, torch; print("python", platform.python_version(), "torch", torch.__version__,
"cuda", torch.version.cuda, "device", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")'
    "$PY" -c 'import triton; print("triton", triton.__version__)' 2>&1
    "$PY" -c 'import importlib.util as u; print("missing:", [m for m in ("pytest", "numpy", "transformers",
"tokenizers", "sentencepiece", "safetensors", "yaml", "tqdm", "pybind11", "setuptools") if not u.find_spec(m)])'
    command -v nvidia-smi >/dev/null && nvidia-smi -L
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if [ "$DRY" = 1 ]; then  # the project is already installed where the dry run runs: check, do not reinstall
    run_part install 60 "$PY" -c "import lqs_megatron, lqs_megatron._C; print('installed:', lqs_megatron.__file__)"
else
    # the project, then pytest from $WHEELS when the machine lacks it
    # shellcheck disable=SC2016 # expanded by the inner shell
    run_part install 120 bash -c '"$0" -m pip install --no-deps --no-build-isolation -e . &&
        { "$0" -c "import pytest" 2>/dev/null || ! [ -d "$1" ] ||
          "$0" -m pip install --no-index --no-deps --find-links "$1" pytest pluggy iniconfig packaging; }' \
        "$PY" "${WHEELS:-gpu_wheels}"
fi
# the gpu-marked tests (skipped on a CPU: the dry run checks that they collect and import); only the files
# that hold some, so that a test module needing a package the GPU machine lacks cannot stop the collection
mapfile -t GPU_TESTS < <(grep -rlE --include='test_*.py' 'mark\.gpu' tests | sort)
run_part gpu-tests 120 "$PY" -m pytest -q -rs -m gpu -p no:cacheprovider -o addopts="" "${GPU_TESTS[@]}"
B="$PY benchmarks"
J="$OUT/json"
if [ "$DRY" = 1 ]; then
    ANNOTATE="--sizes tiny"
    PRETRAIN=""
    SCORE=""
    ONLINE=""
else
    ANNOTATE="--sizes 160M --length 1024 --batch 16 --dtype bf16 --methods vmap --budget-mib 0 --reps 10"
    PRETRAIN="--model-config 160M --seq 1024 --batch 16"
    SCORE="--sequences 10000 --repeats 1"
    ONLINE="--model-config 160M --seq 1024 --batch 8 --c 4 --no-memory"
fi
# shellcheck disable=SC2086 # word splitting of the flag strings is intended
{
    run_part annotate 120 $B/bench_annotate.py $DEV $ANNOTATE --json "$J/annotate.jsonl"
    run_part kernels-loss 60 $B/bench_per_example_loss.py $DEV --quick --json "$J/kernels-loss.jsonl"
    run_part kernels-grad-stats 60 $B/bench_grad_stats.py $DEV --quick --json "$J/kernels-grad-stats.jsonl"
    run_part kernels-lm-head 60 $B/bench_lm_head_stats.py $DEV --quick --json "$J/kernels-lm-head.jsonl"
    run_part pretrain 90 $B/bench_train.py $DEV $PRETRAIN --json "$J/pretrain.jsonl"
    run_part score 100 $B/bench_score.py $DEV $SCORE --json "$J/score.jsonl"
    run_part online 90 $B/bench_online.py $DEV $ONLINE --json "$J/online.jsonl"
    # --distributed-optimizer against DDP + AdamW: 2 data-parallel ranks on the one GPU (gloo)
    run_part distopt 60 $B/bench_distopt.py $DEV --world 2 --json "$J/distopt.jsonl"
    # last, in what time is left: torch.compile (minutes on a CPU, so not in the dry run)
    if [ "$DRY" = 0 ]; then
        run_part pretrain-compile 120 $B/bench_train.py $DEV $PRETRAIN --compile --json "$J/pretrain-compile.jsonl"
        run_part score-compile 120 $B/bench_score.py $DEV $SCORE --compile --json "$J/score-compile.jsonl"
    else
        printf '%s\tskipped: dry run\t0\n' pretrain-compile score-compile >>"$OUT/status.tsv"
    fi
}

NOTE=""
[ "$DRY" = 1 ] && NOTE="DRY RUN on the CPU at tiny sizes: the figures only show that every step runs."
"$PY" benchmarks/gpu_table.py "$OUT" --note "$NOTE" >"$OUT/table.md"
echo
cat "$OUT/table.md"
echo "[gpu_check] table, logs and JSON under $OUT"
if grep -v $'\tok\t' "$OUT/status.tsv" | grep -qv $'\tskipped: dry run\t'; then
    exit 1
fi
