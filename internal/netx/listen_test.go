package netx

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestCloseSparesReplacedSocket: a listener whose path another listener
// has taken over does not remove the newcomer's socket when it closes.
func TestCloseSparesReplacedSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	old, err := Listen("unix:" + path)
	require.NoError(t, err)
	cur, err := Listen("unix:" + path)
	require.NoError(t, err)
	defer cur.Close()
	require.NoError(t, old.Close())
	c, err := net.Dial("unix", path)
	require.NoError(t, err, "the new listener's socket is gone")
	c.Close()
}

// TestDialReachesListen: Dial connects to what Listen opened, for a unix
// socket and for TCP.
func TestDialReachesListen(t *testing.T) {
	for _, addr := range []string{"unix:" + filepath.Join(t.TempDir(), "d.sock"), "127.0.0.1:0"} {
		ln, err := Listen(addr)
		require.NoError(t, err)
		defer ln.Close()
		if !IsUnix(addr) {
			addr = ln.Addr().String()
		}
		go func() {
			if c, err := ln.Accept(); err == nil {
				c.Write([]byte("hi"))
				c.Close()
			}
		}()
		c, err := Dial(context.Background(), addr)
		require.NoError(t, err, addr)
		b := make([]byte, 2)
		_, err = io.ReadFull(c, b)
		require.NoError(t, err)
		require.Equal(t, "hi", string(b))
		c.Close()
	}
	network, path := SplitAddr("unix:/run/x.sock")
	require.Equal(t, []string{"unix", "/run/x.sock"}, []string{network, path})
	network, path = SplitAddr("host:1")
	require.Equal(t, []string{"tcp", "host:1"}, []string{network, path})
}
