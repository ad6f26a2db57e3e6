#!/bin/bash
# Multi-node SFT on SLURM: one `accelerate launch` per node, each starting one process per GPU.
#
#   sbatch --nodes=4 scripts/slurm_multinode.sh recipes/my_run.yaml [section.key=value ...]
#
# ENGINE (ddp, fsdp, zero2, zero3 or a path to an accelerate config), GPUS_PER_NODE and MASTER_PORT
# can be set in the environment. The global batch is
# per_device_train_batch_size x gradient_accumulation_steps x nodes x GPUS_PER_NODE.
# Run from the repository root (or anywhere `python -m sft.cli` resolves to this project).
#SBATCH --job-name=dlm-sft
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
#SBATCH --output=logs/%x-%j.out

set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: sbatch --nodes=N scripts/slurm_multinode.sh RECIPE.yaml [section.key=value ...]" >&2
    exit 2
fi

ENGINE=${ENGINE:-zero3}
case "$ENGINE" in
    ddp|fsdp|zero2|zero3) CONFIG="recipes/accelerate/${ENGINE}.yaml" ;;
    *) CONFIG="$ENGINE" ;;
esac
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
NNODES=${SLURM_NNODES:-1}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-29500}
NUM_PROCESSES=$((NNODES * GPUS_PER_NODE))

# Every node reads the same recipe and writes checkpoints to training.output_dir: it must be on a
# shared file system. The data is tokenized once into data.cache_dir (shared as well), here, on this
# first node with all its cores, before any rank starts; the ranks then read that cache.
python -m sft.cli train "$@" --tokenize-only
# Single quotes: $SLURM_NODEID is expanded by each task on its own node, not here.
srun --ntasks-per-node=1 bash -c '
    exec accelerate launch \
        --config_file "$0" \
        --num_machines "$1" \
        --num_processes "$2" \
        --machine_rank "$SLURM_NODEID" \
        --main_process_ip "$3" \
        --main_process_port "$4" \
        --rdzv_backend static \
        --same_network \
        -m sft.cli train "${@:5}"
' "$CONFIG" "$NNODES" "$NUM_PROCESSES" "$MASTER_ADDR" "$MASTER_PORT" "$@"
