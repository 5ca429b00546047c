// Package netns puts simulated nodes on a real network: one Linux network
// namespace per node, each joined by a veth pair to a bridge on the host
// that holds the first address of a private /24. Traffic between nodes,
// and from a node to the host, crosses the kernel's network stack, and a
// node's link can be cut (ip link set ... down) and healed. Needs root and
// the ip and nsenter commands.
package netns

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// nsDir is where `ip netns` keeps named namespaces.
const nsDir = "/run/netns"

// Network is a bridge and one namespace per node, all named after a tag
// derived from the owner's data directory, so the next start of the same
// owner finds and removes what a killed run left.
type Network struct {
	tag    string
	prefix string // the /24's first three octets, "10.213.N"
	nodes  []string
}

// Tag names the namespaces and links of the run owning dataDir.
func Tag(dataDir string) string {
	sum := sha256.Sum256([]byte(dataDir))
	return hex.EncodeToString(sum[:3])
}

// Setup removes what an earlier run with the same tag left, then creates
// the bridge and one namespace per node (the i-th node gets address
// PREFIX.(i+2)), each with its loopback up.
func Setup(tag string, nodes []string) (*Network, error) {
	if err := Clean(tag); err != nil {
		return nil, err
	}
	prefix, err := freeSubnet(tag)
	if err != nil {
		return nil, err
	}
	n := &Network{tag: tag, prefix: prefix}
	if err := n.addBridge(); err != nil {
		return nil, errors.Join(err, n.Teardown())
	}
	for _, node := range nodes {
		n.nodes = append(n.nodes, node)
		if err := n.addNode(len(n.nodes)); err != nil {
			return nil, errors.Join(fmt.Errorf("node %s: %w", node, err), n.Teardown())
		}
	}
	return n, nil
}

func (n *Network) bridge() string        { return "cb" + n.tag }
func (n *Network) hostVeth(i int) string { return fmt.Sprintf("cv%sn%d", n.tag, i) }
func (n *Network) nsName(i int) string   { return fmt.Sprintf("cairn-%s-%d", n.tag, i) }
func (n *Network) addr(i int) string     { return fmt.Sprintf("%s.%d", n.prefix, i+1) }
func (n *Network) HostAddress() string   { return n.addr(0) }
func (n *Network) nsPath(i int) string   { return filepath.Join(nsDir, n.nsName(i)) }
func (n *Network) Nodes() []string       { return append([]string(nil), n.nodes...) }
func (n *Network) Subnet() string        { return n.prefix + ".0/24" }

func (n *Network) addBridge() error {
	return run([][]string{
		{"link", "add", n.bridge(), "type", "bridge"},
		{"addr", "add", n.HostAddress() + "/24", "dev", n.bridge()},
		{"link", "set", n.bridge(), "up"},
	})
}

func (n *Network) addNode(i int) error {
	ns := n.nsName(i)
	return run([][]string{
		{"netns", "add", ns},
		{"link", "add", n.hostVeth(i), "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"link", "set", n.hostVeth(i), "master", n.bridge(), "up"},
		{"-n", ns, "addr", "add", n.addr(i) + "/24", "dev", "eth0"},
		{"-n", ns, "link", "set", "eth0", "up"},
		{"-n", ns, "link", "set", "lo", "up"},
	})
}

// index is the 1-based position of node.
func (n *Network) index(node string) (int, error) {
	for i, name := range n.nodes {
		if name == node {
			return i + 1, nil
		}
	}
	return 0, fmt.Errorf("no node %q on network %s", node, n.tag)
}

// Address is node's address inside its namespace.
func (n *Network) Address(node string) (string, error) {
	i, err := n.index(node)
	if err != nil {
		return "", err
	}
	return n.addr(i), nil
}

// Command is name args run inside node's namespace (nsenter joins only the
// network namespace: mounts, pids and the file system are the host's).
func (n *Network) Command(node, name string, args ...string) (*exec.Cmd, error) {
	i, err := n.index(node)
	if err != nil {
		return nil, err
	}
	return exec.Command("nsenter", append([]string{"--net=" + n.nsPath(i), "--", name}, args...)...), nil
}

// Cut takes node's link down: it reaches no other node and not the host.
func (n *Network) Cut(node string) error { return n.setLink(node, "down") }

// Heal brings node's link back up.
func (n *Network) Heal(node string) error { return n.setLink(node, "up") }

func (n *Network) setLink(node, state string) error {
	i, err := n.index(node)
	if err != nil {
		return err
	}
	return run([][]string{{"link", "set", n.hostVeth(i), state}})
}

// Teardown removes the namespaces and the bridge. Processes still running
// in a namespace lose their network.
func (n *Network) Teardown() error { return Clean(n.tag) }

// Clean removes every namespace, veth and bridge named with tag.
func Clean(tag string) error {
	// Deleting a veth's host end deletes its peer in the namespace.
	links, err := net.Interfaces()
	if err != nil {
		return err
	}
	var errs []error
	for _, l := range links {
		if strings.HasPrefix(l.Name, "cv"+tag) || l.Name == "cb"+tag {
			errs = append(errs, run([][]string{{"link", "del", l.Name}}))
		}
	}
	entries, _ := os.ReadDir(nsDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "cairn-"+tag+"-") {
			errs = append(errs, run([][]string{{"netns", "del", e.Name()}}))
		}
	}
	return errors.Join(errs...)
}

// freeSubnet picks a /24 in 10.213.0.0/16, starting from one the tag
// chooses, that no address or route of the host overlaps.
func freeSubnet(tag string) (string, error) {
	b, _ := hex.DecodeString(tag)
	used, err := usedNets()
	if err != nil {
		return "", err
	}
	for k := 0; k < 256; k++ {
		prefix := fmt.Sprintf("10.213.%d", (int(b[0])+k)%256)
		_, cand, _ := net.ParseCIDR(prefix + ".0/24")
		if !overlaps(cand, used) {
			return prefix, nil
		}
	}
	return "", errors.New("no free /24 in 10.213.0.0/16")
}

// usedNets are the host's address networks and route destinations.
func usedNets() ([]*net.IPNet, error) {
	var used []*net.IPNet
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok {
			used = append(used, ipn)
		}
	}
	out, err := exec.Command("ip", "-4", "route", "show", "table", "all").Output()
	if err != nil {
		return nil, fmt.Errorf("ip route: %w", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] == "default" {
			continue
		}
		dst := f[0]
		if f[0] == "local" || f[0] == "broadcast" {
			if len(f) < 2 {
				continue
			}
			dst = f[1]
		}
		if !strings.Contains(dst, "/") {
			dst += "/32"
		}
		if _, ipn, err := net.ParseCIDR(dst); err == nil {
			used = append(used, ipn)
		}
	}
	return used, nil
}

func overlaps(a *net.IPNet, used []*net.IPNet) bool {
	for _, u := range used {
		if u.Contains(a.IP) || a.Contains(u.IP) {
			return true
		}
	}
	return false
}

// run runs each `ip` command in turn and stops at the first failure.
func run(cmds [][]string) error {
	for _, args := range cmds {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// state is what Save writes for other processes (tests) to Load.
type state struct {
	Tag    string   `json:"tag"`
	Prefix string   `json:"prefix"`
	Nodes  []string `json:"nodes"`
}

// Save writes the network's description to path.
func (n *Network) Save(path string) error {
	b, err := json.Marshal(state{Tag: n.tag, Prefix: n.prefix, Nodes: n.nodes})
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// Load reads a network another process set up and saved to path.
func Load(path string) (*Network, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s state
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &Network{tag: s.Tag, prefix: s.Prefix, nodes: s.Nodes}, nil
}

// CutHost cuts node off from the host's bridge address (and so from the
// API server behind it) while it still reaches every other node: a
// blackhole route in its namespace.
func (n *Network) CutHost(node string) error { return n.hostRoute(node, "add") }

// HealHost removes CutHost's route.
func (n *Network) HealHost(node string) error { return n.hostRoute(node, "del") }

func (n *Network) hostRoute(node, op string) error {
	i, err := n.index(node)
	if err != nil {
		return err
	}
	return run([][]string{{"-n", n.nsName(i), "route", op, "blackhole", n.HostAddress() + "/32"}})
}

// Redirect sends node's new TCP connections to the address from to the
// address to instead (a DNAT rule in node's namespace, so it needs
// iptables): a test puts a proxy (latency, bandwidth) between one node's
// processes and one server. Connections already open keep their path.
func (n *Network) Redirect(node, from, to string) error { return n.dnat(node, "-A", from, to) }

// Unredirect removes Redirect's rule.
func (n *Network) Unredirect(node, from, to string) error { return n.dnat(node, "-D", from, to) }

func (n *Network) dnat(node, op, from, to string) error {
	i, err := n.index(node)
	if err != nil {
		return err
	}
	host, port, err := net.SplitHostPort(from)
	if err != nil {
		return err
	}
	return run([][]string{{"netns", "exec", n.nsName(i), "iptables", "-t", "nat", op, "OUTPUT",
		"-d", host, "-p", "tcp", "--dport", port, "-j", "DNAT", "--to-destination", to}})
}
