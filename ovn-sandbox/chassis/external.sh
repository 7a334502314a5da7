#!/bin/bash
# The external host: a VLAN-aware "top-of-rack" switch made with OVS (there is no 802.1Q in the
# kernel), trunking VLANs 33 and 34 to the nodes' uplinks on physnet and physnet2, and one host per
# VLAN, each in its own network namespace so that neither answers for the other's VLAN:
#   vlan33: 172.17.33.1/24 (the reference scenario's localnet2 segment)
#   vlan34: 172.17.34.1/24 (localnet1)
set -euo pipefail
. /usr/local/lib/ovn-sandbox-common.sh
: "${PHYSNET_CIDR:?}" "${PHYSNET2_CIDR:?}"
physnet=$(nic_in "$PHYSNET_CIDR")
physnet2=$(nic_in "$PHYSNET2_CIDR")
ip route del default 2>/dev/null || true
start_ovs
ip addr flush dev "$physnet"; rename_nic "$physnet" trunk1
ip addr flush dev "$physnet2"; rename_nic "$physnet2" trunk2
ovs-vsctl --may-exist add-br br-tor -- set bridge br-tor datapath_type=netdev \
  -- --may-exist add-port br-tor trunk1 -- set port trunk1 trunks=33,34 \
  -- --may-exist add-port br-tor trunk2 -- set port trunk2 trunks=33,34
for vlan in 33 34; do
  ip netns add "vlan$vlan"
  ip link add "access$vlan" type veth peer name eth0 netns "vlan$vlan"
  ip link set "access$vlan" up
  ovs-vsctl --may-exist add-port br-tor "access$vlan" -- set port "access$vlan" tag="$vlan"
  ip -n "vlan$vlan" link set lo up
  ip -n "vlan$vlan" link set eth0 up
  # br-tor is a userspace (netdev) bridge: it forwards a veth's offloaded TCP/UDP checksums
  # unfinished and the receiver drops the segments (ping passes, TCP and UDP do not). A host
  # with a real NIC has them finished by the NIC; here the kernel finishes them (as the node
  # agent does for pod interfaces, --tx-checksum-offload auto).
  ip netns exec "vlan$vlan" ethtool -K eth0 tx off >/dev/null
  ip -n "vlan$vlan" addr add "172.17.$vlan.1/24" dev eth0
done
echo READY
trap 'exit 0' TERM INT
sleep infinity & wait
