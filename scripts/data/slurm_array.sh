#!/usr/bin/env bash
# One shard of a corpus-wide step per Slurm array task: tokenize, retokenize, score or export-jsonl.
# The shard comes from the array (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT);
# each task writes OUT.shard-IIIII-of-NNNNN and skips its work if that shard is already finished, so
# resubmitting the same array after a failure redoes only the unfinished shards.
#
#   jid=$(sbatch --parsable --array=0-63%16 --cpus-per-task=16 scripts/data/slurm_array.sh \
#         tokenize --input 'cc/*.jsonl.zst' big.parquet --tokenizer tok --out data/cc)
#   sbatch --dependency=afterok:$jid --wrap "lqs merge --shards data/cc"        # -> data/cc.bin/.idx
#
#   sbatch --array=0-31 --gpus=1 scripts/data/slurm_array.sh score --scorer ckpt/scorer --data data/cc --out scores/cc
#
# Arguments: the lqs subcommand and its flags (--shard is taken from the array; do not pass it).
# Optional:  LQS (the lqs command, default `lqs`), WORKERS (tokenize/retokenize processes, default
#            SLURM_CPUS_PER_TASK), OMP_NUM_THREADS (default 1 for the tokenizers, 4 for score).
# docs/data.md, "Sharded runs", has the worked example.
#SBATCH --job-name=lqs-shard
#SBATCH --output=lqs-shard-%A_%a.log
set -euo pipefail

: "${SLURM_ARRAY_TASK_ID:?run this through sbatch --array=0-<N-1> (SLURM_ARRAY_TASK_ID is not set)}"
: "${SLURM_ARRAY_TASK_COUNT:?SLURM_ARRAY_TASK_COUNT is not set (Slurm >= 17.11 sets it for arrays)}"
step=${1:?give the lqs subcommand (tokenize, retokenize, score, export-jsonl) and its flags}
shift

args=("$@")
case "$step" in
  tokenize|retokenize)
    if [[ -n "${WORKERS:-${SLURM_CPUS_PER_TASK:-}}" && " ${args[*]} " != *" --workers "* ]]; then
      args+=(--workers "${WORKERS:-$SLURM_CPUS_PER_TASK}")
    fi
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} ;;
  score) export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} ;;
  export-jsonl) export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} ;;
  *) echo "slurm_array.sh: '$step' is not a sharded step (tokenize, retokenize, score, export-jsonl)" >&2; exit 2 ;;
esac

echo "shard $((SLURM_ARRAY_TASK_ID - ${SLURM_ARRAY_TASK_MIN:-0})) of $SLURM_ARRAY_TASK_COUNT: lqs $step ${args[*]}" >&2
exec ${LQS:-lqs} "$step" "${args[@]}"
