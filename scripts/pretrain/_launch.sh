#!/usr/bin/env bash
# Shared body of the scripts/pretrain/*_bsl.sh launchers (source it; do not run it directly).
# The caller sets MODEL (a named config) and LR (the papers' peak learning rate for that size).
#
# Required:  DATA       indexed dataset prefix(es), space-separated (used in stored order)
#            TOKENIZER  tokenizer directory (vocabulary and special tokens)
# Optional:  OUT (checkpoints/<MODEL>_bsl), VALID_DATA, TP (1), MICRO_BATCH_SIZE (8),
#            GLOBAL_BATCH_SIZE (512), STEPS (100000), MAX_LENGTH (1024), SEED (10),
#            WARMUP_STEPS (lqs pretrain's default: min(2000, STEPS / 10), so 2000 for the papers' 100k
#            steps and a short test run such as STEPS=3 still works)
# torchrun:  GPUS_PER_NODE (8), NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500):
#            scripts/_torchrun.sh
# Extra arguments are passed to `lqs pretrain` unchanged (later flags override these defaults).
set -euo pipefail

: "${MODEL:?MODEL must be set by the calling script}"
: "${LR:?LR must be set by the calling script}"
: "${DATA:?set DATA to the training dataset prefix(es)}"
: "${TOKENIZER:?set TOKENIZER to the tokenizer directory}"
OUT=${OUT:-checkpoints/${MODEL}_bsl}
TP=${TP:-1}
GLOBAL_BATCH_SIZE=${GLOBAL_BATCH_SIZE:-512}
MICRO_BATCH_SIZE=${MICRO_BATCH_SIZE:-8}
STEPS=${STEPS:-100000}
MAX_LENGTH=${MAX_LENGTH:-1024}
SEED=${SEED:-10}
source "$(dirname "${BASH_SOURCE[0]}")/../_torchrun.sh"

# The papers' recipe (PDS/DELT "conventional pre-training"): 100k steps of 512 x 1024 tokens,
# AdamW (0.9, 0.98, eps 1e-6, weight decay 0.01), 2000 warm-up steps (at most STEPS / 10), cosine to lr/10,
# clipping at 1.0, data in stored order, validation every 1000 and checkpoints every 5000 steps.
args=(
  --model-config "$MODEL" --tokenizer "$TOKENIZER" --data $DATA --out "$OUT"
  --max-length "$MAX_LENGTH" --global-batch-size "$GLOBAL_BATCH_SIZE" --micro-batch-size "$MICRO_BATCH_SIZE"
  --steps "$STEPS" --lr "$LR" --min-lr "$(python3 -c "print('%g' % ($LR / 10))")"
  --weight-decay 0.01 --adam-beta1 0.9 --adam-beta2 0.98 --adam-eps 1e-6 --clip-grad 1.0
  --seed "$SEED" --tp "$TP" --save-interval 5000 --eval-interval 1000 --resume
)
if [[ -n "${WARMUP_STEPS:-}" ]]; then
  args+=(--warmup-steps "$WARMUP_STEPS")
fi
if [[ -n "${VALID_DATA:-}" ]]; then
  args+=(--valid-data "$VALID_DATA")
fi

set -x
exec "${lqs_torchrun[@]}" pretrain "${args[@]}" "$@"
