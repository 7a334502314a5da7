#!/usr/bin/env bash
# Make this chassis container a Kubernetes node's host, before its services start (containerd,
# kubelet, kube-proxy: started by the sandbox, ovnk_secondary/sandbox/cluster.py).
#
# usage: ovn-node-prepare NODE_NAME NODE_IP POD_CIDR
# Needs: the node binaries at /opt/node/bin and the Kubernetes ones at /opt/kube/bin (read-only
# mounts of the machine's build cache), the credentials in /etc/ovnk-secondary (ca.crt,
# kubelet.kubeconfig, kube-proxy.kubeconfig, multus.kubeconfig: the sandbox's state directory).
set -euo pipefail
node=${1:?usage: $0 NODE_NAME NODE_IP POD_CIDR} node_ip=${2:?} pod_cidr=${3:?}
templates=/usr/local/share/ovn-sandbox/node
die() { echo "ovn-node-prepare: $*" >&2; exit 1; }

# Mounts made later (pod network namespaces under /var/run/netns, volumes under
# /var/lib/kubelet) must reach the containers that mount their parents with propagation (the
# node agent's HostToContainer): the node's root is shared, as on a real host.
mount --make-rshared /

# /sys, /proc/sys and the cgroup v1 hierarchies: docker mounts them read-only, and the hierarchies as the
# container's own subtree only. The kubelet and runc need them writable, and seen as the kernel
# names them (the paths in /proc/self/cgroup): mount each hierarchy afresh (what a privileged
# container gets).
grep -q '^[0-9]*:[^:]' /proc/self/cgroup \
  || die "no cgroup v1 hierarchy: the sandbox's nodes need docker on cgroup v1 (this one runs v2)"
mount -o remount,rw /sys
# /proc/sys: read-only bind mount over the real one (the kubelet and kube-proxy set sysctls)
while grep -q " /proc/sys proc ro" /proc/mounts; do umount /proc/sys; done
while IFS=: read -r _ controllers own; do
  [ -n "$controllers" ] || continue  # 0::/ (the unified hierarchy, unused on cgroup v1)
  directory=/sys/fs/cgroup/${controllers#name=}
  options=$controllers
  case $controllers in name=*) options=none,$controllers ;; esac
  if ! mountpoint -q "$directory" || ! grep -q " $directory cgroup rw" /proc/mounts; then
    umount "$directory" 2>/dev/null || true
    mkdir -p "$directory"
    mount -t cgroup -o "$options" cgroup "$directory"
  fi
  # The kubelet's cgroups go under this container's own ones, so that the nodes of one machine
  # do not share the host's /kubepods. cpuset children inherit nothing: copy the CPUs and
  # memory nodes down.
  mkdir -p "$directory$own/kubelet"
  if [ -f "$directory$own/cpuset.cpus" ]; then
    cat "$directory$own/cpuset.cpus" >"$directory$own/kubelet/cpuset.cpus"
    cat "$directory$own/cpuset.mems" >"$directory$own/kubelet/cpuset.mems"
  fi
  # one path in every hierarchy (docker's /docker/<id>): the kubelet's cgroupRoot is one path
  [ -z "${root:-}" ] || [ "$root" = "$own/kubelet" ] \
    || die "this container's cgroups differ between hierarchies ($root, $own/kubelet)"
  root=$own/kubelet
done </proc/self/cgroup
[ -n "${root:-}" ] || die "found no cgroup of this container in /proc/self/cgroup"

# CNI: the reference plugins and Multus (thin plugin) from the node build; ovn-k8s-cni-overlay is
# installed by the node agent's init container, as on any cluster (the image's copy goes).
mkdir -p /opt/cni/bin /etc/cni/net.d/multus.d /var/lib/cni
[ -L /opt/cni/bin/ovn-k8s-cni-overlay ] && rm /opt/cni/bin/ovn-k8s-cni-overlay  # the image's link
for plugin in bridge host-local loopback portmap multus; do
  install -m 755 "/opt/node/bin/$plugin" /opt/cni/bin/
done
install -m 600 /etc/ovnk-secondary/multus.kubeconfig /etc/cni/net.d/multus.d/multus.kubeconfig
sed "s|@POD_CIDR@|$pod_cidr|" "$templates/00-multus.conf" >/etc/cni/net.d/00-multus.conf

# containerd, runc and the kubelet's and kube-proxy's configuration.
mkdir -p /etc/containerd /etc/kubernetes /var/lib/kubelet /var/log/ovnk-secondary
install -m 644 "$templates/containerd.toml" /etc/containerd/config.toml
ln -sf /opt/node/bin/runc /usr/local/sbin/runc
sed -e "s|@NODE_IP@|$node_ip|" -e "s|@CGROUP_ROOT@|$root|" "$templates/kubelet.yaml" \
  >/etc/kubernetes/kubelet.yaml
sed -e "s|@NODE_NAME@|$node|" "$templates/kube-proxy.yaml" >/etc/kubernetes/kube-proxy.yaml
# Service addresses (10.96.0.0/16, kube-proxy's DNAT) need a route to be DNATed at all: the
# sandbox's networks have no default route. Through the node's own NIC on the mgmt network.
mgmt=$(ip -o -4 addr show to "$node_ip/32" | awk '{print $2; exit}')
[ -n "$mgmt" ] || die "no interface holds the node IP $node_ip"
ip route replace 10.96.0.0/16 dev "$mgmt" src "$node_ip"
echo "# the sandbox has no cluster DNS" >/etc/kubernetes/resolv.conf
[ -s /etc/machine-id ] || cat /proc/sys/kernel/random/uuid | tr -d - >/etc/machine-id
echo "node $node prepared (node IP $node_ip, pods $pod_cidr, cgroups under $root)"
