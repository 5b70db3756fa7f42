#!/usr/bin/env bash
# Score a whole corpus with a trained scorer (`lqs score`) with torchrun, one node or several.
#   SCORER=checkpoints/scorer DATA=data/cc_scorer OUT=scores/cc scripts/scorer/infer.sh        # one node, 8 GPUs
#   NNODES=4 NODE_RANK=0 MASTER_ADDR=node0 SCORER=... DATA=... OUT=... scripts/scorer/infer.sh  # on node0
#   NNODES=4 NODE_RANK=1 MASTER_ADDR=node0 SCORER=... DATA=... OUT=... scripts/scorer/infer.sh  # on node1, ...
#
# Required:  SCORER  `lqs train-scorer` output directory (its best/ checkpoint is used)
#            DATA    indexed dataset prefix, tokenized with the scorer's tokenizer (lqs retokenize)
#            OUT     output directory (OUT/scores.npy); on a filesystem every node sees
# Optional:  TOKENIZER (the data's tokenizer, checked against the scorer's), MAX_TOKENS (32768 per batch),
#            PART_SIZE (100000 sequences per restartable part), COMPILE (1: torch.compile)
# torchrun:  GPUS_PER_NODE (8), NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500):
#            scripts/_torchrun.sh
# Extra arguments are passed to `lqs score` unchanged. Rerunning the same command after an interruption
# computes only the parts that are not on disk yet.
set -euo pipefail

: "${SCORER:?set SCORER to the lqs train-scorer output directory}"
: "${DATA:?set DATA to the indexed dataset prefix to score}"
: "${OUT:?set OUT to the output directory}"
MAX_TOKENS=${MAX_TOKENS:-32768}
PART_SIZE=${PART_SIZE:-${SHARD_SIZE:-100000}}  # SHARD_SIZE: its old name
source "$(dirname "${BASH_SOURCE[0]}")/../_torchrun.sh"

# bf16 backbone, length-bucketed batches of MAX_TOKENS tokens (PDS/DELT: batches of 128 x 1024 tokens).
args=(--scorer "$SCORER" --data "$DATA" --out "$OUT" --max-tokens "$MAX_TOKENS" --part-size "$PART_SIZE")
[[ -n "${TOKENIZER:-}" ]] && args+=(--tokenizer "$TOKENIZER")
[[ "${COMPILE:-0}" == 1 ]] && args+=(--compile)

set -x
exec "${lqs_torchrun[@]}" score "${args[@]}" "$@"
