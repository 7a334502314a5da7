#!/usr/bin/env bash
# Build the sandbox images, ovn-central and ovn-chassis, tagged by a hash of their inputs so that a
# second run reuses them. Base image: debian:bookworm-slim from a registry when one answers,
# otherwise made locally from Debian packages (debootstrap + docker import).
#
# usage: ovn-sandbox/build-images.sh [PYTHON]   (PYTHON builds the wheels; default: python3)
# prints the two image references on its last two lines.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
python=${1:-python3}
build=$here/.build
mkdir -p "$build"

die() { echo "ovn-sandbox: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap and docker need it); rerun with sudo"
docker info >/dev/null 2>&1 || die "no Docker daemon answers; start one (make does: see Makefile 'dockerd')"

# The runtime dependencies of the project and of the sandbox's components, installed in the chassis image as wheels built here
# (pip inside the image cannot verify TLS on these machines).
"$python" - "$repo/pyproject.toml" > "$build/requirements.txt" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["sandbox"]))
PY

inputs_hash=$(cd "$here" && cat build-images.sh central/* chassis/* .build/requirements.txt | sha256sum | cut -c1-12)
central=ovnk-sandbox/ovn-central:$inputs_hash
chassis=ovnk-sandbox/ovn-chassis:$inputs_hash
finish() {  # `:latest` names the newest build, for compose.yaml
  docker tag "$central" ovnk-sandbox/ovn-central:latest
  docker tag "$chassis" ovnk-sandbox/ovn-chassis:latest
  echo "$central"; echo "$chassis"
  exit 0
}
if docker image inspect "$central" >/dev/null 2>&1 && docker image inspect "$chassis" >/dev/null 2>&1; then
  finish
fi

base=ovnk-sandbox/debian:bookworm
if ! docker image inspect "$base" >/dev/null 2>&1; then
  if timeout 30 docker pull -q debian:bookworm-slim >/dev/null 2>&1; then
    docker tag debian:bookworm-slim "$base"
  else
    echo "ovn-sandbox: no registry reachable; making the base image with debootstrap" >&2
    command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
    rootfs=$(mktemp -d "$build/rootfs.XXXX")
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$build/debootstrap.log" 2>&1 \
      || die "debootstrap failed (log: $build/debootstrap.log)"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb
    tar -C "$rootfs" -c . | docker import - "$base" >/dev/null || die "docker import of the base failed"
    rm -rf "$rootfs"; trap - EXIT
  fi
fi

# The chassis build context: its own files plus the wheels (the legacy builder has no extra contexts).
context=$build/chassis-context
rm -rf "$context"; cp -r "$here/chassis" "$context"; mkdir -p "$context/wheels"
"$python" -m pip wheel -q -w "$context/wheels" -r "$build/requirements.txt" >"$build/wheels.log" 2>&1 \
  || die "building the wheels failed (log: $build/wheels.log)"
cp "$build/requirements.txt" "$context/wheels/requirements.txt"

docker build -q --network host --build-arg BASE="$base" -t "$central" -f "$here/central/Dockerfile" "$here/central" \
  >"$build/central.log" 2>&1 || die "building $central failed (log: $build/central.log)"
docker build -q --network host --build-arg BASE="$base" -t "$chassis" "$context" >"$build/chassis.log" 2>&1 \
  || die "building $chassis failed (log: $build/chassis.log)"
finish
