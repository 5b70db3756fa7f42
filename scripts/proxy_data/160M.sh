#!/usr/bin/env bash
# proxy_data/160M: LQS annotation of the proxy set with the 160M annotation model (the original
# `data_scorer/lqs/scripts/proxy_data/160M.sh`). A thin call of scripts/annotation/160M.sh, which
# documents every variable (MODEL, TRAIN, TARGET, PROXY, OUT, METHOD, NNODES, ...); extra
# arguments go to `lqs annotate`.
exec "$(dirname "$0")/../annotation/160M.sh" "$@"
