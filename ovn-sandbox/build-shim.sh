#!/usr/bin/env bash
# Build the CNI shim (cni-shim/, Go standard library only) as a static binary: the
# ovn-k8s-cni-overlay that the node agent's init container installs on every node.
#
# usage: ovn-sandbox/build-shim.sh DEST   (DEST: the binary to write)
# The machine's Go (GOTOOLCHAIN=local; cni-shim/go.mod says which Go it needs); Go's build cache
# makes a second build take well under a second. On failure: one line on stderr, exit 1.
set -euo pipefail
dest=${1:?usage: $0 DEST}
repo=$(cd "$(dirname "$0")/.." && pwd)
command -v go >/dev/null || { echo "build-shim: no go on PATH: install Go 1.26 or later (cni-shim/go.mod)" >&2; exit 1; }
cd "$repo/cni-shim"
# static (no cgo), reproducible (-trimpath, no VCS stamp), stripped
GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS='' GOWORK=off go build -trimpath -buildvcs=false \
  -ldflags='-s -w' -o "$dest" . || { echo "build-shim: go build failed in $repo/cni-shim" >&2; exit 1; }
