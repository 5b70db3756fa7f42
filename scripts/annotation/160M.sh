#!/usr/bin/env bash
# LQS annotation with the 160M annotation model (the papers' settings) under torchrun, one node or several.
#   MODEL=ckpt/160M_hf TRAIN=data/cc TARGET=data/lima PROXY=data/proxy scripts/annotation/160M.sh         # one node
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 MODEL=... TRAIN=... TARGET=... PROXY=... scripts/annotation/160M.sh  # node0
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 MODEL=... TRAIN=... TARGET=... PROXY=... scripts/annotation/160M.sh  # node1
#
# Required:  MODEL   HF directory (or lqs checkpoint) of the annotation model theta_0
#            TRAIN   indexed-dataset prefix of the train stream (used in stored order)
#            TARGET  indexed-dataset prefix of the target set (e.g. LIMA)
#            PROXY   indexed-dataset prefix of the proxy set to score
# Optional:  OUT (annotation/160M), METHOD (lqs | pds), STEPS=T (100), INTERVAL=K (10), LR=eta (0.008),
#            BATCH_SIZE=B (16, global), MAX_LENGTH=L (1024), MICRO_BATCH_SIZE (4, train/target per rank),
#            PROXY_BATCH_SIZE (16, per rank), PRECISION (fp32 | bf16 | fp64; DTYPE float32 | bf16 | float64
#            is still read), TP (1), CKPT_DIR (OUT/trajectory)
# torchrun:  GPUS_PER_NODE (8), NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), MASTER_PORT (29501):
#            scripts/_torchrun.sh
# The run resumes by itself: relaunch the same command after a failure (--resume). Extra arguments go to
# `lqs annotate` unchanged (later flags override these). Memory and time: docs/annotation.md.
set -euo pipefail

: "${MODEL:?set MODEL to the annotation model (HF directory)}"
: "${TRAIN:?set TRAIN to the train-stream dataset prefix}"
: "${TARGET:?set TARGET to the target-set dataset prefix}"
: "${PROXY:?set PROXY to the proxy-set dataset prefix}"
OUT=${OUT:-annotation/160M}
METHOD=${METHOD:-lqs}
STEPS=${STEPS:-100}
INTERVAL=${INTERVAL:-10}
LR=${LR:-0.008}
BATCH_SIZE=${BATCH_SIZE:-16}
MAX_LENGTH=${MAX_LENGTH:-1024}
MICRO_BATCH_SIZE=${MICRO_BATCH_SIZE:-4}
PROXY_BATCH_SIZE=${PROXY_BATCH_SIZE:-16}
if [[ -z "${PRECISION:-}" ]]; then
  case "${DTYPE:-float32}" in float64) PRECISION=fp64 ;; bf16) PRECISION=bf16 ;; *) PRECISION=fp32 ;; esac
fi
TP=${TP:-1}
MASTER_PORT=${MASTER_PORT:-29501}
source "$(dirname "${BASH_SOURCE[0]}")/../_torchrun.sh"

args=(
  --model "$MODEL" --train "$TRAIN" --target "$TARGET" --proxy "$PROXY" --out "$OUT"
  --steps "$STEPS" --interval "$INTERVAL" --lr "$LR" --global-batch-size "$BATCH_SIZE" --max-length "$MAX_LENGTH"
  --method "$METHOD" --micro-batch-size "$MICRO_BATCH_SIZE" --proxy-batch-size "$PROXY_BATCH_SIZE"
  --precision "$PRECISION" --tp "$TP" --resume
)
if [[ -n "${CKPT_DIR:-}" ]]; then
  args+=(--ckpt-dir "$CKPT_DIR")
fi

set -x
exec "${lqs_torchrun[@]}" annotate "${args[@]}" "$@"
