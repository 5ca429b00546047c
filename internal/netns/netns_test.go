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
// same tag replaces what the first left; Teardown leaves nothing.
func TestNetwork(t *testing.T) {
	if os.Geteuid() != 0 {
		if testutil.OnCI() {
			t.Fatal("needs root (network namespaces)")
		}
		t.Skip("needs root (network namespaces)")
	}
	tag := Tag(t.TempDir())
	_, err := Setup(tag, []string{"a", "b"})
	require.NoError(t, err)
	n, err := Setup(tag, []string{"a", "b"}) // over the first one's leftovers
	require.NoError(t, err)
	require.NoError(t, send(t, n, "b"))
	require.NoError(t, n.Cut("b"))
	require.Error(t, send(t, n, "b"))
	require.NoError(t, n.Heal("b"))
	require.NoError(t, send(t, n, "b"))
	require.NoError(t, n.CutHost("b"))
	require.Error(t, send(t, n, "b"))
	require.NoError(t, n.HealHost("b"))
	require.NoError(t, send(t, n, "b"))

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

// send connects from node's namespace to a listener on the bridge
// (bash's /dev/tcp, with a 2-second limit) and checks the line arrives.
func send(t *testing.T, n *Network, node string) error {
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
	cmd, err := n.Command(node, "timeout", "2", "bash", "-c", "echo hello > /dev/tcp/"+host+"/"+port)
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
