#!/usr/bin/env bash
# Make Debian bookworm base images with python3 + venv locally, without any registry:
#
#   sudo containers/make-base.sh [IMAGE]            (IMAGE: deepdefacer-base:bookworm)
#   docker build --build-arg BASE_IMAGE=deepdefacer-base:bookworm \
#                --build-arg BUILD_IMAGE=deepdefacer-base:bookworm-build ...
#
# IMAGE is the runtime base; IMAGE-build is the same system plus binutils (the build strips
# TensorFlow's shared libraries, 200 MB less, and strip should not ship in the image).
# debootstrap (minbase) from a Debian mirror, then `docker import`. For sites where Docker Hub is not
# reachable but a Debian mirror is. The root file system is kept as a tarball in CACHE_DIR
# (default /var/cache/deepdefacer-ci) so that the next call only imports it (seconds, not minutes);
# delete the tarball to refresh it. The mirror: DEBIAN_MIRROR, else the first Debian mirror in this
# host's apt sources; with neither, it stops and says so (no mirror is built in: sites name their own).
set -euo pipefail

image=${1:-deepdefacer-base:bookworm}
suite=${DEBIAN_SUITE:-bookworm}
cache_dir=${CACHE_DIR:-/var/cache/deepdefacer-ci}
tarball="$cache_dir/rootfs-$suite-python3.tar"
build_tarball="$cache_dir/rootfs-$suite-python3-binutils.tar"
# binutils and the libraries only it needs in bookworm: removed again for the runtime base.
binutils_packages="binutils binutils-common binutils-x86-64-linux-gnu libbinutils libctf0 libctf-nobfd0
  libgprofng0 libjansson4"

host_mirror() {
  # deb822 (.sources: "URIs: ...") or one-line ("deb URI suite ...") apt sources; first Debian mirror.
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | awk '/^URIs:/ {print $2} /^deb / {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}' \
    | grep -E '/debian/?$' | head -n 1 || true
}

if [ ! -s "$tarball" ] || [ ! -s "$build_tarball" ]; then
  command -v debootstrap > /dev/null || { echo "make-base.sh: debootstrap is not installed" >&2; exit 2; }
  mirror=${DEBIAN_MIRROR:-$(host_mirror)}
  if [ -z "$mirror" ]; then
    echo "make-base.sh: no Debian mirror: this host's apt sources name none (a URI ending in /debian)" \
         "and DEBIAN_MIRROR is not set; set it to your site's Debian mirror, e.g." \
         "DEBIAN_MIRROR=http://<mirror host>/debian" >&2
    exit 2
  fi
  mkdir -p "$cache_dir"
  rootfs=$(mktemp -d "$cache_dir/rootfs.XXXXXX")
  trap 'rm -rf "$rootfs" "$tarball.partial" "$build_tarball.partial"' EXIT
  echo "make-base.sh: debootstrap $suite from $mirror"
  debootstrap --variant=minbase --include=python3,python3-venv,binutils "$suite" "$rootfs" "$mirror" \
    > "$cache_dir/debootstrap.log" 2>&1 \
    || { tail -n 20 "$cache_dir/debootstrap.log" >&2; exit 1; }
  # What an image needs no copy of: downloaded .debs, package lists, docs, man pages, translations.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
         "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* \
         "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old
  tar --numeric-owner -C "$rootfs" -cf "$build_tarball.partial" .
  # shellcheck disable=SC2086
  chroot "$rootfs" dpkg --purge $binutils_packages > /dev/null
  if chroot "$rootfs" sh -c 'command -v strip' > /dev/null; then
    echo "make-base.sh: binutils still in the runtime base" >&2; exit 1
  fi
  tar --numeric-owner -C "$rootfs" -cf "$tarball.partial" .
  mv "$build_tarball.partial" "$build_tarball"
  mv "$tarball.partial" "$tarball"
fi

import_base() {  # tarball image
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase $suite + python3, python3-venv ($(basename "$1"))" \
    "$1" "$2" > /dev/null
  echo "make-base.sh: $2 ($(docker image inspect -f '{{.Size}}' "$2" | awk '{printf "%.0f MB", $1 / 1e6}'))"
}
import_base "$tarball" "$image"
import_base "$build_tarball" "$image-build"

