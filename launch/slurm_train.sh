#!/usr/bin/env bash
# Multi-node training under Slurm, one task per node; each task runs the deepspeed launcher for its node's
# GPUs with the rendezvous on the first node. Preemption: Slurm sends SIGUSR1 90 s before the time limit,
# the trainer checkpoints and exits, and a requeued job resumes from that checkpoint. A run that fails (a rank's
# watchdog ended a hung job, a node died) is requeued too, up to LITERATE_MAX_RESTARTS times; a config error
# (exit 2) or a run stopped by repeated bad steps (exit 3) is not.
#
#   sbatch --nodes=16 launch/slurm_train.sh stage=layout model=kosmos-2.5 data=full tokenizer=/data/tokenizer
#   LITERATE_MODULE=train.finetune sbatch --nodes=2 launch/slurm_train.sh init=runs/mixed-kosmos-2.5 method=lora ...
#
# Ranks per node: the node's GPUs, or LITERATE_RANKS_PER_NODE (CPU nodes: tests/test_slurm.py runs this script on a
# Slurm cluster of CPU nodes with --gpus-per-node=0 and DS_ACCELERATOR=cpu). The rendezvous is the first node's
# NodeAddr, which is its host name unless slurm.conf says otherwise.
#SBATCH --job-name=literate-train
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=48:00:00
#SBATCH --signal=USR1@90
#SBATCH --requeue
#SBATCH --output=logs/train-%j.out
#SBATCH --open-mode=append  # a requeued job adds to its log instead of overwriting the failed attempt's
set -euo pipefail
cd "${LITERATE_DIR:-$SLURM_SUBMIT_DIR}"
FIRST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_ADDR=$(scontrol show node "$FIRST" -o | sed -n 's/.* NodeAddr=\([^ ]*\).*/\1/p')
RANKS_PER_NODE=${LITERATE_RANKS_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
export MASTER_ADDR=${MASTER_ADDR:-$FIRST} MASTER_PORT=${MASTER_PORT:-29500} RANKS_PER_NODE
set +e
# With --no_ssh each node's launcher starts its own ranks; it learns the world from a hostfile of the job's nodes.
srun --kill-on-bad-exit=1 bash -c '
  hosts=$(mktemp "${TMPDIR:-/tmp}/literate-hostfile.XXXXXX")
  scontrol show hostnames "$SLURM_JOB_NODELIST" | sed "s/\$/ slots=$RANKS_PER_NODE/" > "$hosts"
  .venv/bin/deepspeed --hostfile "$hosts" --no_ssh --node_rank "$SLURM_NODEID" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --no_local_rank \
    --module "${LITERATE_MODULE:-train.pretrain}" "$@"' _ "$@"
code=$?
if [ "$code" -ne 0 ] && [ "$code" -ne 2 ] && [ "$code" -ne 3 ] \
   && [ "${SLURM_RESTART_COUNT:-0}" -lt "${LITERATE_MAX_RESTARTS:-10}" ]; then
  echo "training exited with code $code: requeueing job $SLURM_JOB_ID to resume from its last checkpoint" >&2
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$code"
