#!/usr/bin/env bash
# Pretrain the PDS/DELT 160M baseline (Mistral, peak lr 6e-4) with torchrun, one node or several.
#   DATA=data/cc TOKENIZER=tok/ scripts/pretrain/160M_bsl.sh                  # one node, 8 GPUs
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 DATA=... TOKENIZER=... scripts/pretrain/160M_bsl.sh  # on node0
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 DATA=... TOKENIZER=... scripts/pretrain/160M_bsl.sh  # on node1
# Every setting and its default: scripts/pretrain/_launch.sh. Extra flags go to `lqs pretrain`.
MODEL=160M LR=6e-4 source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" "$@"
