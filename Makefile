# Two commands: `make demo` (the sandbox running the reference scenario) and `make test`.
# Each prepares everything it needs (Debian packages, dockerd, images, venv) and is quick the
# second time.

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python

.PHONY: demo test lint host image images kube venv down clean

demo: host venv images kube
	$(VPY) -m ovnk_secondary.sandbox.demo

test: host venv images kube lint
	TESTCONTAINERS_RYUK_DISABLED=true $(VENV)/bin/pytest -q

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

host:
	@ovn-sandbox/host-setup.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@[ -x $(VPY) ] || $(PYTHON) -m venv $(VENV) || { echo "make: cannot create a venv with $(PYTHON): apt-get install python3-venv" >&2; exit 1; }
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	@$(VPY) ovn-sandbox/ovs-c-json.py
	@$(VPY) -c 'import ovs.json; print("ovs JSON parser:", ovs.json.PARSER)'
	@touch $@

# the product image ovnk-secondary:<version> (the controller, the node agent, the CNI plugin)
image: host venv
	@ovn-sandbox/build-images.sh $(VPY) product

# the product image and the sandbox's images built on it
images: host venv
	@ovn-sandbox/build-images.sh $(VPY) >/dev/null

# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, etcd, kubectl,
# and the nodes' containerd, runc, CNI plugins and Multus, of pinned releases, built from the Go
# module proxy once per machine (cached in /var/cache/ovnk-secondary; ~17 min the first time)
kube: host
	@ovn-sandbox/build-kube.sh kube >/dev/null
	@ovn-sandbox/build-kube.sh node >/dev/null

down: venv
	$(VPY) -m ovnk_secondary sandbox down

clean: down
	rm -rf $(VENV) ovn-sandbox/.build
