#!/usr/bin/env bash
# Multi-node training with DeepSpeed's own launcher: it ssh-es into every host of the hostfile and
# starts one process per slot. Use it on machines you reach by passwordless ssh and no scheduler;
# under SLURM use scripts/slurm/train.sbatch (torchrun, started by srun) instead.
#   scripts/multinode_deepspeed.sh scripts/hostfile configs/train/dit-tiny.yaml [--set key=value ...]
# Re-running the same command resumes from the newest checkpoint in the config's out/checkpoints.
set -euo pipefail

HOSTFILE=${1:?usage: $0 HOSTFILE CONFIG.yaml [--set key=value ...]}
CONFIG=${2:?usage: $0 HOSTFILE CONFIG.yaml [--set key=value ...]}
shift 2
MASTER_ADDR=${MASTER_ADDR:-$(grep -v '^\s*#' "$HOSTFILE" | awk 'NF {print $1; exit}')}

# --no_local_rank: osp.cli.train reads LOCAL_RANK from the environment, not a --local_rank argument.
deepspeed --hostfile "$HOSTFILE" --no_local_rank --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}" \
    --module osp.cli.train --config "$CONFIG" "$@"
