#!/usr/bin/env bash
# tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py args...]
# Starts one task per GPU with srun; tools/train.py --launcher slurm maps SLURM_PROCID / SLURM_NTASKS /
# SLURM_LOCALID to RANK / WORLD_SIZE / LOCAL_RANK and rendezvouses on the first node of the step.
#   GPUS=16 tools/slurm_train.sh gpu ajest configs/ajest/edm2_xs_tiny.py work_dirs/ajest --resume
# Environment: GPUS (total, default 8), GPUS_PER_NODE (default 8), CPUS_PER_TASK (default 5),
#              SRUN_ARGS (extra srun options, split on spaces, e.g. "--time=2-00:00:00 --exclusive").
set -euo pipefail

usage() {
    echo "usage: [GPUS=8] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS=...] \\" >&2
    echo "       $0 PARTITION JOB_NAME CONFIG WORK_DIR [train.py args...]" >&2
    exit 2
}
[[ $# -ge 4 ]] || usage

PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
shift 4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
read -r -a SRUN_EXTRA <<< "${SRUN_ARGS:-}"

for var in GPUS GPUS_PER_NODE CPUS_PER_TASK; do
    [[ ${!var} =~ ^[1-9][0-9]*$ ]] || { echo "error: $var must be a positive integer, got '${!var}'" >&2; exit 2; }
done
# A job smaller than a node asks for only the GPUs it uses, not the whole node.
if (( GPUS < GPUS_PER_NODE )); then
    GPUS_PER_NODE=$GPUS
fi
# Check the arithmetic now rather than after waiting in the queue: every node runs the same number of tasks.
if (( GPUS % GPUS_PER_NODE != 0 )); then
    echo "error: GPUS=$GPUS is not a multiple of GPUS_PER_NODE=$GPUS_PER_NODE" >&2
    exit 2
fi

DIR=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$DIR:${PYTHONPATH:-}"
# Validate the config for GPUS processes before the job starts them (one line, not one per task).
python "$DIR/tools/train.py" "$CONFIG" --work-dir "$WORK_DIR" "$@" --check-world-size "$GPUS" || exit $?
set -x
# --kill-on-bad-exit: one failed rank ends the step instead of leaving the others blocked in a collective.
exec srun -p "$PARTITION" \
    --job-name="$JOB_NAME" \
    --gres="gpu:$GPUS_PER_NODE" \
    --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" \
    --cpus-per-task="$CPUS_PER_TASK" \
    --kill-on-bad-exit=1 \
    ${SRUN_EXTRA[@]+"${SRUN_EXTRA[@]}"} \
    python -u "$DIR/tools/train.py" "$CONFIG" --work-dir "$WORK_DIR" --launcher slurm "$@"
