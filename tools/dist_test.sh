#!/usr/bin/env bash
# tools/dist_test.sh CONFIG CHECKPOINT NGPUS [test.py args...]
# One node:   tools/dist_test.sh configs/toy/tree2d_baseline.py work_dirs/tree2d_baseline 8 --num 50000
# Multi-node: run on every node with NNODES, NODE_RANK, MASTER_ADDR (and PORT) set.
set -euo pipefail
CONFIG=$1
CHECKPOINT=$2
NGPUS=$3
shift 3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
DIR=$(cd "$(dirname "$0")/.." && pwd)
# torchrun's own parser would read --num as an abbreviation of its --numa-binding: pass the long spelling.
ARGS=()
for a in "$@"; do
    case $a in
        --num) ARGS+=(--num-samples) ;;
        --num=*) ARGS+=("--num-samples=${a#--num=}") ;;
        *) ARGS+=("$a") ;;
    esac
done
PYTHONPATH="$DIR:${PYTHONPATH:-}" exec python -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" --master_port="$PORT" \
    --nproc_per_node="$NGPUS" \
    "$DIR/tools/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch ${ARGS[@]+"${ARGS[@]}"}
