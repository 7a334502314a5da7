#!/bin/bash
# Fault injection for tests: stop the NB ovsdb-server, wait SECONDS (default 0), start it again on
# the same database file. Usage: ovn-restart-nb [SECONDS]
set -euo pipefail
pid=$(cat /run/ovn/nb.pid)
kill "$pid"
while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
sleep "${1:-0}"
export OVS_RUNDIR=/run/ovn
ovsdb-server --detach --pidfile=/run/ovn/nb.pid --log-file=/var/log/ovn/nb.log \
  --unixctl=/run/ovn/nb.ctl --remote=punix:/run/ovn/nb.sock --remote=ptcp:6641 \
    --remote=db:OVN_Northbound,NB_Global,connections --private-key=db:OVN_Northbound,SSL,private_key \
    --certificate=db:OVN_Northbound,SSL,certificate --ca-cert=db:OVN_Northbound,SSL,ca_cert /var/lib/ovn/nb.db
