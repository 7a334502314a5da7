#!/usr/bin/env bash
# Build the product image ovnk-secondary:<version> (image/Dockerfile) and the sandbox images
# ovn-central and ovn-chassis (FROM the product image), each keyed by a hash of its inputs so
# that a second run reuses them. Base image: debian:bookworm-slim from a registry when one
# answers, otherwise made locally from Debian packages (debootstrap + docker import).
#
# usage: ovn-sandbox/build-images.sh [PYTHON [product]]   (PYTHON builds the wheels; default:
# python3). Prints the references of the product image, the two sandbox images (central,
# chassis) and the nodes' pause and workload images on its last five lines, or with `product`
# builds only the product image and prints its reference.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
python=${1:-python3}
mode=${2:-all}
build=$here/.build
mkdir -p "$build"

die() { echo "ovn-sandbox: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap and docker need it); rerun with sudo"
docker info >/dev/null 2>&1 || die "no Docker daemon answers; start one (make does: see Makefile 'dockerd')"

# The project's runtime dependencies (the product image) and the sandbox components' own (the
# chassis image), installed as wheels built here (pip inside an image cannot verify TLS on these
# machines).
"$python" - "$repo/pyproject.toml" "$build" <<'PY'
import pathlib, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
build = pathlib.Path(sys.argv[2])
(build / "runtime.txt").write_text("\n".join(project["dependencies"]) + "\n")
(build / "sandbox.txt").write_text("\n".join(project["optional-dependencies"]["sandbox"]) + "\n")
(build / "version").write_text(project["version"] + "\n")
PY
version=$(cat "$build/version")
# The product image's inputs: its Dockerfile, the dependencies and the package itself.
product_hash=$( (cat "$repo/image/Dockerfile" "$build/runtime.txt" "$repo/pyproject.toml";
                 cd "$repo" && find ovnk_secondary cni-shim -name '*.py' -o -name '*.go' -o -name go.mod \
                   | LC_ALL=C sort | xargs cat; go version) \
               | sha256sum | cut -c1-12)
product=ovnk-secondary:$version
product_keyed=ovnk-secondary:$version-$product_hash

finish() {  # `:latest` names the newest build, for compose.yaml; older builds are removed
  docker tag "$central" ovnk-sandbox/ovn-central:latest
  docker tag "$chassis" ovnk-sandbox/ovn-chassis:latest
  docker tag "$product_keyed" ovnk-secondary:latest
  for old in $(docker images --format '{{.Repository}}:{{.Tag}}' | grep -E \
      '^(ovnk-sandbox/(ovn-central|ovn-chassis|pause|workload):[0-9a-f]{12}|ovnk-secondary:[^:]+-[0-9a-f]{12})$'); do
    case "$old" in "$central"|"$chassis"|"$product_keyed"|"$pause_keyed"|"$workload_keyed") ;;
      *) docker rmi "$old" >/dev/null 2>&1 || true ;; esac  # in use by a container: kept
  done
  echo "$product"; echo "$central"; echo "$chassis"; echo "$pause"; echo "$workload"
  exit 0
}

# The Debian mirror this machine uses: the base's bootstrap, and the sandbox images' OVN and OVS
# from Debian 13 (central/Dockerfile, chassis/Dockerfile).
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian

base=ovnk-sandbox/debian:bookworm
if ! docker image inspect "$base" >/dev/null 2>&1; then
  if timeout 30 docker pull -q debian:bookworm-slim >/dev/null 2>&1; then
    docker tag debian:bookworm-slim "$base"
  else
    echo "ovn-sandbox: no registry reachable; making the base image with debootstrap" >&2
    command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"
    rootfs=$(mktemp -d "$build/rootfs.XXXX")
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$build/debootstrap.log" 2>&1 \
      || die "debootstrap failed (log: $build/debootstrap.log)"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb
    tar -C "$rootfs" -c . | docker import - "$base" >/dev/null || die "docker import of the base failed"
    rm -rf "$rootfs"; trap - EXIT
  fi
fi

# The product image (`make image`): dependencies and the project as wheels, in two layers.
if ! docker image inspect "$product_keyed" >/dev/null 2>&1; then
  context=$build/product-context
  rm -rf "$context"; mkdir -p "$context/dependencies" "$context/project"
  "$python" -m pip wheel -q -w "$context/dependencies" -r "$build/runtime.txt" >"$build/wheels.log" 2>&1 \
    || die "building the dependencies' wheels failed (log: $build/wheels.log)"
  cp "$build/runtime.txt" "$context/dependencies/requirements.txt"
  "$here/build-shim.sh" "$context/ovn-k8s-cni-overlay"
  "$python" -m pip wheel -q --no-deps -w "$context/project" "$repo" >>"$build/wheels.log" 2>&1 \
    || die "building the project's wheel failed (log: $build/wheels.log)"
  rm -rf "$repo/build"  # setuptools' scratch directory
  docker build -q --network host --build-arg BASE="$base" -t "$product_keyed" -f "$repo/image/Dockerfile" \
    "$context" >"$build/product.log" 2>&1 || die "building $product_keyed failed (log: $build/product.log)"
fi
docker tag "$product_keyed" "$product"
[ "$mode" = product ] && { echo "$product"; exit 0; }

# The nodes' own images (node-images/Dockerfile): the pod sandbox's pause and the workload. Their
# names are what containerd's config and manifests/examples/ use; the keyed tags say which build.
node_hash=$( (cat "$here/node-images/Dockerfile"; docker image inspect -f '{{.Id}}' "$base") \
            | sha256sum | cut -c1-12)
pause=ovnk-sandbox/pause:catatonit; pause_keyed=ovnk-sandbox/pause:$node_hash
workload=ovnk-sandbox/workload:busybox; workload_keyed=ovnk-sandbox/workload:$node_hash
for target in pause workload; do
  keyed=ovnk-sandbox/$target:$node_hash
  if ! docker image inspect "$keyed" >/dev/null 2>&1; then
    docker build -q --network host --build-arg BASE="$base" --target "$target" -t "$keyed" \
      "$here/node-images" >"$build/$target.log" 2>&1 || die "building $keyed failed (log: $build/$target.log)"
  fi
  docker tag "$keyed" "ovnk-sandbox/$target:$([ $target = pause ] && echo catatonit || echo busybox)"
done

# The sandbox images: the chassis is built FROM the product image, so its tag covers it too.
inputs_hash=$( (cd "$here" && cat build-images.sh $(find central chassis -type f | LC_ALL=C sort) "$build/sandbox.txt";
                docker image inspect -f '{{.Id}}' "$product_keyed") | sha256sum | cut -c1-12)
central=ovnk-sandbox/ovn-central:$inputs_hash
chassis=ovnk-sandbox/ovn-chassis:$inputs_hash
if docker image inspect "$central" >/dev/null 2>&1 && docker image inspect "$chassis" >/dev/null 2>&1; then
  finish
fi
context=$build/chassis-context
rm -rf "$context"; cp -r "$here/chassis" "$context"; mkdir -p "$context/wheels"
"$python" -m pip wheel -q -w "$context/wheels" -r "$build/sandbox.txt" >"$build/wheels.log" 2>&1 \
  || die "building the sandbox's wheels failed (log: $build/wheels.log)"
cp "$build/sandbox.txt" "$context/wheels/requirements.txt"

docker build -q --network host --build-arg BASE="$base" --build-arg DEBIAN_MIRROR="$mirror" -t "$central" \
  -f "$here/central/Dockerfile" "$here/central" \
  >"$build/central.log" 2>&1 || die "building $central failed (log: $build/central.log)"
docker build -q --network host --build-arg PRODUCT="$product_keyed" --build-arg DEBIAN_MIRROR="$mirror" \
  -t "$chassis" "$context" >"$build/chassis.log" 2>&1 \
  || die "building $chassis failed (log: $build/chassis.log)"
finish
