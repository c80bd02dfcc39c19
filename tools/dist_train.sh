#!/usr/bin/env bash
# tools/dist_train.sh CONFIG NGPUS [train.py args...]
# One node:   tools/dist_train.sh configs/toy/tree2d_baseline.py 8
# Multi-node: run on every node with NNODES, NODE_RANK, MASTER_ADDR (and PORT) set.
set -euo pipefail
CONFIG=$1
NGPUS=$2
shift 2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
DIR=$(cd "$(dirname "$0")/.." && pwd)
for var in NGPUS NNODES; do
    [[ ${!var} =~ ^[1-9][0-9]*$ ]] || { echo "error: $var must be a positive integer, got '${!var}'" >&2; exit 2; }
done
# Validate the config for the whole world before starting workers: one clean line instead of one per worker plus
# torchrun's ChildFailedError traceback.
PYTHONPATH="$DIR:${PYTHONPATH:-}" python "$DIR/tools/train.py" "$CONFIG" "$@" \
    --check-world-size $((NNODES * NGPUS)) || exit $?
PYTHONPATH="$DIR:${PYTHONPATH:-}" exec python -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" --master_port="$PORT" \
    --nproc_per_node="$NGPUS" \
    "$DIR/tools/train.py" "$CONFIG" --launcher pytorch "$@"
