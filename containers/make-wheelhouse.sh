#!/usr/bin/env bash
# Download (and where needed build) every wheel the image needs, on the host, for an offline build:
#
#   containers/make-wheelhouse.sh [--variant cpu|gpu] [--extras validate,atlas] [--from LOCAL] [DIR]
#   docker build --build-arg WHEELHOUSE=build/wheelhouse ...                   (DIR: build/wheelhouse)
#
# --from LOCAL: take every wheel from the folder LOCAL (no index at all; fails if one is missing):
# a local mirror, or a cache of an earlier wheelhouse (.ci/docker.sh keeps one).
#
# Why on the host: pip inside a build container cannot reach or cannot verify the package index on
# air-gapped clusters (and here, where TLS inside builds fails without the host's CA bundle). The wheels
# must match the image's Python (3.11 on Debian bookworm and python:3.11-slim) and platform (x86_64
# glibc), so this runs `pip wheel` with a host Python of the same minor version (PYTHON, default
# python3): binary wheels are downloaded as they are, and the few sdist-only packages (docopt, through
# pybids) are built into pure-Python wheels here. setuptools (the version pyproject.toml's build-system
# asks for) is added for building Deepdefacer itself inside the image without an index.
set -euo pipefail
cd "$(dirname "$0")/.."

variant=cpu extras=validate,atlas wheelhouse=build/wheelhouse local_wheels=""
while [ $# -gt 0 ]; do
  case "$1" in
    --variant) variant=$2; shift 2 ;;
    --extras) extras=$2; shift 2 ;;
    --from) local_wheels=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) wheelhouse=$1; shift ;;
  esac
done
python=${PYTHON:-python3}
target_python=${TARGET_PYTHON:-3.11}

host_python=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$host_python" != "$target_python" ] || [ "$(uname -m)" != x86_64 ]; then
  echo "make-wheelhouse.sh: $python is Python $host_python on $(uname -m); the image needs" \
       "Python $target_python wheels for x86_64: set PYTHON to such an interpreter" >&2
  exit 2
fi

mkdir -p "$wheelhouse"
requirements="$wheelhouse/requirements-$variant.txt"
"$python" containers/requirements.py --variant "$variant" --extras "$extras" > "$requirements"
source_options=()
if [ -n "$local_wheels" ]; then
  source_options=(--no-index --find-links "$local_wheels")
fi
# --prefer-binary: never build a package from source when any wheel of an acceptable version exists.
"$python" -m pip wheel --quiet --prefer-binary --wheel-dir "$wheelhouse" "${source_options[@]}" \
  --requirement "$requirements" "setuptools>=77"
echo "make-wheelhouse.sh: $(find "$wheelhouse" -name '*.whl' | wc -l) wheels," \
     "$(du -sh "$wheelhouse" | cut -f1) in $wheelhouse ($variant, extras: ${extras:-none})"
