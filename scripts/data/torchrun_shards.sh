#!/usr/bin/env bash
# A corpus-wide step sharded over the processes of a torchrun job, one node or several: every rank is one
# shard (RANK of WORLD_SIZE) of tokenize, retokenize or export-jsonl, writing OUT.shard-IIIII-of-NNNNN;
# node 0 then joins the shards (`lqs merge --shards OUT --wait`, which waits for the other nodes' shards).
#
#   OUT=data/cc scripts/data/torchrun_shards.sh tokenize --input 'cc/*.parquet' --tokenizer tok --out data/cc
#   NNODES=4 NODE_RANK=0 MASTER_ADDR=node0 OUT=data/cc scripts/data/torchrun_shards.sh tokenize ...   # node0
#   NNODES=4 NODE_RANK=1 MASTER_ADDR=node0 OUT=data/cc scripts/data/torchrun_shards.sh tokenize ...   # node1, ...
#
# Required:  OUT (the --out given to the step: what `lqs merge --shards` joins), on a filesystem every node sees.
# Optional:  PROCS_PER_NODE (shards per node, default 8), WORKERS (encoding processes per shard, default
#            cores / PROCS_PER_NODE), MERGE (1: node 0 merges after its shards, default 1), MERGE_WAIT
#            (seconds node 0 waits for the other nodes' shards, default 86400).
# torchrun:  NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500): scripts/_torchrun.sh.
# `lqs score` is data parallel under torchrun itself: use scripts/scorer/infer.sh (one output) or
# scripts/data/slurm_array.sh (shards) for it.
set -euo pipefail

: "${OUT:?set OUT to the --out of the step (the shards OUT.shard-* are merged into it)}"
step=${1:?give the lqs subcommand (tokenize, retokenize, export-jsonl) and its flags}
shift
case "$step" in
  tokenize|retokenize|export-jsonl) ;;
  *) echo "torchrun_shards.sh: '$step' is not sharded by torchrun ranks (tokenize, retokenize, export-jsonl)" >&2
     exit 2 ;;
esac
PROCS_PER_NODE=${PROCS_PER_NODE:-8}
cores=$(nproc 2>/dev/null || echo 8)
WORKERS=${WORKERS:-$(( cores / PROCS_PER_NODE > 1 ? cores / PROCS_PER_NODE : 1 ))}

args=("$@")
[[ "$step" != export-jsonl ]] && args+=(--workers "$WORKERS")
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
GPUS_PER_NODE=$PROCS_PER_NODE
source "$(dirname "${BASH_SOURCE[0]}")/../_torchrun.sh"
set -x
"${lqs_torchrun[@]}" "$step" "${args[@]}"
if [[ "$NODE_RANK" == 0 && "${MERGE:-1}" == 1 ]]; then
  ${LQS:-lqs} merge --shards "$OUT" --wait "${MERGE_WAIT:-86400}"
fi
