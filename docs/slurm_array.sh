#!/bin/bash
# Deface a BIDS dataset on a SLURM cluster with the Deepdefacer Apptainer/Singularity image: one
# participant per array task, every task writing into the same output folder (Deepdefacer writes
# each file under a temporary name and renames it, and shares dataset_description.json safely).
#
#   # once: validate the input (the tasks then skip validation) and count the participants
#   apptainer exec --cleanenv -B /data/bids:/bids:ro deepdefacer.sif bids-validator-deno /bids
#   n=$(find /data/bids -mindepth 1 -maxdepth 1 -type d -name 'sub-*' | wc -l)
#   mkdir -p logs
#   sbatch --array=1-"$n"%50 docs/slurm_array.sh /data/bids /data/bids-defaced
#
# Environment: DEEPDEFACER_SIF (default ./deepdefacer.sif); DEEPDEFACER_GPU=1 to run on a GPU (add
# e.g. --gres=gpu:1 to sbatch, and use an image built with VARIANT=gpu); DEEPDEFACER_ARGS for more
# options (e.g. "--layout bids" or "--mask-from T1w"). A failed task can be resubmitted alone
# (sbatch --array=17 ...): scans already defaced with the same input and model are skipped.
#SBATCH --job-name=deepdefacer
#SBATCH --cpus-per-task=4
#SBATCH --mem=8G
#SBATCH --time=01:00:00
#SBATCH --output=logs/deepdefacer_%A_%a.log
set -euo pipefail

if [ $# -ne 2 ] || [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then
  echo "usage: sbatch --array=1-N $0 BIDS_DIR OUTPUT_DIR" >&2
  exit 2
fi
bids_dir=$(realpath "$1")
output_dir=$(realpath -m "$2")
sif=${DEEPDEFACER_SIF:-deepdefacer.sif}

# Task i processes the i-th participant folder in sorted order (the same list in every task).
mapfile -t participants < <(find "$bids_dir" -mindepth 1 -maxdepth 1 -type d -name 'sub-*' \
                              -printf '%f\n' | sort)
index=$((SLURM_ARRAY_TASK_ID - 1))
if [ "$index" -ge "${#participants[@]}" ]; then
  echo "task $SLURM_ARRAY_TASK_ID: only ${#participants[@]} participants, nothing to do"
  exit 0
fi
participant=${participants[$index]}
mkdir -p "$output_dir"

gpu_options=() device=cpu
if [ "${DEEPDEFACER_GPU:-0}" = 1 ]; then
  gpu_options=(--nv)
  device=gpu
fi
# Node-local scratch for the container's /tmp (HOME, Keras and TensorFlow caches point there).
scratch=$(mktemp -d "${TMPDIR:-/tmp}/deepdefacer.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

echo "task $SLURM_ARRAY_TASK_ID: $participant on $(hostname), $SLURM_CPUS_PER_TASK CPUs, device $device"
# shellcheck disable=SC2086  # DEEPDEFACER_ARGS: several options, split on purpose
apptainer run --cleanenv --containall "${gpu_options[@]}" \
  -B "$bids_dir":/bids:ro -B "$output_dir":/out -B "$scratch":/tmp \
  "$sif" /bids /out participant --participant-label "$participant" \
  --skip-bids-validation --device "$device" ${DEEPDEFACER_ARGS:-}
