#!/usr/bin/env bash
# Prepare this machine for the sandbox and the tests: Debian packages, then a Docker daemon.
# Idempotent and quick when everything is there. Used by `make`; fails with one clear line.
set -euo pipefail
die() { echo "host-setup: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (packages, dockerd, network namespaces); rerun with sudo"

packages="ovn-central ovn-host openvswitch-switch docker.io debootstrap tcpdump ethtool iproute2
  iputils-ping python3-venv python3-openvswitch procps gcc pkg-config libseccomp-dev"
missing=""
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "host-setup: installing$missing" >&2
  command -v apt-get >/dev/null || die "no apt-get: this set-up is for Debian 12 (bookworm)"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -q && apt-get install -y -q --no-install-recommends $missing; } >/tmp/ovnk-apt.log 2>&1 \
    || die "apt-get install$missing failed (log: /tmp/ovnk-apt.log)"
fi

# Go builds the CNI shim and the Kubernetes components (the Go module proxy); Debian 12's golang
# (1.19) is too old for them.
go_version=$(go env GOVERSION 2>/dev/null || true)
case $go_version in
  go1.2[6-9]*|go1.[3-9][0-9]*|go[2-9]*) ;;
  *) die "Go 1.26 or later is needed on PATH (found: ${go_version:-none}): see https://go.dev/dl" ;;
esac

if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || die "dockerd is missing although docker.io is installed"
  echo "host-setup: starting dockerd (log: /var/log/ovnk-dockerd.log)" >&2
  # No NAT, no iptables; address pools away from the reference scenario's 172.17.33.0/24.
  nohup dockerd --iptables=false --ip-masq=false --bip 198.18.0.1/24 \
    --default-address-pool base=198.19.0.0/16,size=24 >/var/log/ovnk-dockerd.log 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || die "dockerd did not start; see /var/log/ovnk-dockerd.log"
fi
