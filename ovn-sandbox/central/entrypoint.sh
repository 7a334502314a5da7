#!/bin/bash
# Central: NB and SB databases on TCP (the control plane lives on the mgmt network) and
# ovn-northd on their unix sockets. NB also serves what its own Connection and SSL tables say
# (empty until a test turns TLS on with ovn-nbctl set-ssl / set-connection, as an operator does).
set -euo pipefail
mkdir -p /run/ovn /var/lib/ovn /var/log/ovn
cd /var/lib/ovn
# Sandbox traffic must never leave the machine: all peers are on-link.
ip route del default 2>/dev/null || true
[ -f nb.db ] || ovsdb-tool create nb.db /usr/share/ovn/ovn-nb.ovsschema
[ -f sb.db ] || ovsdb-tool create sb.db /usr/share/ovn/ovn-sb.ovsschema
export OVS_RUNDIR=/run/ovn
ovsdb-server --detach --pidfile=/run/ovn/nb.pid --log-file=/var/log/ovn/nb.log \
    --unixctl=/run/ovn/nb.ctl --remote=punix:/run/ovn/nb.sock --remote=ptcp:6641 \
    --remote=db:OVN_Northbound,NB_Global,connections --private-key=db:OVN_Northbound,SSL,private_key \
    --certificate=db:OVN_Northbound,SSL,certificate --ca-cert=db:OVN_Northbound,SSL,ca_cert /var/lib/ovn/nb.db
ovsdb-server --detach --pidfile=/run/ovn/sb.pid --log-file=/var/log/ovn/sb.log \
    --unixctl=/run/ovn/sb.ctl --remote=punix:/run/ovn/sb.sock --remote=ptcp:6642 /var/lib/ovn/sb.db
ovn-northd --detach --pidfile=/run/ovn/northd.pid --log-file=/var/log/ovn/northd.log \
  --ovnnb-db=unix:/run/ovn/nb.sock --ovnsb-db=unix:/run/ovn/sb.sock
echo READY
trap 'exit 0' TERM INT
sleep infinity & wait
