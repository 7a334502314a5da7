"""Give the venv's `ovs` package the C JSON parser of Debian's python3-openvswitch.

PyPI's ovs is an sdist that builds its C parser (`ovs._json`) only against libopenvswitch's
headers, which Debian 12 does not ship: without it every OVSDB update the IDLs receive is
parsed in pure Python. Debian's python3-openvswitch has it compiled (libopenvswitch linked in);
the module interface is the same across OVS releases. Linked only when it matches this
interpreter's ABI; otherwise says so and leaves the pure-Python parser (slower, same results).
"""

import pathlib
import sys
import sysconfig

import ovs
import ovs.json

if ovs.json.PARSER == ovs.json.PARSER_C:
    sys.exit(0)
name = "_json" + sysconfig.get_config_var("EXT_SUFFIX")
source = pathlib.Path("/usr/lib/python3/dist-packages/ovs") / name
if not source.exists():
    print(f"ovs-c-json: no {source} (apt-get install python3-openvswitch for this Python); "
          "OVSDB JSON is parsed in pure Python", file=sys.stderr)
    sys.exit(0)
target = pathlib.Path(ovs.__file__).parent / name
target.unlink(missing_ok=True)
target.symlink_to(source)
print(f"ovs-c-json: {target} -> {source}", file=sys.stderr)
