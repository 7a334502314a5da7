// Command ovn-k8s-cni-overlay is the CNI binary that Multus executes on a node: a static shim that
// forwards each request to the ovnk-secondary node agent's unix socket and prints the agent's
// answer, unchanged. All CNI policy (validation, results, errors) lives in the Python agent; the
// shim answers by itself only VERSION, "the agent did not answer" (CNI error code 11, try again
// later) and a DEL while no agent runs (success: the agent cleans up when it starts), so a node
// needs no Python. Multus' thick plugin and OVN-Kubernetes' ovn-k8s-cni-overlay
// work the same way.
//
// The bytes on the socket are specified once, in ovnk_secondary/cni/wire.py (the agent's side):
//
//	request: "ovnk-cni/2\n", then "NAME=VALUE\x00" for every CNI_* variable, then "\x00",
//	         then the runtime's stdin; the shim half-closes the connection after writing.
//	answer:  the exit code in ASCII, "\n", then the bytes to print on stdout.
//
// OVN-Kubernetes as the primary network (its multi-network support off): its own plugin has this
// binary's name. The installer (ovnk_secondary/agent/cnibindir.py) then keeps it beside this
// one as ovn-k8s-cni-overlay.primary, and every request whose network configuration is OVN-K's
// primary one ("name": "ovn-kubernetes") is handed to it unchanged: same arguments, environment
// and stdin, its stdout, stderr and exit status passed through. The rest comes to the agent.
//
// Environment overrides (tests, unusual layouts): OVNK_SECONDARY_CNI_SOCKET (the socket path,
// default /var/run/ovnk-secondary/cni.sock) and OVNK_SECONDARY_CNI_TIMEOUT (seconds to wait for the
// answer, default 200: longer than the agent's own worst case, its 120 s annotation and 60 s
// binding timeouts in turn, so that the agent's more precise error wins; shorter than the 4 minutes
// the kubelet gives a pod sandbox's creation).
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	magic          = "ovnk-cni/2\n"
	defaultSocket  = "/var/run/ovnk-secondary/cni.sock"
	defaultTimeout = 200 * time.Second
	// CNI spec error codes (SPEC.md, "Error"): 5 I/O failure, 11 try again later.
	ioFailure     = 5
	tryAgainLater = 11
)

// supportedVersions: ovnk_secondary/cni/protocol.py SUPPORTED_VERSIONS (tests/cni/test_shim.py
// checks that they agree); the last is the newest.
var supportedVersions = []string{"0.3.1", "0.4.0", "1.0.0"}

const defaultVersion = "0.3.1" // protocol.DEFAULT_VERSION: for errors when the config declares none

// The name OVN-Kubernetes gives its primary network's CNI configuration (dist/images/ovnkube.sh
// writes 10-ovn-kubernetes.conf with it), and where its plugin is kept when chained
// (ovnk_secondary/agent/cnibindir.py PRIMARY_NAME).
const (
	primaryNetworkName = "ovn-kubernetes"
	primaryPluginName  = "ovn-k8s-cni-overlay.primary"
)

type cniError struct {
	CNIVersion string `json:"cniVersion"`
	Code       int    `json:"code"`
	Msg        string `json:"msg"`
	Details    string `json:"details,omitempty"`
}

func main() {
	stdin, err := io.ReadAll(os.Stdin)
	if err != nil {
		os.Exit(fail(nil, ioFailure, "cannot read the network configuration on stdin", err.Error()))
	}
	if primary := primaryPlugin(stdin); primary != "" {
		os.Exit(delegate(primary, stdin))
	}
	os.Exit(run(os.Environ(), stdin, os.Stdout))
}

// primaryPlugin: OVN-Kubernetes' own plugin kept beside this binary, when the request is for its
// primary network and the plugin is there; else "".
func primaryPlugin(stdin []byte) string {
	var config struct {
		Name string `json:"name"`
	}
	if json.Unmarshal(stdin, &config) != nil || config.Name != primaryNetworkName {
		return ""
	}
	self, err := os.Executable()
	if err != nil {
		return ""
	}
	path := filepath.Join(filepath.Dir(self), primaryPluginName)
	if info, err := os.Stat(path); err != nil || !info.Mode().IsRegular() {
		return "" // not chained: the agent explains why it refuses that network name
	}
	return path
}

// delegate runs the primary plugin with this invocation's arguments, environment and stdin, and
// returns its exit status (its stdout and stderr are this process's).
func delegate(path string, stdin []byte) int {
	cmd := exec.Command(path, os.Args[1:]...)
	cmd.Env = os.Environ()
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit) && exit.ExitCode() >= 0:
		return exit.ExitCode()
	default:
		return fail(stdin, tryAgainLater, "cannot run OVN-Kubernetes' plugin "+path, err.Error())
	}
}

// run is one invocation: the exit code, with what to print written to out.
func run(environ []string, stdin []byte, out io.Writer) int {
	env := map[string]string{}
	for _, entry := range environ {
		if name, value, ok := strings.Cut(entry, "="); ok {
			env[name] = value
		}
	}
	if env["CNI_COMMAND"] == "VERSION" {
		return version(stdin, out)
	}
	path := env["OVNK_SECONDARY_CNI_SOCKET"]
	if path == "" {
		path = defaultSocket
	}
	timeout := defaultTimeout
	if seconds, err := strconv.ParseFloat(env["OVNK_SECONDARY_CNI_TIMEOUT"], 64); err == nil && seconds > 0 {
		timeout = time.Duration(seconds * float64(time.Second))
	}
	answer, err := call(path, request(environ, stdin), timeout)
	if err != nil && env["CNI_COMMAND"] == "DEL" && agentAbsent(err) {
		// No agent on this node (stopped, or uninstalled): nothing of ours can be torn down now.
		// The agent removes the ports of gone pods when it starts; failing would only keep the
		// pod Terminating until an agent returns (CNI spec: DEL should succeed when it can).
		return 0
	}
	if err != nil {
		code, msg, details := unavailable(err, path, timeout)
		return failTo(out, stdin, code, msg, details)
	}
	head, output, found := bytes.Cut(answer, []byte("\n"))
	code, convErr := strconv.Atoi(string(head))
	if !found || convErr != nil || code < 0 {
		return failTo(out, stdin, tryAgainLater, "the node agent closed the connection without an answer",
			"it may have restarted; the runtime will retry")
	}
	out.Write(output)
	return code
}

// request frames the CNI_* variables (in the order the runtime gave them) and stdin.
func request(environ []string, stdin []byte) []byte {
	var buf bytes.Buffer
	buf.WriteString(magic)
	for _, entry := range environ {
		if strings.HasPrefix(entry, "CNI_") && strings.Contains(entry, "=") {
			buf.WriteString(entry)
			buf.WriteByte(0)
		}
	}
	buf.WriteByte(0)
	buf.Write(stdin)
	return buf.Bytes()
}

// dialError: nobody accepted the connection (as opposed to a failure after it was accepted).
type dialError struct{ err error }

func (e dialError) Error() string { return e.err.Error() }

func call(path string, req []byte, timeout time.Duration) ([]byte, error) {
	conn, err := net.DialTimeout("unix", path, timeout)
	if err != nil {
		return nil, dialError{err}
	}
	defer conn.Close()
	unix := conn.(*net.UnixConn)
	if err := unix.SetDeadline(time.Now().Add(timeout)); err != nil {
		return nil, err
	}
	if _, err := unix.Write(req); err != nil {
		return nil, err
	}
	if err := unix.CloseWrite(); err != nil {
		return nil, err
	}
	return io.ReadAll(unix)
}

// agentAbsent: nobody listens on the socket (no file, or a file nobody accepts on).
func agentAbsent(err error) bool {
	var dial dialError
	return errors.As(err, &dial) &&
		(errors.Is(dial.err, syscall.ENOENT) || errors.Is(dial.err, syscall.ECONNREFUSED))
}

// unavailable: why the agent gave no answer, as the runtime should read it.
func unavailable(err error, path string, timeout time.Duration) (int, string, string) {
	var dial dialError
	if errors.As(err, &dial) {
		reason := strerror(dial.err)
		if errors.Is(dial.err, syscall.EACCES) || errors.Is(dial.err, syscall.EPERM) {
			return ioFailure, "no permission to connect to " + path,
				reason + "; the plugin must run as root like the agent"
		}
		return tryAgainLater, "the ovnk-secondary node agent is not running or still starting; try again later",
			fmt.Sprintf("cannot connect to %s: %s; check the node-agent pod on this node", path, reason)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return tryAgainLater, fmt.Sprintf("the node agent did not answer within %.0f s", timeout.Seconds()),
			"the agent may be overloaded; see its log; the runtime will retry"
	}
	return tryAgainLater, "lost the connection to the node agent: " + strerror(err),
		"the agent may have restarted; the runtime will retry"
}

// strerror: the C library's text of the errno behind err ("No such file or directory"), as
// Python's OSError.strerror gives it.
func strerror(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		text := errno.Error()
		return strings.ToUpper(text[:1]) + text[1:]
	}
	return err.Error()
}

// declared: the config's cniVersion when it is one we speak, else "".
func declared(stdin []byte) string {
	var config struct {
		CNIVersion string `json:"cniVersion"`
	}
	if json.Unmarshal(stdin, &config) == nil && slices.Contains(supportedVersions, config.CNIVersion) {
		return config.CNIVersion
	}
	return ""
}

func version(stdin []byte, out io.Writer) int {
	v := declared(stdin)
	if v == "" {
		v = supportedVersions[len(supportedVersions)-1]
	}
	body, _ := json.Marshal(struct {
		CNIVersion        string   `json:"cniVersion"`
		SupportedVersions []string `json:"supportedVersions"`
	}{v, supportedVersions})
	out.Write(append(body, '\n'))
	return 0
}

func failTo(out io.Writer, stdin []byte, code int, msg, details string) int {
	v := declared(stdin)
	if v == "" {
		v = defaultVersion
	}
	body, _ := json.Marshal(cniError{v, code, msg, details})
	out.Write(append(body, '\n'))
	return 1
}

func fail(stdin []byte, code int, msg, details string) int {
	return failTo(os.Stdout, stdin, code, msg, details)
}
