package netns

import (
	"bufio"
	"net"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cairnstore/cairn/internal/testutil"
)

// TestNetwork: a node reaches the host through its veth and the bridge,
// not while its link is cut or the host is cut off, again once healed; a second Setup with the
// same tag replaces what the first left; a Redirect takes a node's
// connections to a proxy; Teardown leaves nothing.
func TestNetwork(t *testing.T) {
	if os.Geteuid() != 0 {
		if testutil.OnCI() {
			t.Fatal("needs root (network namespaces)")
		}
		t.Skip("needs root (network namespaces)")
	}
	tag := Tag(t.TempDir())
	t.Cleanup(func() { _ = Clean(tag) }) // also when the test fails
	_, err := Setup(tag, []string{"a", "b"})
	require.NoError(t, err)
	n, err := Setup(tag, []string{"a", "b"}) // over the first one's leftovers
	require.NoError(t, err)
	require.NoError(t, send(t, n, "b", reachable))
	require.NoError(t, n.Cut("b"))
	require.Error(t, send(t, n, "b", unreachable))
	require.NoError(t, n.Heal("b"))
	require.NoError(t, send(t, n, "b", reachable))
	require.NoError(t, n.CutHost("b"))
	require.Error(t, send(t, n, "b", unreachable))
	require.NoError(t, n.HealHost("b"))
	require.NoError(t, send(t, n, "b", reachable))
	redirect(t, n)

	path := t.TempDir() + "/net.json"
	require.NoError(t, n.Save(path))
	loaded, err := Load(path)
	require.NoError(t, err)
	require.NoError(t, loaded.Teardown())
	_, err = os.Stat(n.nsPath(1))
	require.True(t, os.IsNotExist(err), "namespace left after Teardown")
	_, err = net.InterfaceByName(n.bridge())
	require.Error(t, err, "bridge left after Teardown")
}

// redirect: with a Redirect, a connection from node a to an address
// nobody listens on (node b's, a closed port) reaches a listener on the
// bridge; after Unredirect it fails again.
func redirect(t *testing.T, n *Network) {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(n.HostAddress(), "0"))
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("proxied\n"))
			c.Close()
		}
	}()
	b, err := n.Address("b")
	require.NoError(t, err)
	from := net.JoinHostPort(b, "9")
	dial := func(limit string) (string, error) {
		cmd, err := n.Command("a", "timeout", limit, "bash", "-c", "exec 3<>/dev/tcp/"+b+"/9 && head -1 <&3")
		require.NoError(t, err)
		out, err := cmd.Output()
		return string(out), err
	}
	_, err = dial(unreachable)
	require.Error(t, err, "port 9 of node b answered without a redirect")
	require.NoError(t, n.Redirect("a", from, ln.Addr().String()))
	out, err := dial(reachable)
	require.NoError(t, err)
	require.Equal(t, "proxied\n", out)
	require.NoError(t, n.Unredirect("a", from, ln.Addr().String()))
	_, err = dial(unreachable)
	require.Error(t, err, "the redirect outlived Unredirect")
}

// Limits for a connection from a namespace (nsenter, bash, connect): one
// that must fail gets 2 seconds, long enough for a reachable listener to
// answer on an idle link; one that must succeed gets the time a loaded
// machine may take to start the processes.
const unreachable, reachable = "2", "60"

// send connects from node's namespace to a listener on the bridge
// (bash's /dev/tcp, within limit seconds) and checks the line arrives.
func send(t *testing.T, n *Network, node, limit string) error {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(n.HostAddress(), "0"))
	require.NoError(t, err)
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		line, _ := bufio.NewReader(c).ReadString('\n')
		got <- line
	}()
	host, port, _ := net.SplitHostPort(ln.Addr().String())
	cmd, err := n.Command(node, "timeout", limit, "bash", "-c", "echo hello > /dev/tcp/"+host+"/"+port)
	require.NoError(t, err)
	if err := cmd.Run(); err != nil {
		return err
	}
	select {
	case line := <-got:
		require.Equal(t, "hello\n", line)
		return nil
	case <-time.After(10 * time.Second):
		t.Fatal("connected but nothing arrived")
		return nil
	}
}
