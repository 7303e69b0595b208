#!/usr/bin/env bash
#SBATCH --job-name=lvod-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=16
#SBATCH --time=3-00:00:00
#SBATCH --output=%x-%j.out
#
# Train an lvod config on several machines under SLURM: one task per node, each running
# `lvod train` with its node rank; lvod then starts torchrun on its node, one process per
# GPU, all meeting at the first node of the allocation (static rendezvous).
#
#   sbatch [--nodes N] [--gres gpu:G] tools/slurm_train.sh CONFIG WORK_DIR [lvod train options] [key=value ...]
#
# e.g. 2 nodes x 4 GPUs (the #SBATCH defaults above):
#   sbatch tools/slurm_train.sh configs/vid/fgfa/fgfa_faster_rcnn_r50_dc5_1x_imagenetvid.toml work_dirs/fgfa_2x4
#
# - WORK_DIR must be on a file system every node sees: rank 0 writes the checkpoints and
#   every node reads WORK_DIR/latest.pth on a resume. Submitting the same command again
#   resumes the run (lvod train resumes from WORK_DIR/latest.pth when it exists).
# - The learning rate follows the total batch (nodes x GPUs x data.imgs_per_gpu) by the
#   linear scaling rule, as on one machine.
# - Environment: GPUS_PER_NODE (default: SLURM_GPUS_ON_NODE, else the GPUs nvidia-smi
#   lists), MASTER_PORT (default 29500), LVOD (the command, default "lvod"; e.g.
#   "python -m lvod.cli" or a virtual environment's bin/lvod).
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: sbatch [--nodes N] [--gres gpu:G] $0 CONFIG WORK_DIR [lvod train options] [key=value ...]" >&2
    exit 2
fi
CONFIG=$1
WORK_DIR=$2
shift 2
: "${SLURM_JOB_NODELIST:?submit this script with sbatch: it reads the allocation from the SLURM environment}"

NNODES=${SLURM_NNODES:-${SLURM_JOB_NUM_NODES:?SLURM_NNODES is not set}}
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-}}
if [ -z "$GPUS_PER_NODE" ] && command -v nvidia-smi > /dev/null; then
    GPUS_PER_NODE=$(nvidia-smi -L | wc -l)
fi
if [ -z "$GPUS_PER_NODE" ] || [ "$GPUS_PER_NODE" -lt 1 ]; then
    echo "$0: cannot tell the GPUs per node: request them (--gres gpu:G) or set GPUS_PER_NODE" >&2
    exit 2
fi
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)  # sed reads all: no SIGPIPE under pipefail
: "${MASTER_ADDR:?scontrol listed no host for $SLURM_JOB_NODELIST}"
MASTER_PORT=${MASTER_PORT:-29500}
LVOD=${LVOD:-lvod}
export CONFIG WORK_DIR NNODES GPUS_PER_NODE MASTER_ADDR MASTER_PORT LVOD

echo "lvod: $NNODES nodes x $GPUS_PER_NODE GPUs, rendezvous at $MASTER_ADDR:$MASTER_PORT, run folder $WORK_DIR"
# one task per node; SLURM_NODEID (0..N-1) is read inside each task
srun --nodes "$NNODES" --ntasks "$NNODES" --ntasks-per-node 1 --kill-on-bad-exit=1 \
    bash -c 'exec $LVOD train "$CONFIG" "$@" --work-dir "$WORK_DIR" --gpus "$GPUS_PER_NODE" \
        --nnodes "$NNODES" --node-rank "$SLURM_NODEID" --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT"' \
    lvod-node "$@"
