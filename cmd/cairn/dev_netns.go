package main

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/cairnstore/cairn/internal/netns"
)

// devNetworkFile describes the --netns network (netns.Load) for tests that
// cut and heal node links.
const devNetworkFile = "network.json"

// devNetwork is the --netns network: a namespace per node on a host
// bridge, and forwarders from the bridge to the API server and to the
// local S3 server (both listen on the host's loopback only).
type devNetwork struct {
	net *netns.Network
	api *netns.Forwarder
}

// forwardS3 forwards the same port on the bridge to the S3 server on
// 127.0.0.1:port: its address is the endpoint every process reaches (the
// manager on the host as well as the agents in their namespaces). The
// bridge keeps its address across runs of one data directory, so
// BackupTargets keep working.
func (n *devNetwork) forwardS3(port int) (*netns.Forwarder, error) {
	p := strconv.Itoa(port)
	fwd, err := netns.Forward(net.JoinHostPort(n.net.HostAddress(), p), net.JoinHostPort("127.0.0.1", p))
	if err != nil {
		return nil, fmt.Errorf("--netns: forward the S3 server: %w", err)
	}
	return fwd, nil
}

// nodeNetwork returns the kubeconfig the node agents use and how to start
// them: the admin kubeconfig and a plain exec, or with --netns a network
// of namespaces, a kubeconfig through the bridge and an exec inside each
// node's namespace with --address its namespace's address.
func (d *devRun) nodeNetwork() (string, devNodeCommand, error) {
	if !d.opts.netns {
		return d.kubeconfig, plainCommand, nil
	}
	var names []string
	for i := 1; i <= d.opts.nodes; i++ {
		names = append(names, devNodeName(i))
	}
	nw, err := netns.Setup(netns.Tag(d.dataDir), names)
	if err != nil {
		return "", nil, fmt.Errorf("--netns: %w", err)
	}
	d.network = &devNetwork{net: nw}
	d.onStop(func() {
		if err := nw.Teardown(); err != nil {
			fmt.Fprintln(os.Stderr, "remove the node network:", err)
		}
	})
	kubeconfig, err := d.forwardAPIServer()
	if err != nil {
		return "", nil, err
	}
	if err := nw.Save(filepath.Join(d.dataDir, devNetworkFile)); err != nil {
		return "", nil, err
	}
	fmt.Printf("Nodes on network %s (bridge address %s), one network namespace each; the API server through %s\n", nw.Subnet(), nw.HostAddress(), d.network.api.Addr())
	return kubeconfig, d.network.command, nil
}

// forwardAPIServer starts the forwarder on the bridge and writes the
// node agents' kubeconfig: the admin one with the server at the forwarder,
// verified as "localhost" (a name the API server's certificate holds).
func (d *devRun) forwardAPIServer() (string, error) {
	u, err := url.Parse(d.cluster.Config.Host)
	if err != nil {
		return "", err
	}
	fwd, err := netns.Forward(net.JoinHostPort(d.network.net.HostAddress(), "0"), u.Host)
	if err != nil {
		return "", fmt.Errorf("--netns: forward the API server: %w", err)
	}
	d.network.api = fwd
	d.onStop(func() { _ = fwd.Close() })
	cfg, err := clientcmd.LoadFromFile(d.kubeconfig)
	if err != nil {
		return "", err
	}
	for _, c := range cfg.Clusters {
		c.Server = "https://" + fwd.Addr()
		c.TLSServerName = "localhost"
	}
	path := filepath.Join(d.dataDir, "kubeconfig-nodes")
	return path, clientcmd.WriteToFile(*cfg, path)
}

// command runs a node agent inside node's namespace, its replicas
// listening on the namespace's address.
func (n *devNetwork) command(node, exe string, args []string) (*exec.Cmd, error) {
	addr, err := n.net.Address(node)
	if err != nil {
		return nil, err
	}
	return n.net.Command(node, exe, append(args, "--address", addr)...)
}
