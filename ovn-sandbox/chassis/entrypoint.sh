#!/bin/bash
# A chassis: one Kubernetes node's OVS and ovn-controller.
# Environment (set by the sandbox harness or compose):
#   CENTRAL        IP of ovn-central on the mgmt network (SB at tcp:$CENTRAL:6642)
#   NODE_NAME      this node's name: hostname, OVN system-id
#   UNDERLAY_CIDR  subnet of the underlay network (Geneve); its NIC goes into br-phy
#   PHYSNET_CIDR   subnet of the physnet network; its NIC becomes enp1s0, br-ex's uplink
#   PHYSNET2_CIDR  subnet of the physnet2 network; its NIC becomes enp2s0, left free for a
#                  dedicated localnet bridge (ovs-br1 in the reference scenario)
# The mgmt NIC stays a plain kernel interface: control-plane TCP must not cross a userspace bridge.
set -euo pipefail
. /usr/local/lib/ovn-sandbox-common.sh
: "${CENTRAL:?}" "${NODE_NAME:?}" "${UNDERLAY_CIDR:?}" "${PHYSNET_CIDR:?}" "${PHYSNET2_CIDR:?}"

underlay=$(nic_in "$UNDERLAY_CIDR")
physnet=$(nic_in "$PHYSNET_CIDR")
physnet2=$(nic_in "$PHYSNET2_CIDR")
# Sandbox traffic must never leave the machine: every peer is on-link.
ip route del default 2>/dev/null || true

start_ovs

# Geneve endpoint: the underlay address moves from its NIC to br-phy (userspace tunnels need it
# on a bridge of the netdev datapath that holds the NIC).
encap=$(ip -4 -o addr show dev "$underlay" | awk '{print $4; exit}')
ip addr flush dev "$underlay"
rename_nic "$underlay" underlay0
# The userspace datapath reads its ports with packet sockets: the kernel still sees their frames.
# Its ARP on the NIC answered for br-phy's address with the NIC's own MAC, beside br-phy's
# answer; a peer's tunnel neighbour cache then sometimes held that MAC, its Geneve frames went
# to this kernel (ICMP port unreachable) instead of being decapsulated, and pods on the Geneve
# path lost 1.7-2.6 s of traffic until the next ARP. The NICs in OVS bridges do no ARP.
ip link set dev underlay0 arp off
ovs-vsctl --may-exist add-br br-phy -- set bridge br-phy datapath_type=netdev \
  -- --may-exist add-port br-phy underlay0
ip addr add "$encap" dev br-phy
ip link set br-phy up

# Uplinks carry pod traffic only, no address of the node.
ip addr flush dev "$physnet"; rename_nic "$physnet" enp1s0; ip link set dev enp1s0 arp off
ip addr flush dev "$physnet2"; rename_nic "$physnet2" enp2s0; ip link set dev enp2s0 arp off
ovs-vsctl --may-exist add-br br-ex -- set bridge br-ex datapath_type=netdev \
  -- --may-exist add-port br-ex enp1s0
ip link set br-ex up

ovs-vsctl set open . external_ids:system-id="$NODE_NAME" external_ids:hostname="$NODE_NAME" \
  external_ids:ovn-remote="tcp:$CENTRAL:6642" external_ids:ovn-encap-type=geneve \
  external_ids:ovn-encap-ip="${encap%/*}" external_ids:ovn-bridge-datapath-type=netdev
ovs-vsctl --may-exist add-br br-int -- set bridge br-int datapath_type=netdev fail-mode=secure
ovn-controller --detach --pidfile --log-file
echo READY
trap 'exit 0' TERM INT
sleep infinity & wait
