# Shared by the chassis and external entrypoints (sourced).

# start_ovs: this container's own ovsdb-server and ovs-vswitchd (userspace datapath).
start_ovs() {
  mkdir -p /run/openvswitch /etc/openvswitch /var/log/openvswitch /var/run/ovn /var/log/ovn
  [ -f /etc/openvswitch/conf.db ] || \
    ovsdb-tool create /etc/openvswitch/conf.db /usr/share/openvswitch/vswitch.ovsschema
  ovsdb-server --detach --pidfile --log-file --remote=punix:/run/openvswitch/db.sock \
    /etc/openvswitch/conf.db
  ovs-vsctl --no-wait init
  ovs-vswitchd --detach --pidfile --log-file
}

# nic_in CIDR: the name of the interface holding an IPv4 address inside CIDR (docker attaches
# networks in no fixed order, so NICs are found by their subnet). Waits up to 30 s.
# Only docker's final names (eth0, eth1, ...) count: a network connected while this runs can
# show its address under the host-side veth name (vethabe1f65) just before docker renames it,
# and a rename of that name then fails ("Device ... does not exist"; seen once in CI).
nic_in() {
  local cidr=$1 i
  for i in $(seq 300); do
    local nic
    nic=$(python3 - "$cidr" <<'PY'
import ipaddress, json, subprocess, sys
net = ipaddress.ip_network(sys.argv[1])
for link in json.loads(subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True).stdout):
    if not link["ifname"].startswith("eth"):
        continue
    for a in link.get("addr_info", []):
        if ipaddress.ip_address(a["local"]) in net:
            print(link["ifname"]); sys.exit(0)
PY
)
    [ -n "$nic" ] && { echo "$nic"; return 0; }
    sleep 0.1
  done
  echo "no interface in $cidr after 30 s" >&2
  return 1
}

# rename_nic OLD NEW: a NIC's predictable name (enp2s0 as in the reference scenario).
rename_nic() {
  [ "$1" = "$2" ] && return 0
  ip link set "$1" down
  ip link set "$1" name "$2"
  ip link set "$2" up
}
