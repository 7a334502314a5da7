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

# Mounts made later (pod network namespaces under /var/run/netns, volumes under
# /var/lib/kubelet) must reach the containers that mount their parents with propagation (the
# node agent's HostToContainer): the node's root is shared, as on a real host.
mount --make-rshared /

# cgroup v1: the kubelet's cgroups go under this container's own ones (each subsystem), so that
# nodes of one machine do not share the host's /kubepods. cpuset children inherit nothing: copy
# the CPUs and memory nodes down.
root=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' /proc/self/cgroup)/kubelet
for hierarchy in /sys/fs/cgroup/*/; do
  [ -L "${hierarchy%/}" ] && continue  # cpu -> cpu,cpuacct
  case $hierarchy in */unified/|*/systemd/) continue ;; esac
  own=$(awk -F: -v h="$(basename "$hierarchy")" '$2 == h {print $3}' /proc/self/cgroup)
  [ -n "$own" ] || continue
  mkdir -p "$hierarchy$own/kubelet"
  if [ -f "$hierarchy$own/cpuset.cpus" ]; then
    cat "$hierarchy$own/cpuset.cpus" >"$hierarchy$own/kubelet/cpuset.cpus"
    cat "$hierarchy$own/cpuset.mems" >"$hierarchy$own/kubelet/cpuset.mems"
  fi
done

# CNI: the reference plugins and Multus (thin plugin) from the node build; ovn-k8s-cni-overlay is
# installed by the node agent's init container, as on any cluster (the image's copy goes).
mkdir -p /opt/cni/bin /etc/cni/net.d/multus.d /etc/cni/multus/net.d /var/lib/cni
rm -f /opt/cni/bin/ovn-k8s-cni-overlay
for plugin in bridge host-local loopback portmap multus; do
  install -m 755 "/opt/node/bin/$plugin" /opt/cni/bin/
done
install -m 600 /etc/ovnk-secondary/multus.kubeconfig /etc/cni/net.d/multus.d/multus.kubeconfig
sed "s|@POD_CIDR@|$pod_cidr|" "$templates/10-pods.conflist" >/etc/cni/multus/net.d/10-pods.conflist
install -m 644 "$templates/00-multus.conf" /etc/cni/net.d/00-multus.conf

# containerd, runc and the kubelet's and kube-proxy's configuration.
mkdir -p /etc/containerd /etc/kubernetes /var/lib/kubelet /var/log/ovnk-secondary
install -m 644 "$templates/containerd.toml" /etc/containerd/config.toml
ln -sf /opt/node/bin/runc /usr/local/sbin/runc
sed -e "s|@NODE_IP@|$node_ip|" -e "s|@CGROUP_ROOT@|$root|" "$templates/kubelet.yaml" \
  >/etc/kubernetes/kubelet.yaml
sed -e "s|@NODE_NAME@|$node|" "$templates/kube-proxy.yaml" >/etc/kubernetes/kube-proxy.yaml
echo "# the sandbox has no cluster DNS" >/etc/kubernetes/resolv.conf
echo "node $node prepared (node IP $node_ip, pods $pod_cidr, cgroups under $root)"
