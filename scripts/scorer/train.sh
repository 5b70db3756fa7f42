#!/usr/bin/env bash
# Train the data scorer (`lqs train-scorer`) with torchrun, one node or several (data parallel).
#   DATA=scorer_data BASE=checkpoints/fairseq-125M scripts/scorer/train.sh                 # one node, 8 GPUs
#   DATA=scorer_data MODEL_CONFIG=160M TOKENIZER=tok/ scripts/scorer/train.sh              # random init
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 DATA=... BASE=... scripts/scorer/train.sh        # on node0
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 DATA=... BASE=... scripts/scorer/train.sh        # on node1
#
# Required:  DATA          directory written by `lqs prepare-scorer-data`
#            BASE          local HF causal-LM directory (or a lqs checkpoint) for the backbone, or else
#            MODEL_CONFIG  a named model config (random init) together with TOKENIZER
# Optional:  TOKENIZER (with BASE: the base's own), OUT (checkpoints/scorer), EPOCHS (5), LR (1e-4),
#            GLOBAL_BATCH_SIZE (512), MICRO_BATCH_SIZE (16), MAX_LENGTH (1024), WARMUP (10), SEED (10)
# torchrun:  GPUS_PER_NODE (8), NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500):
#            scripts/_torchrun.sh
# Extra arguments are passed to `lqs train-scorer` unchanged (later flags override these defaults).
# Rerunning the same command continues an interrupted run (--resume from the newest valid OUT/step_X).
set -euo pipefail

: "${DATA:?set DATA to the directory written by lqs prepare-scorer-data}"
OUT=${OUT:-checkpoints/scorer}
EPOCHS=${EPOCHS:-5}
LR=${LR:-1e-4}
GLOBAL_BATCH_SIZE=${GLOBAL_BATCH_SIZE:-512}
MICRO_BATCH_SIZE=${MICRO_BATCH_SIZE:-16}
MAX_LENGTH=${MAX_LENGTH:-1024}
WARMUP=${WARMUP:-10}
SEED=${SEED:-10}
source "$(dirname "${BASH_SOURCE[0]}")/../_torchrun.sh"

if [[ -n "${BASE:-}" ]]; then
  model=(--base "$BASE")
  [[ -n "${TOKENIZER:-}" ]] && model+=(--tokenizer "$TOKENIZER")
elif [[ -n "${MODEL_CONFIG:-}" ]]; then
  : "${TOKENIZER:?MODEL_CONFIG needs TOKENIZER (the vocabulary comes from it)}"
  model=(--model-config "$MODEL_CONFIG" --tokenizer "$TOKENIZER")
else
  echo "set BASE (an HF causal-LM directory) or MODEL_CONFIG and TOKENIZER" >&2
  exit 2
fi

# The PDS/DELT scorer recipe: fairseq-dense-125M backbone, mean pooling, linear head with bias, MSE;
# 5 epochs, AdamW (lr 1e-4, weight decay 0.01), 10 warm-up steps then cosine, clipping at 1.0,
# global batch 512 (16 per GPU x 2 accumulation x 16 GPUs), sequences of 1024 tokens.
args=(
  "${model[@]}" --data "$DATA" --out "$OUT" --epochs "$EPOCHS" --lr "$LR"
  --global-batch-size "$GLOBAL_BATCH_SIZE" --micro-batch-size "$MICRO_BATCH_SIZE" --max-length "$MAX_LENGTH"
  --warmup-steps "$WARMUP" --weight-decay 0.01 --clip-grad 1.0 --seed "$SEED" --resume
)

set -x
exec "${lqs_torchrun[@]}" train-scorer "${args[@]}" "$@"
