#!/bin/bash
# Deface a BIDS dataset on a SLURM cluster: a job array, CHUNK participants per task, every task
# writing into the same output folder (Deepdefacer writes each file under a temporary name and
# renames it, and shares dataset_description.json safely). Guide: docs/hpc.md.
#
# Submit (run it with bash, not sbatch): it makes logs/, writes the task list once (participants
# sorted with LC_ALL=C, CHUNK to a line: task i reads line i, so the list does not shift if the
# dataset changes later) and submits the array with sbatch; options after the two folders go to sbatch:
#
#   apptainer exec --cleanenv -B /data/bids:/bids:ro deepdefacer.sif bids-validator-deno /bids  # once
#   bash slurm_array.sh /data/bids /data/bids-defaced [--partition=... other sbatch options]
#
# Resubmit some tasks of that list (scans already defaced with the same input and model are skipped):
#
#   sbatch --array=3,17 slurm_array.sh /data/bids /data/bids-defaced logs/deepdefacer_tasks_....txt
#
# Environment, read at submit time (sbatch passes it on to the tasks):
#   CHUNK                participants per task (default 4): the model is loaded once per task
#   DEEPDEFACER_SIF      the Apptainer/Singularity image (default ./deepdefacer.sif)
#   DEEPDEFACER_CMD      run this command instead of the image, e.g. a virtual environment's
#                        /opt/deepdefacer-venv/bin/deepdefacer (no container)
#   DEEPDEFACER_NPROCS   --n-procs, scans defaced in parallel in a task (default: the app's choice,
#                        a process a CPU of the task, as many as --mem holds at ~1.5 GB each)
#   DEEPDEFACER_GPU=1    run on a GPU (add e.g. --gres=gpu:1, and use an image built with VARIANT=gpu)
#   DEEPDEFACER_ARGS     more options for deepdefacer (e.g. "--layout bids" or "--mask-from T1w")
#   DEEPDEFACER_MAX_RUNNING  tasks running at once (default 50)
#
# Memory: 1.25 GB peak measured for a 256x256x256 1 mm scan in one process, 3.25 GB for two;
# with 4G the app runs two processes on the task's 2 CPUs (with 3G, one).
#SBATCH --job-name=deepdefacer
#SBATCH --cpus-per-task=2
#SBATCH --mem=4G
#SBATCH --time=01:00:00
#SBATCH --output=logs/deepdefacer_%A_%a.log
set -euo pipefail

# This script's own path; under sbatch, $0 is the spool copy, so ask SLURM for the submitted one.
script=${DEEPDEFACER_SCRIPT:-}
if [ -z "$script" ] && [ -n "${SLURM_JOB_ID:-}" ] && command -v scontrol >/dev/null; then
  script=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *Command=\([^ ]*\).*/\1/p' | head -n 1)
  case $script in '' | /*) ;; *) script=${SLURM_SUBMIT_DIR:-.}/$script ;; esac
fi
script=${script:-$(realpath "$0")}

usage() {
  echo "usage: bash $script BIDS_DIR OUTPUT_DIR [SBATCH_OPTION...]   (makes logs/ and the task list, submits)" >&2
  echo "   or: sbatch --array=I[,J...] $script BIDS_DIR OUTPUT_DIR TASK_LIST   (resubmit tasks of a list)" >&2
  exit 2
}

# --- submit: not inside a SLURM job --------------------------------------------------------------
if [ -z "${SLURM_JOB_ID:-}" ]; then
  [ $# -ge 2 ] || usage
  bids_dir=$(realpath "$1")
  output_dir=$(realpath -m "$2")
  shift 2
  chunk=${CHUNK:-4}
  [ -d "$bids_dir" ] || { echo "not a folder: $bids_dir" >&2; exit 2; }
  case $chunk in '' | *[!0-9]* | 0) echo "CHUNK must be a positive integer, not '$chunk'" >&2; exit 2 ;; esac
  mkdir -p logs  # sbatch --output=logs/... : without the folder a task fails with no log at all
  tasks=$(realpath "logs/deepdefacer_tasks_$(date +%Y%m%d-%H%M%S)_$$.txt")
  find "$bids_dir" -mindepth 1 -maxdepth 1 -type d -name 'sub-*' -printf '%f\n' | LC_ALL=C sort |
    xargs -r -n "$chunk" echo > "$tasks"
  n_tasks=$(wc -l < "$tasks")
  [ "$n_tasks" -gt 0 ] || { echo "no sub-* folders in $bids_dir" >&2; rm -f "$tasks"; exit 2; }
  echo "$(wc -w < "$tasks") participants, $chunk a task: $n_tasks tasks, list in $tasks"
  export DEEPDEFACER_SCRIPT=$script
  job=$(sbatch --parsable --array=1-"$n_tasks"%"${DEEPDEFACER_MAX_RUNNING:-50}" "$@" \
          "$script" "$bids_dir" "$output_dir" "$tasks")
  echo "Submitted batch job ${job%%;*}"
  echo "logs: logs/deepdefacer_${job%%;*}_<task>.log; resubmit tasks with:"
  echo "  sbatch --array=I[,J...] $script $bids_dir $output_dir $tasks"
  exit 0
fi

# --- one array task ------------------------------------------------------------------------------
if [ $# -ne 3 ] || [ -z "${SLURM_ARRAY_TASK_ID:-}" ] || [ ! -f "$3" ]; then
  echo "job $SLURM_JOB_ID: needs an array index and three arguments, the last an existing task list" >&2
  usage
fi
bids_dir=$(realpath "$1") output_dir=$(realpath -m "$2") tasks=$3
labels=$(sed -n "${SLURM_ARRAY_TASK_ID}p" "$tasks")
if [ -z "$labels" ]; then
  echo "task $SLURM_ARRAY_TASK_ID: only $(wc -l < "$tasks") tasks in $tasks, nothing to do"
  exit 0
fi
read -r -a participants <<< "$labels"
mkdir -p "$output_dir"

cpus=${SLURM_CPUS_PER_TASK:-1}
# Processes and threads: the app sizes them from the task's CPUs (its affinity and
# SLURM_CPUS_PER_TASK) and memory (SLURM_MEM_PER_NODE), unless DEEPDEFACER_NPROCS says.
n_procs=(--nprocs "$cpus")
[ -n "${DEEPDEFACER_NPROCS:-}" ] && n_procs+=(--n-procs "$DEEPDEFACER_NPROCS")
device=cpu
[ "${DEEPDEFACER_GPU:-0}" = 1 ] && device=gpu
echo "task $SLURM_ARRAY_TASK_ID: ${participants[*]} on $(hostname), $cpus CPUs, device $device"

started=$(date +%s%N)
status=0
if [ -n "${DEEPDEFACER_CMD:-}" ]; then
  # shellcheck disable=SC2086  # DEEPDEFACER_CMD and DEEPDEFACER_ARGS: words split on purpose
  $DEEPDEFACER_CMD "$bids_dir" "$output_dir" participant --participant-label "${participants[@]}" \
    --skip-bids-validation "${n_procs[@]}" --device "$device" ${DEEPDEFACER_ARGS:-} || status=$?
else
  gpu_options=()
  [ "$device" = gpu ] && gpu_options=(--nv)
  # Node-local scratch for the container's /tmp (HOME, Keras and TensorFlow caches point there).
  scratch=$(mktemp -d "${TMPDIR:-/tmp}/deepdefacer.XXXXXX")
  trap 'rm -rf "$scratch"' EXIT
  # shellcheck disable=SC2086
  apptainer run --cleanenv --containall "${gpu_options[@]}" \
    --env SLURM_CPUS_PER_TASK="$cpus",SLURM_MEM_PER_NODE="${SLURM_MEM_PER_NODE:-}",SLURM_MEM_PER_CPU="${SLURM_MEM_PER_CPU:-}" \
    -B "$bids_dir":/bids:ro -B "$output_dir":/out -B "$scratch":/tmp \
    "${DEEPDEFACER_SIF:-deepdefacer.sif}" /bids /out participant --participant-label "${participants[@]}" \
    --skip-bids-validation "${n_procs[@]}" --device "$device" ${DEEPDEFACER_ARGS:-} || status=$?
fi
elapsed=$((($(date +%s%N) - started) / 1000000))
printf 'task %s: deepdefacer took %d.%03d s, exit %d\n' "$SLURM_ARRAY_TASK_ID" \
  $((elapsed / 1000)) $((elapsed % 1000)) "$status"
exit "$status"
