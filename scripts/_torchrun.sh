#!/usr/bin/env bash
# The torchrun command of the launch scripts under scripts/ (source it; do not run it directly):
#   MASTER_PORT=${MASTER_PORT:-29501}              # a launcher's own default, before sourcing, if it has one
#   source "$(dirname "${BASH_SOURCE[0]}")/../_torchrun.sh"
#   exec "${lqs_torchrun[@]}" SUBCOMMAND FLAGS...   # `lqs SUBCOMMAND` on every process of the job (exec: Slurm's
#                                                  # signals reach torchrun)
# torchrun:  GPUS_PER_NODE (8), NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500);
#            TORCHRUN (torchrun) is the command itself (the tests put `echo` there). OMP_NUM_THREADS: 4 unless set.
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
# shellcheck disable=SC2034  # used by the script that sources this one
lqs_torchrun=(
  "${TORCHRUN:-torchrun}" --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$GPUS_PER_NODE"
  --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" -m lqs_megatron
)
