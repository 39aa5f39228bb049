#!/usr/bin/env bash
# SLURM CI: a real one-node SLURM cluster runs the documented array script over real heads.
#
#   sudo bash .ci/slurm.sh          (called by .ci/run; root: it installs packages and runs daemons)
#
# 1. installs Debian's slurmctld, slurmd, slurm-client and munge if missing; writes a one-node
#    slurm.conf, a munge key and the spool folders into its own folder (nothing in /etc is used or
#    changed: its own munge socket and free ports), with the CPUs and memory of this machine
#    (`slurmd -C`, RealMemory less 10%); starts munged, slurmctld and slurmd and waits for the node
#    to be idle. All three are stopped at exit, with any job still queued.
# 2. makes a BIDS dataset of 9 participants (12 scans) from the real heads of ../shared/data (2 mm
#    and 6 mm heads, IXI at 2 mm, and one 0.9 mm head with its PDw), and submits docs/slurm_array.sh
#    over it, bare-venv variant (DEEPDEFACER_CMD=.venv/bin/deepdefacer), CHUNK=2, one CPU a task so
#    that tasks run side by side and write into one output folder at the same time. Checks: every
#    task COMPLETED with exit 0 (jobcomp/filetxt's log: no accounting database here) and its log
#    lists its own scans as defaced; every scan has its defaced image and mask, both whole (read
#    in full), and sidecars with `Verified: true` and the input's sha256; the BIDS validator passes
#    the output (deepdefacer.bids.validate); dataset_description.json, README.md and .bidsignore are
#    valid and were written once (before any scan output: no later task rewrote them); the input's
#    checksums are unchanged.
# 3. deletes the outputs of task 1 (sub-01, sub-02), resubmits it, cancels it (scancel) while its
#    0.9 mm scans run, checks that it ended CANCELLED with no partial output in sight, resubmits it
#    and checks that it COMPLETED, that its outputs are whole, verified and the same images as before
#    (voxel data), that no hidden temporary is left and that the validator still passes.
# 4. resubmits the finished array with the script's own #SBATCH defaults (they must fit a 2-CPU
#    node) and checks that nothing is redone: every task's log says "up to date" for each of its
#    scans and nothing "defaced", every output file keeps its inode and mtime, and each task's
#    deepdefacer run takes under DEEPDEFACER_CI_NOOP_SECONDS (default 3 s; printed). A task
#    submitted without its arguments fails with the usage message naming docs/slurm_array.sh (not
#    the copy in slurmd's spool).
# Prints the time of each phase. Exits non-zero on any failed check. The work folder is removed on
# success and kept on failure (DEEPDEFACER_CI_KEEP=1 keeps it always).
set -euo pipefail
shopt -s extglob
cd "$(dirname "$0")/.."
repo=$PWD
python=${PYTHON:-$repo/.venv/bin/python}
app=${DEEPDEFACER_CI_APP:-$repo/.venv/bin/deepdefacer}
data=${DEEPDEFACER_SHARED_DATA:-$repo/../shared/data}
noop_limit=${DEEPDEFACER_CI_NOOP_SECONDS:-3}
job_timeout=${DEEPDEFACER_CI_JOB_TIMEOUT:-300}
array_script=$repo/docs/slurm_array.sh

say() { echo "slurm.sh: $*"; }
die() { echo "slurm.sh: FAILED: $*" >&2; exit 1; }
timings=() phase="" phase_started=0
timed() {  # name command...: runs the command and records how long it took
  phase=$1 phase_started=$SECONDS
  shift
  say "--- $phase"
  "$@"
  timings+=("$(printf '  %-52s %5d s' "$phase" $((SECONDS - phase_started)))")
  phase=""
}

work="" ok=0
cleanup() {
  local status=$?
  set +e
  if [ -n "$work" ] && [ -f "$work/slurm.conf" ]; then
    export SLURM_CONF=$work/slurm.conf
    if [ -f "$work/slurmctld.pid" ]; then
      jobs=$(squeue -h -o %A 2>/dev/null | sort -u)
      if [ -n "$jobs" ]; then
        say "cancelling jobs left: ${jobs//$'\n'/ }"
        # shellcheck disable=SC2086  # one job id a word
        scancel $jobs
        sleep 2
      fi
    fi
    for daemon in slurmd slurmctld munge/munged; do
      local pid_file=$work/$daemon.pid pid
      [ -f "$pid_file" ] || continue
      pid=$(cat "$pid_file")
      kill "$pid" 2>/dev/null || continue
      say "stopping ${daemon#munge/} (pid $pid)"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -0 "$pid" 2>/dev/null && { say "${daemon#munge/} still running: SIGKILL"; kill -9 "$pid"; }
    done
  fi
  [ -n "$phase" ] && timings+=("$(printf '  %-52s %5d s' "FAILED: $phase" $((SECONDS - phase_started)))")
  say "=== timings"
  printf '%s\n' "${timings[@]}"
  printf '  %-52s %5d s\n' "total" "$SECONDS"
  if [ -n "$work" ]; then
    if [ "$status" = 0 ] && [ "$ok" = 1 ] && [ "${DEEPDEFACER_CI_KEEP:-0}" != 1 ]; then
      rm -rf "$work"
    else
      say "work folder kept: $work"
    fi
  fi
  exit "$status"
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts munged, slurmctld, slurmd)"
[ -x "$app" ] || die "no $app: make the virtual environment first (bash tests/run.sh)"
{ [ -d "$data/heads" ] && [ -d "$data/ixi" ]; } || die "no shared data at $data (heads/, ixi/): the CI's real heads"

# --- 1. the cluster ----------------------------------------------------------------------------
install_slurm() {
  local command missing=0
  for command in slurmctld slurmd sbatch munged; do
    command -v "$command" > /dev/null || missing=1
  done
  if [ "$missing" = 0 ]; then
    say "SLURM and munge already installed: $(slurmd -V)"
    return
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge > /dev/null ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge > /dev/null; }
  say "installed $(slurmd -V)"
}

free_port() {
  "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_cluster() {
  work=$(mktemp -d /tmp/deepdefacer-ci-slurm.XXXXXX)
  chmod 755 "$work"  # munged (user munge) must reach its socket in here
  mkdir -p "$work/munge" "$work/state" "$work/spool"  # not logs/: the array script makes it
  head -c 1024 /dev/urandom > "$work/munge/munge.key"
  chown -R munge:munge "$work/munge"
  chmod 400 "$work/munge/munge.key"
  runuser -u munge -- munged --socket="$work/munge/munge.socket" --key-file="$work/munge/munge.key" \
    --pid-file="$work/munge/munged.pid" --log-file="$work/munge/munged.log" \
    --seed-file="$work/munge/munged.seed"
  munge -S "$work/munge/munge.socket" -n | unmunge -S "$work/munge/munge.socket" > /dev/null ||
    die "munged does not answer"

  local node node_line memory
  node=$(hostname -s)
  node_line=$(slurmd -C | head -n 1)
  memory=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<< "$node_line")
  memory=$((memory * 9 / 10))
  node_line=${node_line/RealMemory=*([0-9])/RealMemory=$memory}
  cat > "$work/slurm.conf" <<EOF
# One-node cluster for .ci/slurm.sh (written by it; nothing here is used outside the CI check).
ClusterName=deepdefacer-ci
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$work/munge/munge.socket
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$work/jobcomp.log
ReturnToService=2
KillWait=10
MinJobAge=3600
$node_line NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=ci Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
  say "node: $node_line"
  export SLURM_CONF=$work/slurm.conf
  slurmctld -f "$SLURM_CONF"
  slurmd -f "$SLURM_CONF" -N "$node"
  local state=""
  for _ in $(seq 150); do
    state=$(sinfo -h -N -n "$node" -o %T 2> /dev/null || true)
    [ "$state" = idle ] && break
    sleep 0.2
  done
  [ "$state" = idle ] || die "node $node is '$state', not idle (logs in $work)"
  say "node $node idle; $(sinfo -h -o '%P %c CPUs %m MB')"
}

# --- helpers -------------------------------------------------------------------------------------
# A job array's tasks: "task state exit" lines from jobcomp/filetxt's log, one per finished task.
task_states() {
  "$python" - "$work/jobcomp.log" "$1" <<'EOF'
import re, sys
states = {}
for line in open(sys.argv[1]) if __import__("os").path.exists(sys.argv[1]) else []:
    fields = dict(re.findall(r"(\w+)=(\S*)", line))
    if fields.get("ArrayJobId") == sys.argv[2] or fields.get("JobId") == sys.argv[2]:
        states[int(fields.get("ArrayTaskId", 0) or 0)] = (fields["JobState"], fields.get("ExitCode", "?"))
for task in sorted(states):
    print(task, *states[task])
EOF
}

wait_job() {  # job: waits until it left the queue; fails at once if it can never run here
  local job=$1 started=$SECONDS line
  while line=$(squeue -h -j "$job" -o '%T %r' 2> /dev/null) && [ -n "$line" ]; do
    case $line in
      *PartitionConfig* | *ReqNodeNotAvail* | *BadConstraints* | *PartitionNodeLimit*)
        squeue -j "$job" -o '%i %T %r %C %m' >&2
        die "job $job cannot run on this node: $line" ;;
    esac
    [ $((SECONDS - started)) -lt "$job_timeout" ] || die "job $job still queued after $job_timeout s: $line"
    sleep 0.5
  done
}

check_tasks() {  # job n_tasks expected_state: every task finished in that state (exit 0 if COMPLETED)
  local job=$1 n=$2 expected=$3 states
  for _ in $(seq 20); do  # jobcomp writes a moment after the task leaves the queue
    states=$(task_states "$job")
    [ "$(wc -l <<< "$states")" -ge "$n" ] && break
    sleep 0.5
  done
  printf '    task %s\n' "${states//$'\n'/$'\n'    task }"
  [ "$(grep -c . <<< "$states")" = "$n" ] || die "job $job: $n tasks expected in $work/jobcomp.log"
  while read -r task state code; do
    [ "$state" = "$expected" ] || die "job $job task $task: $state, not $expected (log: $(task_log "$job" "$task"))"
    case $expected:$code in
      COMPLETED:0:0 | CANCELLED:* | FAILED:2:0) ;;
      *) die "job $job task $task: $state, exit $code" ;;
    esac
  done <<< "$states"
}

task_log() { echo "$work/logs/deepdefacer_$1_$2.log"; }

task_seconds() {  # job task: the seconds deepdefacer took, from the array script's last line
  sed -n 's/^task [0-9]*: deepdefacer took \([0-9.]*\) s, exit .*/\1/p' "$(task_log "$1" "$2")"
}

checks() {  # python checks (below): subcommand args...
  "$python" "$work/checks.py" "$@"
}

write_checks() {
  cat > "$work/checks.py" <<'EOF'
"""Checks of .ci/slurm.sh on a Deepdefacer derivatives folder."""
import hashlib, json, os, sys
from pathlib import Path

import nibabel as nib
import numpy as np

SHARED = ("dataset_description.json", "README.md", ".bidsignore")


def scans(bids, labels):
    for path in sorted(Path(bids).glob("sub-*/**/anat/*.nii*")):
        if not labels or path.relative_to(bids).parts[0] in labels:
            yield path


def outputs(bids, out, scan):
    name = scan.name.split(".")[0]
    prefix, suffix = name.rsplit("_", 1)
    folder = Path(out) / scan.parent.relative_to(bids)
    return (folder / f"{prefix}_desc-defaced_{suffix}.nii.gz", folder / f"{prefix}_mod-{suffix}_defacemask.nii.gz")


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def snapshot(folder, target):
    """relpath inode mtime_ns size of every file: equal snapshots = nothing rewritten."""
    lines = []
    for root, _, files in os.walk(folder):
        for name in files:
            path = Path(root, name)
            info = path.stat()
            lines.append(f"{path.relative_to(folder)} {info.st_ino} {info.st_mtime_ns} {info.st_size}")
    Path(target).write_text("\n".join(sorted(lines)) + "\n")


def sums(folder, target):
    Path(target).write_text("".join(f"{sha256(p)} {p.relative_to(folder)}\n"
                                    for p in sorted(Path(folder).rglob("*")) if p.is_file()))


def voxels(bids, out, target, *labels):
    """sha256 of the voxel data of each defaced image and mask (gzip headers aside)."""
    lines = [f"{hashlib.sha256(np.asarray(nib.load(p).dataobj).tobytes()).hexdigest()} {p.relative_to(out)}"
             for scan in scans(bids, labels) for p in outputs(bids, out, scan)]
    Path(target).write_text("\n".join(lines) + "\n")


def outputs_ok(bids, out, *labels):
    """Every selected scan defaced, whole and verified; the shared files valid and written once."""
    problems, first_output = [], None
    selected = list(scans(bids, labels))
    for scan in selected:
        for image in outputs(bids, out, scan):
            sidecar = image.with_name(image.name.replace(".nii.gz", ".json"))
            if not image.is_file() or not sidecar.is_file():
                problems.append(f"missing {image.relative_to(out)} or its sidecar")
                continue
            try:
                data = np.asarray(nib.load(image).dataobj)  # reads every byte: a truncated file fails
            except Exception as exc:
                problems.append(f"{image.relative_to(out)}: unreadable ({exc})")
                continue
            if data.shape[:3] != nib.load(scan).shape[:3]:
                problems.append(f"{image.relative_to(out)}: shape {data.shape}, input {nib.load(scan).shape}")
            if "_desc-defaced_" in image.name:
                provenance = json.loads(sidecar.read_text()).get("Deepdefacer", {})
                if provenance.get("Verified") is not True:
                    problems.append(f"{sidecar.relative_to(out)}: Verified is {provenance.get('Verified')!r}")
                if provenance.get("InputSHA256") != sha256(scan):
                    problems.append(f"{sidecar.relative_to(out)}: InputSHA256 is not the input's")
            mtime = min(image.stat().st_mtime_ns, sidecar.stat().st_mtime_ns)
            first_output = mtime if first_output is None else min(first_output, mtime)
    description = json.loads((Path(out) / SHARED[0]).read_text())  # valid JSON or it raises
    if description.get("DatasetType") != "derivative" or not description.get("GeneratedBy"):
        problems.append(f"{SHARED[0]}: not a derivative dataset's description: {description}")
    for name in SHARED:
        path = Path(out) / name
        if not path.is_file() or path.stat().st_size == 0:
            problems.append(f"{name} missing or empty")
        elif not labels and first_output is not None and path.stat().st_mtime_ns > first_output:
            problems.append(f"{name} was written after the first scan output: rewritten by a later task")
    hidden = [p.relative_to(out) for p in Path(out).rglob(".*") if "deepdefacer-tmp" in p.name]
    if hidden:
        problems.append(f"hidden temporaries left: {hidden}")
    for problem in problems:
        print("   ", problem)
    print(f"    {len(selected)} scan(s) checked: {len(problems)} problem(s)")
    return not problems


def no_partial_outputs(bids, out):
    """After a cancel: every visible image is whole (hidden temporaries may be left)."""
    bad = []
    for image in Path(out).rglob("*.nii.gz"):
        try:
            np.asarray(nib.load(image).dataobj)
        except Exception as exc:
            bad.append(f"{image.relative_to(out)}: {exc}")
    hidden = [str(p.relative_to(out)) for p in Path(out).rglob(".*") if "deepdefacer-tmp" in p.name]
    print(f"    visible images whole: {not bad}; hidden temporaries left by the cancel: {hidden or 'none'}")
    for problem in bad:
        print("   ", problem)
    return not bad


def validate(out):
    sys.path.insert(0, os.environ["REPO"])
    from deepdefacer.bids.validate import validate_dataset
    result = validate_dataset(out)
    print(f"    BIDS validator: {len(result.errors)} error(s), {len(result.warnings)} warning(s)")
    for error in result.errors[:10]:
        print("   ", error.get("code"), error.get("location"), error.get("issueMessage", ""))
    return not result.errors


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    result = globals()[command](*arguments)
    sys.exit(0 if result in (None, True) else 1)
EOF
}

make_dataset() {  # real heads, small: the CI stays fast
  local bids=$work/bids heads=$data/heads i=4 file
  put() {  # label source suffix
    mkdir -p "$bids/sub-$1/anat"
    case $2 in
      *.gz) cp "$2" "$bids/sub-$1/anat/sub-$1_$3.nii.gz" ;;
      *) gzip -c "$2" > "$bids/sub-$1/anat/sub-$1_$3.nii.gz" ;;
    esac
  }
  put 01 "$heads/colin27_t1w_2mm.nii" T1w
  put 02 "$heads/chris_t1w.nii.gz" T1w  # 0.9 mm, and its PDw: the scans that task 1's cancel hits
  put 02 "$heads/chris_pdw.nii.gz" PDw
  put 03 "$heads/ixi002_t1_6mm.nii.gz" T1w
  put 03 "$heads/ixi002_t2_6mm.nii.gz" T2w
  put 03 "$heads/ixi002_pd_6mm.nii.gz" PDw
  for file in $(find "$data/ixi" -name '*_T1.nii.gz' | LC_ALL=C sort | head -n 5); do
    put "$(printf %02d $i)" "$file" T1w
    i=$((i + 1))
  done
  put 09 "$heads/t1w_mni_2mm.nii.gz" T1w
  cat > "$bids/dataset_description.json" <<'EOF'
{"Name": "Deepdefacer SLURM CI: real heads", "BIDSVersion": "1.9.0", "License": "CC-BY-SA-3.0 (IXI); see the shared data's README"}
EOF
  printf 'Real heads (shared data of the Deepdefacer project) for .ci/slurm.sh.\n' > "$bids/README"
  printf 'participant_id\n' > "$bids/participants.tsv"
  (cd "$bids" && ls -d sub-*) >> "$bids/participants.tsv"
  say "dataset: $(find "$bids" -mindepth 1 -maxdepth 1 -name 'sub-*' | wc -l) participants, $(find "$bids" -name '*.nii.gz' | wc -l) scans"
  checks sums "$bids" "$work/input.sha256"
}

# Env of every submission: the bare-venv variant of the array script.
export DEEPDEFACER_CMD=$app REPO=$repo
export CHUNK=${DEEPDEFACER_CI_CHUNK:-2}

phase_array() {
  make_dataset
  cd "$work"
  local submitted
  submitted=$(bash "$array_script" "$work/bids" "$work/out" --cpus-per-task=1)
  printf '    %s\n' "${submitted//$'\n'/$'\n'    }"
  job=$(sed -n 's/^Submitted batch job \([0-9]*\).*/\1/p' <<< "$submitted")
  tasks_file=$(ls "$work"/logs/deepdefacer_tasks_*.txt)
  n_tasks=$(wc -l < "$tasks_file")
  { [ -n "$job" ] && [ "$n_tasks" -ge 3 ]; } || die "submission: job '$job', $n_tasks tasks"
  wait_job "$job"
  check_tasks "$job" "$n_tasks" COMPLETED
  local task label labels scan
  for task in $(seq "$n_tasks"); do
    read -r -a labels <<< "$(sed -n "${task}p" "$tasks_file")"
    for label in "${labels[@]}"; do
      for scan in $(cd "$work/bids" && ls "$label"/anat/*.nii.gz); do
        grep -q "defaced $scan:" "$(task_log "$job" "$task")" ||
          die "task $task's log does not list $scan as defaced"
      done
    done
    say "task $task: $(sed -n "${task}p" "$tasks_file"): $(task_seconds "$job" "$task") s"
  done
  cd "$repo"
}

phase_usage() {  # a task submitted without its arguments prints the script's path, not the spool copy's
  local usage_job log  # submitted from the repository with a relative path, run in the work folder
  usage_job=$(sbatch --parsable --array=1 --chdir="$work" docs/slurm_array.sh)
  usage_job=${usage_job%%;*}
  wait_job "$usage_job"
  check_tasks "$usage_job" 1 FAILED
  log=$(task_log "$usage_job" 1)
  grep -q "usage: bash $array_script " "$log" || die "the usage message does not name $array_script: $(cat "$log")"
  say "usage names $array_script"
}

phase_outputs() {
  checks outputs_ok "$work/bids" "$work/out" || die "outputs"
  checks validate "$work/out" || die "the BIDS validator on the output"
  checks sums "$work/bids" "$work/input.after"
  cmp -s "$work/input.sha256" "$work/input.after" || die "the input changed: diff $work/input.sha256 $work/input.after"
  say "input checksums unchanged ($(wc -l < "$work/input.sha256") files)"
}

phase_cancel() {
  local labels cancel_job log label
  read -r -a labels < "$tasks_file"  # task 1's participants
  checks voxels "$work/bids" "$work/out" "$work/voxels.before" "${labels[@]}"
  for label in "${labels[@]}"; do rm -rf "${work:?}/out/$label"; done
  cd "$work"
  cancel_job=$(sbatch --parsable --array=1 "$array_script" "$work/bids" "$work/out" "$tasks_file")
  cancel_job=${cancel_job%%;*}
  log=$(task_log "$cancel_job" 1)
  # sub-01 (2 mm, with the model load) first, then sub-02's two 0.9 mm scans: cancel after the first.
  for _ in $(seq 1200); do
    grep -q '\[1/[0-9]*\] defaced' "$log" 2> /dev/null && break
    sleep 0.1
  done
  grep -q '\[1/[0-9]*\] defaced' "$log" || die "task 1 never defaced its first scan ($log)"
  scancel "$cancel_job"
  say "cancelled job $cancel_job after: $(grep -o '\[1/[0-9]*\] defaced [^:]*' "$log")"
  wait_job "$cancel_job"
  say "its log ends: $(tail -n 1 "$log")"
  check_tasks "$cancel_job" 1 CANCELLED
  n_scans=$(sed -n 's/.*: \([0-9]*\) anatomical image(s).*/\1/p' "$log")
  ! grep -q "\[$n_scans/$n_scans\]" "$log" || die "task 1 finished its $n_scans scans before the cancel landed"
  checks no_partial_outputs "$work/bids" "$work/out" || die "a partial output after the cancel"
  resume_job=$(sbatch --parsable --array=1 "$array_script" "$work/bids" "$work/out" "$tasks_file")
  resume_job=${resume_job%%;*}
  wait_job "$resume_job"
  check_tasks "$resume_job" 1 COMPLETED
  say "resubmitted task 1: $(grep -c '\] defaced ' "$(task_log "$resume_job" 1)") scan(s) defaced, $(grep -c '\] up to date ' "$(task_log "$resume_job" 1)") up to date, $(task_seconds "$resume_job" 1) s"
  cd "$repo"
  checks outputs_ok "$work/bids" "$work/out" "${labels[@]}" || die "outputs after the resubmission"
  checks voxels "$work/bids" "$work/out" "$work/voxels.after" "${labels[@]}"
  cmp -s "$work/voxels.before" "$work/voxels.after" || die "the redone outputs differ from the first run's: diff $work/voxels.before $work/voxels.after"
  say "redone outputs equal to the first run's, voxel for voxel"
  checks validate "$work/out" || die "the BIDS validator after the resubmission"
}

phase_resubmit() {
  checks snapshot "$work/out" "$work/out.before"
  cd "$work"
  local again task seconds worst=0 scan_lines
  again=$(sbatch --parsable --array=1-"$n_tasks" "$array_script" "$work/bids" "$work/out" "$tasks_file")
  again=${again%%;*}
  wait_job "$again"
  check_tasks "$again" "$n_tasks" COMPLETED
  for task in $(seq "$n_tasks"); do
    log=$(task_log "$again" "$task")
    ! grep -q '\] defaced ' "$log" || die "task $task redid work: $(grep '\] defaced ' "$log")"
    scan_lines=$(grep -c '\] up to date sub-' "$log" || true)
    [ "$scan_lines" -gt 0 ] || die "task $task: no 'up to date' line ($log)"
    seconds=$(task_seconds "$again" "$task")
    say "resubmitted task $task: $scan_lines scan(s) up to date, deepdefacer took $seconds s"
    awk -v s="$seconds" -v limit="$noop_limit" 'BEGIN {exit !(s < limit)}' ||
      die "task $task took $seconds s to find its scans up to date (limit $noop_limit s)"
    worst=$(awk -v s="$seconds" -v w="$worst" 'BEGIN {print (s > w ? s : w)}')
  done
  cd "$repo"
  checks snapshot "$work/out" "$work/out.after"
  cmp -s "$work/out.before" "$work/out.after" || die "outputs rewritten: diff $work/out.before $work/out.after"
  say "no output rewritten ($(wc -l < "$work/out.after") files keep inode and mtime); slowest task $worst s"
}

timed "install SLURM and munge" install_slurm
timed "start munged, slurmctld, slurmd; node idle" start_cluster
write_checks
timed "array: $CHUNK participants a task, 1 CPU each, side by side" phase_array
timed "a task without arguments: usage with the script's path" phase_usage
timed "check outputs, validator, input checksums" phase_outputs
timed "cancel task 1 mid-run, resubmit it" phase_cancel
timed "resubmit the finished array: nothing redone" phase_resubmit
ok=1
say "all SLURM checks passed"
