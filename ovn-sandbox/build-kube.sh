#!/usr/bin/env bash
# Build upstream Kubernetes components from the Go module proxy with this machine's Go, and cache the
# binaries machine-wide (outside the checkout) so that every clone on the machine reuses them.
#
# usage: ovn-sandbox/build-kube.sh [kube|node]
#   kube (the default): kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
#     kube-proxy, kubectl (k8s.io/kubernetes) and etcd, etcdctl (go.etcd.io/etcd), cached in
#       ${OVNK_CACHE:-/var/cache/ovnk-secondary}/kube/<k8s>-<etcd>-<hash>/bin/
#   node: what a node runs beside the kubelet: containerd, ctr, containerd-shim-runc-v2, runc, the
#     reference CNI plugins (bridge, ptp, host-local, loopback, portmap) and Multus (multus: the thin
#     plugin; multus-daemon and multus-shim: the thick one), cached in
#       ${OVNK_CACHE:-/var/cache/ovnk-secondary}/node/containerd-<v>-multus-<v>-<hash>/bin/
#     runc needs cgo and libseccomp: gcc and libseccomp-dev (Debian packages).
#   <hash> is 12 hex of sha256 of this script and `go version`. A second run finds the directory and
#   returns at once. The bin directory is the last line on stdout. go's output goes to a log file; on
#   failure: one line `build-kube: STEP failed (log: PATH)` on stderr, exit 1.
#
# Sources: the Go module proxy only (GOPROXY without `direct`: nothing is cloned from a VCS). Modules
# land in the machine's GOMODCACHE and objects in its GOCACHE, so a rebuild after an edit of this
# script takes well under a minute; the first builds took 11 minutes (kube) and 6 (node) on 2 cores.
set -euo pipefail

# --- pinned versions -----------------------------------------------------------------------------------
# v1.37.2: the newest Kubernetes release on the proxy; its go.mod asks for go 1.26.0, which the
# machine's go1.26.x satisfies, and it builds as is.
K8S_VERSION=v1.37.2
# Kubernetes v1.37 requires the etcd 3.7 client (its go.mod: go.etcd.io/etcd/client/v3 v3.7.0) and
# documents etcd 3.7.0 (build/dependencies.yaml); v3.7.3 is the newest 3.7 patch on the proxy, for
# etcd and etcdctl alike.
ETCD_VERSION=v3.7.3
# The newest containerd 2.x, CNI plugins and runc releases on the proxy.
CONTAINERD_VERSION=v2.4.2
CNI_PLUGINS_VERSION=v1.10.0
RUNC_VERSION=v1.5.3
# The proxy refuses the version list of gopkg.in/k8snetworkplumbingwg/multus-cni.v4 (403), but serves
# tagged versions: v4.3.0 is the newest found (v4.3.1 and v4.4.0 are refused).
MULTUS_VERSION=v4.3.0
# The machine's Go (go1.26.8 when this was written). The only other toolchain the proxy serves here is
# go1.27.3, needed only if a pinned module's go.mod asks for go >= 1.27.
GO_TOOLCHAIN=local
# --------------------------------------------------------------------------------------------------------

section=${1:-kube}
die() { echo "build-kube: $*" >&2; exit 1; }
case $section in kube|node) ;; *) die "usage: $0 [kube|node]" ;; esac

export GOTOOLCHAIN=$GO_TOOLCHAIN CGO_ENABLED=0 GOFLAGS='' GOWORK=off GONOPROXY='' GOPRIVATE='' GOOS='' GOARCH=''
command -v go >/dev/null || die "no go on PATH"
# Modules come from the proxy alone: drop `direct` (a VCS fetch) from the machine's GOPROXY.
GOPROXY=$(go env GOPROXY | tr ',|' '\n' | grep -vx -e direct -e off | paste -sd, -) || true
[ -n "$GOPROXY" ] || die "GOPROXY ($(go env GOPROXY)) names no module proxy"
export GOPROXY
inputs_hash=$( { cat "${BASH_SOURCE[0]}"; go version; } | sha256sum | cut -c1-12)
cache=${OVNK_CACHE:-/var/cache/ovnk-secondary}

# begin DIR: the cache entry $final; when it is built already, print its bin and exit. Otherwise wait
# for the machine-wide lock (one builder at a time; the others then find its result) and make the
# build directory $tmp (renamed to $final at the end) and the log $log.
begin() {
  final=$cache/$1-$inputs_hash
  [ -d "$final/bin" ] && { echo "$final/bin"; exit 0; }
  mkdir -p "${final%/*}" || die "cannot create ${final%/*}"
  exec 9>"${final%/*}/.lock"
  flock 9
  [ -d "$final/bin" ] && { echo "$final/bin"; exit 0; }
  rm -rf "${final%/*}"/.tmp-*  # left by a killed build (we hold the lock: no build is running)
  tmp=$(mktemp -d "${final%/*}/.tmp-${final##*/}.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  trap 'exit 1' INT TERM HUP  # so that the EXIT trap runs
  chmod 755 "$tmp"
  cd "$tmp"  # no go.mod around: `go list -m` runs outside any module
  log=$final.log
  : >"$log"
  echo "build-kube: building $section into $final (log: $log)" >&2
}

# finish: publish the build directory atomically and print its bin directory.
finish() {
  mv "$log" "$tmp/build.log"
  mv -T "$tmp" "$final"
  trap - EXIT
  echo "$final/bin"
}

run() {  # run STEP CMD...: CMD's output to the log, the one-line error on failure
  local step=$1; shift
  echo "== $step: $* ($(date -u +%T))" >>"$log"
  "$@" >>"$log" 2>&1 || die "$step failed (log: $log)"
}

# check NAME PATTERN CMD...: CMD's output (to the log), whatever its exit status, must match PATTERN.
check() {
  local name=$1 pattern=$2 out; shift 2
  out=$("$@" 2>&1 </dev/null) || true
  printf '== check %s: %s\n%s\n' "$name" "$*" "$out" >>"$log"
  grep -q -- "$pattern" <<<"$out" || die "$name: no '$pattern' in the output of $* (log: $log)"
}

# mod_field MODULE@VERSION FIELD: a field of `go list -m -json` (GoMod: its go.mod file; GoVersion:
# its `go` line; Time: the release's time).
mod_field() {
  local json
  json=$(go list -m -json "$1" 2>>"$log") || die "go list -m $1 failed (log: $log)"
  sed -n "s/^\t\"$2\": \"\(.*\)\",\{0,1\}$/\1/p" <<<"$json"
}

# new_module NAME PIN_VERSION "MODULE@VERSION..." PACKAGE...: a build module in $tmp/src/NAME that
# requires each MODULE, has the first one's `go` line and PACKAGEs as its tools. A dependency's
# replace directives are ignored, so each module that a MODULE's go.mod replaces with a local path
# (k8s.io/kubernetes: `k8s.io/api => ./staging/src/k8s.io/api`; etcd: `=> ../api`) is pinned to its
# published PIN_VERSION instead.
new_module() {
  local name=$1 pin=$2 modvers=$3 mv gomod m; shift 3
  local -a edits=()
  for mv in $modvers; do
    gomod=$(mod_field "$mv" GoMod)
    [ -f "$gomod" ] || die "go list -m $mv gave no go.mod (log: $log)"
    [ ${#edits[@]} -gt 0 ] || edits+=(-go="$(mod_field "$mv" GoVersion)")
    edits+=(-require="$mv")
    for m in $(sed 's/^replace[[:space:]]*//' "$gomod" | awk '$2 == "=>" && $3 ~ /^\.\.?\// {print $1}'); do
      [ -n "$pin" ] || die "$mv replaces $m with a local path: new_module needs a version to pin it to"
      edits+=(-replace="$m=$m@$pin")
    done
  done
  edits+=("${@/#/-tool=}")
  mkdir -p "$tmp/src/$name"
  (
    cd "$tmp/src/$name"
    run "go mod init ($name)" go mod init "ovnk-secondary.local/build/$name"
    run "go mod edit ($name)" go mod edit "${edits[@]}"
    run "go mod tidy ($name)" go mod tidy
  ) || exit 1
}

# build NAME ARG...: `go build -trimpath -o $tmp/bin/ ARG...` (flags, then packages) in the module
# that new_module made in $tmp/src/NAME.
build() {
  local name=$1; shift
  (cd "$tmp/src/$name" && run "go build ($name)" go build -trimpath -buildvcs=false -o "$tmp/bin/" "$@") || exit 1
}

build_kube() {
  begin "kube/$K8S_VERSION-$ETCD_VERSION"

  local cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl) minor build_date pkg kv cmd
  local pkgs=("${cmds[@]/#/k8s.io/kubernetes/cmd/}")
  minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  build_date=$(mod_field "k8s.io/kubernetes@$K8S_VERSION" Time)  # the release's time: reproducible
  # The staging modules (k8s.io/api, ...) are published as v0.Y.Z for Kubernetes v1.Y.Z.
  new_module kube "v0.${K8S_VERSION#v1.}" "k8s.io/kubernetes@$K8S_VERSION" "${pkgs[@]}"
  # The version stamps (hack/lib/version.sh) that --version and `kubectl version` print, and the tags of
  # Kubernetes' own non-debug build (hack/lib/golang.sh); all six in one go build.
  local ldflags="-s -w"
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    for kv in gitVersion="$K8S_VERSION" gitMajor=1 gitMinor="$minor" gitTreeState=clean buildDate="$build_date"; do
      ldflags+=" -X $pkg.$kv"
    done
  done
  build kube -tags=selinux,notest,grpcnotrace -ldflags="$ldflags" "${pkgs[@]}"

  # etcd: a module of its own (its dependency versions differ from Kubernetes').
  pkgs=(go.etcd.io/etcd/server/v3 go.etcd.io/etcd/etcdctl/v3)
  new_module etcd "$ETCD_VERSION" "${pkgs[*]/%/@$ETCD_VERSION}" "${pkgs[@]}"
  build etcd -ldflags="-s -w" "${pkgs[@]}"
  mv "$tmp/bin/server" "$tmp/bin/etcd"  # go names the binary of .../server/v3 `server`

  for cmd in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
    check "$cmd" "Kubernetes $K8S_VERSION" "$tmp/bin/$cmd" --version
  done
  check kubectl "Client Version: $K8S_VERSION" "$tmp/bin/kubectl" version --client
  check etcd "etcd Version: ${ETCD_VERSION#v}" "$tmp/bin/etcd" --version
  check etcdctl "etcdctl version: ${ETCD_VERSION#v}" "$tmp/bin/etcdctl" version
  finish
}

build_node() {
  begin "node/containerd-$CONTAINERD_VERSION-multus-$MULTUS_VERSION"
  if ! { command -v gcc && pkg-config --exists libseccomp; } >/dev/null 2>&1; then
    die "runc needs cgo and libseccomp: apt-get install gcc pkg-config libseccomp-dev"
  fi

  local m=github.com/containerd/containerd/v2 date bin
  new_module containerd "" "$m@$CONTAINERD_VERSION" "$m/cmd/containerd" "$m/cmd/ctr" "$m/cmd/containerd-shim-runc-v2"
  # The tags and version stamps of containerd's Makefile; the shim is built without gRPC, as there.
  local ldflags="-s -w -X $m/version.Version=$CONTAINERD_VERSION"
  build containerd -tags=urfave_cli_no_docs -ldflags="$ldflags" "$m/cmd/containerd" "$m/cmd/ctr"
  build containerd -tags=urfave_cli_no_docs,no_grpc -ldflags="$ldflags" "$m/cmd/containerd-shim-runc-v2"

  # runc: cgo (libcontainer/nsenter is C) and libseccomp, linked statically (static PIE) like runc's
  # `make static`; the libpathrs tag (a Rust library) is left out: runc then uses its pure-Go pathrs-lite.
  m=github.com/opencontainers/runc
  new_module runc "" "$m@$RUNC_VERSION" "$m"
  CGO_ENABLED=1 build runc -buildmode=pie -tags=seccomp,urfave_cli_no_docs,netgo,osusergo \
    -ldflags="-s -w -linkmode external -extldflags -static-pie" "$m"

  m=github.com/containernetworking/plugins
  local plugins=(main/bridge main/ptp ipam/host-local main/loopback meta/portmap)
  new_module cni-plugins "" "$m@$CNI_PLUGINS_VERSION" "${plugins[@]/#/$m/plugins/}"
  build cni-plugins -ldflags="-s -w -X $m/pkg/utils/buildversion.BuildVersion=$CNI_PLUGINS_VERSION" \
    "${plugins[@]/#/$m/plugins/}"

  m=gopkg.in/k8snetworkplumbingwg/multus-cni.v4
  date=$(mod_field "$m@$MULTUS_VERSION" Time)
  local cmds=(multus multus-daemon multus-shim)
  new_module multus "" "$m@$MULTUS_VERSION" "${cmds[@]/#/$m/cmd/}"
  # The version stamps of multus' hack/build-go.sh.
  ldflags="-s -w -X $m/pkg/multus.version=$MULTUS_VERSION -X $m/pkg/multus.gitTreeState=clean"
  ldflags+=" -X $m/pkg/multus.releaseStatus=,released -X $m/pkg/multus.date=$date"
  build multus -ldflags="$ldflags" "${cmds[@]/#/$m/cmd/}"

  check containerd "containerd github.com/containerd/containerd/v2 $CONTAINERD_VERSION" "$tmp/bin/containerd" --version
  check ctr "ctr github.com/containerd/containerd/v2 $CONTAINERD_VERSION" "$tmp/bin/ctr" --version
  check containerd-shim-runc-v2 "Version: *$CONTAINERD_VERSION" "$tmp/bin/containerd-shim-runc-v2" -v
  check runc "libseccomp: " "$tmp/bin/runc" --version
  check runc "runc version ${RUNC_VERSION#v}" "$tmp/bin/runc" --version
  for bin in bridge ptp host-local loopback portmap; do  # run bare, a plugin tells its version
    check "$bin" "CNI $bin plugin $CNI_PLUGINS_VERSION" "$tmp/bin/$bin"
  done
  for bin in "${cmds[@]}"; do
    check "$bin" "version:$MULTUS_VERSION(clean,released)" "$tmp/bin/$bin" -version
  done

  finish
}

"build_$section"
