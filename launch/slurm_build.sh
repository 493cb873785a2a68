#!/usr/bin/env bash
# Build shards on a Slurm cluster without Ray: one array task per slice of the build's tasks, then one
# job that writes the manifest (and runs the near-duplicate pass) once the array has finished.
#
#   SOURCE=pdf INPUT=/data/pdfs.txt OUTPUT=/data/shards/pdf ARRAY=64 sbatch --array=0-63 launch/slurm_build.sh
#   sbatch --dependency=afterok:<array job id> --export=ALL,FINALIZE=1 launch/slurm_build.sh   # same extra args
#
# Task i of n runs build tasks i, i+n, i+2n, ... with all CPUs of its node; finished shards are skipped, so a
# failed or preempted array task is simply resubmitted.
#SBATCH --job-name=literate-build
#SBATCH --cpus-per-task=16
#SBATCH --mem=64G
#SBATCH --time=24:00:00
#SBATCH --output=logs/build-%A_%a.out
set -euo pipefail
: "${SOURCE:?set SOURCE (pdf, scan, powerpoint, arxiv, ...)}"
: "${INPUT:?set INPUT (a folder, glob or list file)}"
: "${OUTPUT:?set OUTPUT (the shard folder)}"
# Under Slurm the script runs from a spooled copy: the checkout is the submit folder (or LITERATE_DIR).
cd "${LITERATE_DIR:-${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}}"
PY=${PY:-.venv/bin/python}
WORKERS=${WORKERS:-${SLURM_CPUS_PER_TASK:-$(nproc)}}
if [ "${FINALIZE:-0}" = 1 ]; then
  exec "$PY" -m data_pipeline.build source="$SOURCE" input="$INPUT" output="$OUTPUT" workers="$WORKERS" manifest_only=true "$@"
fi
: "${SLURM_ARRAY_TASK_ID:?submit with sbatch --array=0-(N-1)}"
COUNT=${ARRAY:-${SLURM_ARRAY_TASK_COUNT:?set ARRAY to the array size}}
exec "$PY" -m data_pipeline.build source="$SOURCE" input="$INPUT" output="$OUTPUT" workers="$WORKERS" \
  task_index="$SLURM_ARRAY_TASK_ID" task_count="$COUNT" "$@"
