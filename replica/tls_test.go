package replica

import (
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cairnstore/cairn/internal/netx"
	"github.com/cairnstore/cairn/internal/testutil"
	"github.com/cairnstore/cairn/replica/wire"
)

// startTCPServer serves r on a loopback TCP port, over TLS unless
// plaintext, and returns its address.
func startTCPServer(t testing.TB, r *Replica, token string, plaintext bool) string {
	t.Helper()
	ln, err := Listen("127.0.0.1:0")
	require.NoError(t, err)
	s, err := NewServer(r, token, nil)
	require.NoError(t, err)
	s.plaintextTCP = plaintext
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return ln.Addr().String()
}

// dialPlaintext connects to addr without TLS whatever the address.
func dialPlaintext(t testing.TB, addr, token string) (*Client, error) {
	t.Helper()
	cred, err := wire.NewCredentials(token)
	require.NoError(t, err)
	raw, err := netx.Dial(context.Background(), addr)
	require.NoError(t, err)
	conn, err := wire.ClientHandshake(context.Background(), raw, cred, false)
	if err != nil {
		raw.Close()
		return nil, err
	}
	c := &Client{c: wire.NewConn(conn, addr)}
	t.Cleanup(func() { c.Close() })
	return c, nil
}

// TestTLSRefusals: over TCP a client with another token, a client
// without TLS and a client that ignores the preamble are refused with an
// error that says why, and a TLS client refuses a plaintext server.
func TestTLSRefusals(t *testing.T) {
	r := newTestReplica(t, 1<<20)
	addr := startTCPServer(t, r, testToken, false)
	ctx := context.Background()

	c, err := Dial(ctx, addr, testToken)
	require.NoError(t, err, "the right token over TLS")
	require.NoError(t, c.Ping(ctx))
	c.Close()

	_, err = Dial(ctx, addr, "another-token")
	require.ErrorIs(t, err, ErrAuth)
	require.ErrorIs(t, err, netx.ErrPeerKey)
	require.ErrorContains(t, err, "wrong token?")

	_, err = dialPlaintext(t, addr, testToken)
	require.ErrorIs(t, err, ErrAuth)
	require.ErrorContains(t, err, "requires TLS")

	// A client that skips TLS and answers the challenge in plaintext gets
	// nothing but the preamble (and at most a TLS alert).
	raw, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer raw.Close()
	pre := make([]byte, wire.PreambleSize)
	_, err = io.ReadFull(raw, pre)
	require.NoError(t, err)
	msg := make([]byte, 12+wire.NonceSize+wire.MACSize)
	copy(msg, wire.Magic)
	_, err = raw.Write(msg)
	require.NoError(t, err)
	raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	rest, err := io.ReadAll(raw)
	require.NoError(t, err, "the server closes the connection")
	if len(rest) > 0 {
		require.EqualValues(t, 0x15, rest[0], "only a TLS alert record may follow the preamble, got %x", rest)
	}

	plain := startTCPServer(t, r, testToken, true)
	_, err = Dial(ctx, plain, testToken)
	require.ErrorIs(t, err, ErrAuth)
	require.ErrorContains(t, err, "serves plaintext TCP")
}

// canary is written to replicas and must never be seen on the wire.
var canary = []byte("cairn-plaintext-canary-7d0c41e9-")

func canaryBlock(n int) []byte { return bytes.Repeat(canary, n/len(canary)+1)[:n] }

// TestTLSTrafficEncrypted: data written through the engine's client and
// pulled from replica to replica crosses a capturing TCP proxy; the
// written pattern never appears in what the proxy forwarded. With TLS
// off the same pattern does appear, so the capture sees the data.
func TestTLSTrafficEncrypted(t *testing.T) {
	const size = 1 << 20
	ctx := context.Background()
	data := canaryBlock(256 << 10)

	// Client to replica over TLS: a small and a large write, read back.
	r := newTestReplica(t, size)
	p := testutil.StartCaptureProxy(t, startTCPServer(t, r, testToken, false))
	c, err := Dial(ctx, p.Addr, testToken)
	require.NoError(t, err)
	defer c.Close()
	_, err = c.WriteAt(ctx, data[:BlockSize], 0)
	require.NoError(t, err)
	_, err = c.WriteAt(ctx, data, BlockSize)
	require.NoError(t, err)
	got := make([]byte, len(data))
	_, err = c.ReadAt(ctx, got, BlockSize)
	require.NoError(t, err)
	require.Equal(t, data, got)
	wireBytes := p.Captured()
	require.Greater(t, len(wireBytes), 2*len(data), "the data crossed the proxy")
	require.False(t, bytes.Contains(wireBytes, canary), "plaintext data on the wire")

	// Replica to replica (PullLayer) over TLS, source behind the proxy.
	src, dst := newTestReplica(t, size), newTestReplica(t, size)
	for off := int64(0); off < size; off += int64(len(data)) {
		_, err := src.WriteAt(data, off)
		require.NoError(t, err)
	}
	require.NoError(t, src.Snapshot("s", nil))
	sum, err := src.Checksum("s")
	require.NoError(t, err)
	ps := testutil.StartCaptureProxy(t, startTCPServer(t, src, testToken, false))
	dc, err := Dial(ctx, startTCPServer(t, dst, testToken, false), testToken)
	require.NoError(t, err)
	defer dc.Close()
	require.NoError(t, dc.ResetForRebuild(ctx, nil, []SnapshotInfo{{Name: "s", Checksum: sum}}))
	_, err = dc.PullLayer(ctx, "s", ps.Addr, 0, size)
	require.NoError(t, err)
	require.NoError(t, dc.CommitLayer(ctx, "s"))
	pulled := ps.Captured()
	require.Greater(t, len(pulled), size/2)
	require.False(t, bytes.Contains(pulled, canary), "plaintext data on the wire")

	// Control: the same write without TLS shows the pattern.
	r2 := newTestReplica(t, size)
	pp := testutil.StartCaptureProxy(t, startTCPServer(t, r2, testToken, true))
	pc, err := dialPlaintext(t, pp.Addr, testToken)
	require.NoError(t, err)
	_, err = pc.WriteAt(ctx, data, 0)
	require.NoError(t, err)
	require.True(t, bytes.Contains(pp.Captured(), canary), "the capture sees plaintext")
}
