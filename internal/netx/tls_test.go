package netx

import (
	"bytes"
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDeriveTLSKey(t *testing.T) {
	a, err := DeriveTLSKey([]byte("token-a"), "replica")
	require.NoError(t, err)
	a2, err := DeriveTLSKey([]byte("token-a"), "replica")
	require.NoError(t, err)
	b, err := DeriveTLSKey([]byte("token-b"), "replica")
	require.NoError(t, err)
	ctl, err := DeriveTLSKey([]byte("token-a"), "engine-control")
	require.NoError(t, err)
	require.Equal(t, a.pub, a2.pub, "both ends derive the same key")
	require.NotEqual(t, a.pub, b.pub)
	require.NotEqual(t, a.pub, ctl.pub, "purposes have their own keys")
	_, err = DeriveTLSKey(nil, "replica")
	require.Error(t, err)
}

// countingConn counts the writes that reach the socket.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(b []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(b)
}

// pair is a TLS client and server connection and their handshake errors.
type pair struct {
	c          *TLSConn
	cc         *countingConn // the client's socket
	s          net.Conn
	cerr, serr error
}

// tlsPair connects a TLS client and server over loopback TCP; the
// client's socket counts writes.
func tlsPair(t *testing.T, clientKey, serverKey *TLSKey) pair {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	srv := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srv <- res{nil, err}
			return
		}
		t.Cleanup(func() { c.Close() })
		tc, err := TLSServer(context.Background(), c, serverKey.ServerConfig())
		if err != nil {
			srv <- res{nil, err}
			return
		}
		srv <- res{tc, nil}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { raw.Close() })
	cc := &countingConn{Conn: raw}
	tc, cerr := TLSClient(context.Background(), cc, clientKey.ClientConfig())
	s := <-srv
	return pair{c: tc, cc: cc, s: s.c, cerr: cerr, serr: s.err}
}

// TestTLSConnCorksRecords: the records of one Write reach the socket as
// one write per 64 KiB (a batch of small frames is one write, crypto/tls
// alone makes one per 16 KiB record), and the peer reads them intact.
func TestTLSConnCorksRecords(t *testing.T) {
	key, err := DeriveTLSKey([]byte("token"), "test")
	require.NoError(t, err)
	p := tlsPair(t, key, key)
	require.NoError(t, p.cerr)
	require.NoError(t, p.serr)
	for _, tc := range []struct {
		size   int
		writes int64
	}{
		{60000, 1},  // 4 records
		{320000, 5}, // 20 records
	} {
		data := bytes.Repeat([]byte("0123456789abcdef"), tc.size/16)
		before := p.cc.writes.Load()
		got := make(chan []byte, 1)
		go func() {
			b := make([]byte, len(data))
			if _, err := io.ReadFull(p.s, b); err != nil {
				b = nil
			}
			got <- b
		}()
		n, err := p.c.Write(data)
		require.NoError(t, err)
		require.Equal(t, len(data), n)
		require.Equal(t, tc.writes, p.cc.writes.Load()-before, "write system calls for a Write of %d bytes", tc.size)
		require.Equal(t, data, <-got)
	}
}

// TestTLSWrongKey: both sides refuse a peer with another key.
func TestTLSWrongKey(t *testing.T) {
	a, err := DeriveTLSKey([]byte("token-a"), "test")
	require.NoError(t, err)
	b, err := DeriveTLSKey([]byte("token-b"), "test")
	require.NoError(t, err)
	p := tlsPair(t, a, b)
	require.ErrorIs(t, p.cerr, ErrPeerKey, "the client refuses the server")
	require.Error(t, p.serr, "the server sees the refusal")
}
