"""A real Kubernetes control plane on the host: etcd, kube-apiserver, kube-controller-manager
(and, for a cluster with nodes, kube-scheduler).

The binaries are built from the Go module proxy by `ovn-sandbox/build-kube.sh` (Kubernetes
v1.37.2, etcd v3.7.3) and cached machine-wide; `binaries()` finds them (building them when
missing). Certificates are made at start with `cryptography` (a CA; the API server's serving
certificate; an admin client certificate in `system:masters`; the ServiceAccount signing key):
nothing hand-rolled beyond choosing names and lifetimes.

The API server runs with `--authorization-mode=Node,RBAC` and ServiceAccount tokens, so what
the product may do is exactly what `manifests/rbac.yaml` grants it. Two shapes:
- API only (the tests of the product on this host): the controller-manager runs the namespace,
  garbage-collector and ServiceAccount controllers (namespace deletion finishes), nothing
  schedules or runs pods;
- `cluster=True` (the sandbox's `api` container, with real kubelets on the chassis): every
  default controller, kube-scheduler, the `kubernetes` Service's endpoint on the advertised
  address (kube-proxy routes 10.96.0.1 to it), privileged pods allowed, NodeRestriction, the
  API server's client certificate for the kubelets (exec, logs), and an audit log of every
  request's metadata (`audit_log`: who was refused what); `client_kubeconfig`
  issues the nodes' certificates (`system:node:<name>`, `system:kube-proxy`).
Everything lives in one directory; `stop` ends the processes in dependency order (the API
server before etcd: the other way round it hangs retrying etcd).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime
import functools
import ipaddress
import json
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ovnk_secondary import errors

REPO = pathlib.Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
BUILD_SCRIPT = REPO / "ovn-sandbox" / "build-kube.sh"
SERVICE_CIDR = "10.96.0.0/16"
AUDIT_LOG = "audit.log"  # in the control plane's directory


def _built(section: str) -> pathlib.Path:
    done = subprocess.run([str(BUILD_SCRIPT), section], capture_output=True, text=True)
    if done.returncode != 0:
        raise errors.SandboxError(done.stderr.strip() or f"{BUILD_SCRIPT} {section} failed")
    return pathlib.Path(done.stdout.strip().splitlines()[-1])


def binaries() -> pathlib.Path:
    """The directory of kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
    kube-proxy, etcd, kubectl...

    Runs `ovn-sandbox/build-kube.sh`, which answers at once when its cache holds them (and
    builds them, ~11 minutes on 2 cores, when not). SandboxError when that fails.
    """
    return _built("kube")


def node_binaries() -> pathlib.Path:
    """The directory of what a node runs beside the kubelet: containerd, runc, the reference
    CNI plugins, Multus (`build-kube.sh node`, ~6 minutes the first time)."""
    return _built("node")


def ensure_namespace(core: Any, name: str, *, timeout: float = 30.0) -> None:
    """Namespace `name` exists, with the default ServiceAccount without which the
    ServiceAccount admission refuses pods (the controller-manager makes it a moment after the
    namespace). `core`: an official client's CoreV1Api, as someone allowed to do that."""
    import kubernetes  # the official client: only its callers need it

    try:
        core.create_namespace({"metadata": {"name": name}})
    except kubernetes.client.ApiException as exc:
        if exc.status != 409:
            raise
    deadline = time.monotonic() + timeout
    while True:
        try:
            core.read_namespaced_service_account("default", name)
            return
        except kubernetes.client.ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
        time.sleep(0.1)


@functools.cache
def kubectl() -> pathlib.Path:
    """kubectl of the control plane's release (built with it)."""
    return binaries() / "kubectl"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _certificate(*, subject: x509.Name, key: ec.EllipticCurvePrivateKey,
                 issuer: x509.Certificate | None, issuer_key: ec.EllipticCurvePrivateKey,
                 ca: bool = False, server_names: Sequence[str] = (),
                 client: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(issuer.subject if issuer is not None else subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=365))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        usages = ([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH] if server_names else []) + (
            [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server_names:
        alternatives: list[x509.GeneralName] = []
        for name in server_names:
            try:
                alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alternatives.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(alternatives),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _name(common: str, organization: str | None = None) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.COMMON_NAME, common)]
    if organization:
        parts.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(parts)


@dataclasses.dataclass(frozen=True)
class Pki:
    """The files of the control plane's certificates and keys, in one directory."""

    directory: pathlib.Path

    def path(self, name: str) -> pathlib.Path:
        return self.directory / name

    @classmethod
    def make(cls, directory: pathlib.Path, *, server_names: Sequence[str]) -> Pki:
        """A CA, the API server's serving certificate for `server_names` (IPs and DNS names),
        client certificates for the admin (`system:masters`), the controller-manager, the
        scheduler and the API server towards kubelets (`system:masters`), the ServiceAccount
        signing key."""
        directory.mkdir(parents=True, exist_ok=True)
        ca_key = _key()
        ca = _certificate(subject=_name("ovnk-sandbox-ca"), key=ca_key, issuer=None,
                          issuer_key=ca_key, ca=True)
        files: dict[str, bytes] = {"ca.crt": ca.public_bytes(serialization.Encoding.PEM),
                                   "ca.key": _pem_key(ca_key)}
        for name, subject, names, client in (
            ("apiserver", _name("kube-apiserver"), server_names, False),
            ("admin", _name("admin", "system:masters"), (), True),
            ("controller-manager", _name("system:kube-controller-manager"), (), True),
            ("scheduler", _name("system:kube-scheduler"), (), True),
            ("kubelet-client", _name("kube-apiserver-kubelet-client", "system:masters"), (),
             True),
        ):
            key = _key()
            certificate = _certificate(subject=subject, key=key, issuer=ca, issuer_key=ca_key,
                                       server_names=names, client=client)
            files[f"{name}.crt"] = certificate.public_bytes(serialization.Encoding.PEM)
            files[f"{name}.key"] = _pem_key(key)
        service_accounts = _key()
        files["sa.key"] = _pem_key(service_accounts)
        files["sa.pub"] = service_accounts.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        for name, data in files.items():
            path = directory / name
            path.write_bytes(data)
            path.chmod(0o600 if name.endswith(".key") else 0o644)
        return cls(directory)

    def issue_client(self, name: str, *, common: str, organization: str | None = None,
                     ) -> tuple[pathlib.Path, pathlib.Path]:
        """A client certificate for user `common` (group `organization`) signed by the CA:
        (`<name>.crt`, `<name>.key`) in the directory."""
        ca = x509.load_pem_x509_certificate(self.path("ca.crt").read_bytes())
        ca_key = serialization.load_pem_private_key(self.path("ca.key").read_bytes(), None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        key = _key()
        certificate = _certificate(subject=_name(common, organization), key=key, issuer=ca,
                                   issuer_key=ca_key, client=True)
        crt, key_path = self.path(f"{name}.crt"), self.path(f"{name}.key")
        crt.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_pem_key(key))
        key_path.chmod(0o600)
        return crt, key_path


def kubeconfig(*, server: str, ca: pathlib.Path, user: str,
               certificate: pathlib.Path | None = None, key: pathlib.Path | None = None,
               token: str | None = None) -> str:
    """A kubeconfig (JSON, which kubeconfig readers accept) for one user of `server`.

    Self-contained: certificates and keys are embedded (`*-data`), so the file works where it
    is copied or mounted (a container of the sandbox) as well as here.
    """
    def data(path: pathlib.Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    credentials: dict[str, str] = {}
    if certificate is not None and key is not None:
        credentials = {"client-certificate-data": data(certificate),
                       "client-key-data": data(key)}
    if token is not None:
        credentials = {"token": token}
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": user,
        "clusters": [{"name": "sandbox", "cluster": {
            "server": server, "certificate-authority-data": data(ca)}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": user, "context": {"cluster": "sandbox", "user": user}}],
    }, indent=1)


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager as processes of this host.

    `start` runs them; without it, the object is a handle on a control plane that another
    process started in the same `directory` (the sandbox's `api` container, whose directory is
    mounted on the host): `kubectl` and `service_account_kubeconfig` work on it all the same.
    """

    def __init__(self, *, directory: pathlib.Path, bin_dir: pathlib.Path | None = None,
                 advertise: str = "127.0.0.1", port: int | None = None,
                 cluster: bool = False) -> None:
        self.directory = directory
        self.cluster = cluster
        self.bin = bin_dir or binaries()
        self.advertise = advertise
        self.port = port or _free_port()
        self.pki = Pki(directory / "pki")
        self.admin_kubeconfig = directory / "admin.kubeconfig"
        self.audit_log = directory / AUDIT_LOG  # cluster=True: one JSON event per line
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._arguments: dict[str, list[str]] = {}
        self.etcd_url = ""

    @property
    def server(self) -> str:
        return f"https://{self.advertise}:{self.port}"

    def start(self, *, timeout: float = 60.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.pki = Pki.make(self.directory / "pki", server_names=(
            self.advertise, "127.0.0.1", "localhost", "kubernetes", "kubernetes.default",
            "kubernetes.default.svc", "10.96.0.1"))
        pki = self.pki.path
        self.admin_kubeconfig.write_text(kubeconfig(
            server=self.server, ca=pki("ca.crt"), user="admin",
            certificate=pki("admin.crt"), key=pki("admin.key")))
        manager_kubeconfig = self.directory / "controller-manager.kubeconfig"
        manager_kubeconfig.write_text(kubeconfig(
            server=self.server, ca=pki("ca.crt"), user="system:kube-controller-manager",
            certificate=pki("controller-manager.crt"), key=pki("controller-manager.key")))
        scheduler_kubeconfig = self.directory / "scheduler.kubeconfig"
        scheduler_kubeconfig.write_text(kubeconfig(
            server=self.server, ca=pki("ca.crt"), user="system:kube-scheduler",
            certificate=pki("scheduler.crt"), key=pki("scheduler.key")))
        client, peer = _free_port(), _free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._spawn("etcd", [
            "--name", "sandbox", "--data-dir", str(self.directory / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{client}",
            "--advertise-client-urls", f"http://127.0.0.1:{client}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"sandbox=http://127.0.0.1:{peer}", "--listen-metrics-urls=",
        ])
        if self.cluster:
            # every request's user, verb, resource and response code (no bodies), so that a
            # refusal of any component, even of a pod deleted since, can be found afterwards
            policy = self.directory / "audit-policy.yaml"
            policy.write_text(json.dumps({
                "apiVersion": "audit.k8s.io/v1", "kind": "Policy",
                "omitStages": ["RequestReceived"], "rules": [{"level": "Metadata"}]}))
            cluster_flags = [
                f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}",
                "--audit-log-maxsize=200", "--audit-log-maxbackup=1",
                f"--kubelet-client-certificate={pki('kubelet-client.crt')}",
                f"--kubelet-client-key={pki('kubelet-client.key')}",
                "--enable-admission-plugins=NodeRestriction",
                "--allow-privileged=true",  # the node agent's DaemonSet
            ]
        else:
            cluster_flags = [
                # no Service endpoints for the API server itself: no pod runs to use them and
                # the reconciler refuses a loopback advertise address
                "--endpoint-reconciler-type=none",
            ]
        self._spawn("kube-apiserver", [
            f"--etcd-servers=http://127.0.0.1:{client}",
            "--bind-address=0.0.0.0", f"--advertise-address={self.advertise}",
            f"--secure-port={self.port}",
            f"--tls-cert-file={pki('apiserver.crt')}",
            f"--tls-private-key-file={pki('apiserver.key')}",
            f"--client-ca-file={pki('ca.crt')}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={pki('sa.pub')}",
            f"--service-account-signing-key-file={pki('sa.key')}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            *cluster_flags,
        ])
        self._wait_ready(timeout)
        self._spawn("kube-controller-manager", [
            f"--kubeconfig={manager_kubeconfig}",
            f"--authentication-kubeconfig={manager_kubeconfig}",
            f"--authorization-kubeconfig={manager_kubeconfig}",
            "--bind-address=127.0.0.1", "--secure-port=0",
            f"--service-account-private-key-file={pki('sa.key')}",
            f"--root-ca-file={pki('ca.crt')}", "--use-service-account-credentials",
            "--controllers=*" if self.cluster else
            "--controllers=namespace-controller,garbage-collector-controller,"
            "serviceaccount-controller,serviceaccount-token-controller,"
            "root-ca-certificate-publisher-controller",
            "--leader-elect=false",
        ])
        if self.cluster:
            self._spawn("kube-scheduler", [
                f"--kubeconfig={scheduler_kubeconfig}",
                f"--authentication-kubeconfig={scheduler_kubeconfig}",
                f"--authorization-kubeconfig={scheduler_kubeconfig}",
                "--bind-address=127.0.0.1", "--secure-port=0", "--leader-elect=false",
            ])

    def install_manifests(self, manifests: pathlib.Path = MANIFESTS) -> None:
        """Apply the product's CRDs (kustomization `crds/`), namespace and RBAC as a user does,
        with server-side validation, and wait until the CRDs are served (listed without error)."""
        self.kubectl("apply", "-k", str(manifests / "crds"))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        # Established is not yet served: the first lists get 429 "storage is (re)initializing"
        crds = ",".join(self.kubectl("get", "crd", "-o", "name").stdout.replace(
            "customresourcedefinition.apiextensions.k8s.io/", "").split())
        deadline = time.monotonic() + 60
        while (listed := self.kubectl("get", crds, "-A", check=False)).returncode != 0:
            if time.monotonic() > deadline:
                raise errors.SandboxError(f"CRDs not served: {listed.stderr.strip()}")
            time.sleep(0.2)
        self.kubectl("apply", "-f", str(manifests / "namespace.yaml"),
                     "-f", str(manifests / "rbac.yaml"))

    def restart_apiserver(self, *, timeout: float = 60.0) -> None:
        """Stop kube-apiserver (SIGTERM), start it again with the same flags, wait until ready.
        Its watch cache starts afresh: watches resuming from before may get 410 Gone."""
        self._end("kube-apiserver")
        self._spawn("kube-apiserver", self._arguments["kube-apiserver"])
        self._wait_ready(timeout)

    def compact_etcd(self) -> int:
        """Compact etcd's history up to its current revision (as its periodic compaction
        would); the revision. A watch from an older resourceVersion then gets 410 Gone."""
        status = json.loads(subprocess.run(
            [str(self.bin / "etcdctl"), f"--endpoints={self.etcd_url}", "endpoint", "status",
             "-w", "json"], capture_output=True, text=True, check=True).stdout)
        revision = int(status[0]["Status"]["header"]["revision"])
        subprocess.run([str(self.bin / "etcdctl"), f"--endpoints={self.etcd_url}", "compact",
                        str(revision)], capture_output=True, check=True)
        return revision

    def _spawn(self, name: str, arguments: list[str]) -> None:
        self._arguments[name] = arguments
        log = (self.directory / f"{name}.log").open("ab")
        self._processes[name] = subprocess.Popen([str(self.bin / name), *arguments],
                                                 stdout=log, stderr=subprocess.STDOUT)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for name, process in self._processes.items():
                if process.poll() is not None:
                    raise errors.SandboxError(
                        f"{name} exited with {process.returncode}; see "
                        f"{self.directory / f'{name}.log'}")
            done = self.kubectl("get", "--raw", "/readyz", check=False)
            if done.returncode == 0 and done.stdout.strip() == "ok":
                return
            if time.monotonic() > deadline:
                raise errors.SandboxError(f"kube-apiserver not ready within {timeout:g} s: "
                                          f"{done.stderr.strip()[:300]}")
            time.sleep(0.3)

    def kubectl(self, *arguments: str, check: bool = True, stdin: str | None = None,
                kubeconfig_path: pathlib.Path | None = None,
                ) -> subprocess.CompletedProcess[str]:
        """kubectl of the same release, as the admin (or `kubeconfig_path`'s user)."""
        done = subprocess.run(
            [str(self.bin / "kubectl"),
             f"--kubeconfig={kubeconfig_path or self.admin_kubeconfig}", *arguments],
            input=stdin, capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise errors.SandboxError(f"kubectl {' '.join(arguments)}: {done.stderr.strip()}")
        return done

    def service_account_kubeconfig(self, namespace: str, name: str, path: pathlib.Path, *,
                                   duration: str = "24h", pod: str | None = None) -> pathlib.Path:
        """A kubeconfig authenticating as ServiceAccount `namespace/name` (a bound token from
        the TokenRequest API, valid for `duration`, e.g. "24h"). With `pod` (of `namespace`,
        running as that account), the token is bound to it and names its node, as the one a
        kubelet projects into the pod."""
        bound = ["--bound-object-kind=Pod", f"--bound-object-name={pod}"] if pod else []
        token = self.kubectl("create", "token", name, "-n", namespace, *bound,
                             f"--duration={duration}").stdout.strip()
        path.write_text(kubeconfig(server=self.server, ca=self.pki.path("ca.crt"),
                                   user=f"system:serviceaccount:{namespace}:{name}",
                                   token=token))
        return path

    def client_kubeconfig(self, path: pathlib.Path, *, common: str,
                          organization: str | None = None, name: str | None = None,
                          ) -> pathlib.Path:
        """A kubeconfig authenticating with a new client certificate of user `common` in group
        `organization` (a kubelet: `system:node:<node>` in `system:nodes`); the certificate and
        key are kept in the PKI directory as `<name>.crt/.key` (default: the file's stem)."""
        crt, key = self.pki.issue_client(name or path.stem, common=common,
                                         organization=organization)
        path.write_text(kubeconfig(server=self.server, ca=self.pki.path("ca.crt"), user=common,
                                   certificate=crt, key=key))
        return path

    def _end(self, name: str) -> None:
        process = self._processes.pop(name, None)
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop(self) -> None:
        for name in ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            self._end(name)


READY_FILE = "ready"


def main(argv: Sequence[str] | None = None) -> int:
    """The sandbox's `api` container: the control plane in `--directory`, advertised on the
    container's address, with the product's CRDs, namespace and RBAC applied (and `--apply`
    files); writes `<directory>/ready` (the server's URL) once all is served, and stops the
    processes in order on SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m ovnk_secondary.sandbox.kubeapi")
    parser.add_argument("--directory", type=pathlib.Path, required=True)
    parser.add_argument("--bin", type=pathlib.Path, required=True)
    parser.add_argument("--port", type=int, default=6443)
    parser.add_argument("--manifests", type=pathlib.Path, default=MANIFESTS)
    parser.add_argument("--apply", type=pathlib.Path, action="append", default=[])
    parser.add_argument("--cluster", action="store_true",
                        help="for real nodes: every controller, kube-scheduler, ...")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    ready = args.directory / READY_FILE
    ready.unlink(missing_ok=True)
    plane = ControlPlane(directory=args.directory, bin_dir=args.bin, port=args.port,
                         advertise=socket.gethostbyname(socket.gethostname()),
                         cluster=args.cluster)
    try:
        plane.start()
        plane.install_manifests(args.manifests)
        for path in args.apply:
            plane.kubectl("apply", "-f", str(path))
        ready.write_text(plane.server + "\n")
        print(f"control plane ready at {plane.server}", flush=True)
        stop.wait()
    except errors.SandboxError as exc:
        print(f"control plane failed: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        plane.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
