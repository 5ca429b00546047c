package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
)

// devNodeCSISocket is the CSI node socket in a node's data directory.
const devNodeCSISocket = "csi.sock"

// devZones are the zones simulated nodes get, round robin.
var devZones = []string{"a", "b", "c"}

// devNode is a child process of dev: a simulated node (a `cairn node` with
// its own data directory under DATA/nodes/NAME) or a CSI sidecar.
type devNode struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

// ensureSystemNamespace creates cairn-system, where tokens and node
// heartbeats live.
func ensureSystemNamespace(ctx context.Context, c client.Client) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: v1.SystemNamespace}}
	return client.IgnoreAlreadyExists(c.Create(ctx, ns))
}

// devNodeName is the name of the i-th (1-based) simulated node.
func devNodeName(i int) string { return fmt.Sprintf("dev-node-%d", i) }

// devNodeCommand makes the command that runs a node agent: plain exec,
// or inside the node's network namespace with --netns (devNetwork.command).
type devNodeCommand func(node, exe string, args []string) (*exec.Cmd, error)

func plainCommand(_, exe string, args []string) (*exec.Cmd, error) {
	return exec.Command(exe, args...), nil
}

// startDevNodes starts n node agents named dev-node-1..n in zones a, b, c
// against the dev cluster's kubeconfig.
func startDevNodes(dataDir, kubeconfig string, n int, command devNodeCommand) ([]*devNode, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	var nodes []*devNode
	for i := 1; i <= n; i++ {
		name := devNodeName(i)
		dir := filepath.Join(dataDir, "nodes", name)
		node, err := startDevNode(command, exe, name, dir, devZones[(i-1)%len(devZones)], kubeconfig)
		if err != nil {
			stopDevNodes(nodes)
			return nil, err
		}
		nodes = append(nodes, node)
	}
	return nodes, nil
}

func startDevNode(command devNodeCommand, exe, name, dir, zone, kubeconfig string) (*devNode, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	cmd, err := command(name, exe, []string{"node", "--name", name, "--data-dir", dir, "--zone", zone, "--kubeconfig", kubeconfig,
		"--csi-endpoint", "unix://" + filepath.Join(dir, devNodeCSISocket)})
	if err != nil {
		return nil, err
	}
	return startDevChild(name, cmd, filepath.Join(dir, "node.log"))
}

// startDevChild starts a child process of dev in its own process group,
// killed with dev (Pdeathsig), its output appended to logPath.
func startDevChild(name string, cmd *exec.Cmd, logPath string) (*devNode, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	d := &devNode{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(d.done) }()
	return d, nil
}

// stopDevNodes asks every child to exit (SIGTERM; an agent stops its own
// children first), and kills those still running after 90 seconds (an
// agent takes up to a minute to flush and stop its children).
func stopDevNodes(nodes []*devNode) {
	for _, n := range nodes {
		_ = n.cmd.Process.Signal(syscall.SIGTERM)
	}
	deadline := time.After(90 * time.Second)
	for _, n := range nodes {
		select {
		case <-n.done:
		case <-deadline:
			_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
			<-n.done
		}
	}
}
