package netx

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cairnstore/cairn/internal/testutil"
)

func TestListenUnixMode(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")
	for range 2 { // the second Listen replaces the stale socket
		ln, err := Listen("unix:" + path)
		require.NoError(t, err)
		st, err := os.Stat(path)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), st.Mode().Perm())
		require.Equal(t, path, ln.Addr().String())
		c, err := net.Dial("unix", path)
		require.NoError(t, err)
		c.Close()
		ln.(*unixListener).UnixListener.Close() // leave the socket behind
	}
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, ents, 1, "no temporary directory is left")

	ln, err := Listen("unix:" + path)
	require.NoError(t, err)
	require.NoError(t, ln.Close())
	require.NoFileExists(t, path)

	require.NoError(t, os.WriteFile(path, nil, 0o600))
	_, err = Listen("unix:" + path)
	require.Error(t, err, "a regular file is not replaced")
}

// serveTest runs Serve with handle and returns the address and Serve's
// result channel.
func serveTest(t *testing.T, cfg Config, handle func(net.Conn, func())) (string, <-chan error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := Listen("unix:" + path)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, cfg, handle) }()
	t.Cleanup(func() { cancel(); <-done })
	return path, done
}

// echoAfterAuth authenticates a connection when it sends "a", then echoes.
func echoAfterAuth(c net.Conn, authed func()) {
	b := make([]byte, 1)
	for {
		if _, err := c.Read(b); err != nil {
			return
		}
		if b[0] == 'a' {
			authed()
		}
		c.Write(b)
	}
}

func dialEcho(t *testing.T, path string, auth bool) (net.Conn, bool) {
	t.Helper()
	c, err := net.Dial("unix", path)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	msg := []byte("x")
	if auth {
		msg[0] = 'a'
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(msg); err != nil {
		return c, false
	}
	_, err = c.Read(msg)
	return c, err == nil
}

func TestServeCapsUnauthenticated(t *testing.T) {
	var logs atomic.Int32
	cfg := Config{MaxUnauthenticated: 3, Log: func(string, ...any) { logs.Add(1) }}
	path, _ := serveTest(t, cfg, echoAfterAuth)
	for range 5 { // authenticated connections do not count
		_, ok := dialEcho(t, path, true)
		require.True(t, ok)
	}
	served := 0
	for range 6 {
		if _, ok := dialEcho(t, path, false); ok {
			served++
		}
	}
	require.Equal(t, 3, served)
	require.Equal(t, int32(1), logs.Load(), "rejections are rate-limited")
}

func TestServeRetriesEMFILE(t *testing.T) {
	path, done := serveTest(t, Config{}, echoAfterAuth)
	hog := testutil.ExhaustFDs(t)
	hog.Free(1)
	c, err := net.Dial("unix", path)
	require.NoError(t, err)
	select {
	case err := <-done:
		t.Fatalf("Serve returned: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	hog.Restore()
	c.Close()
	_, ok := dialEcho(t, path, true)
	require.True(t, ok)
}

func TestServeClosesConnectionsOnCancel(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := Listen("unix:" + path)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, Config{}, echoAfterAuth) }()
	c, ok := dialEcho(t, path, true)
	require.True(t, ok)
	cancel()
	require.NoError(t, <-done)
	_, err = c.Read(make([]byte, 1))
	require.Error(t, err)
}

func TestLimitListener(t *testing.T) {
	inner, err := Listen("127.0.0.1:0")
	require.NoError(t, err)
	ln := LimitListener(inner, 1)
	defer ln.Close()
	d1, err := net.Dial("tcp", inner.Addr().String())
	require.NoError(t, err)
	defer d1.Close()
	a1, err := ln.Accept()
	require.NoError(t, err)
	d2, err := net.Dial("tcp", inner.Addr().String()) // over the cap: closed
	require.NoError(t, err)
	defer d2.Close()
	d2.SetReadDeadline(time.Now().Add(5 * time.Second))
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	_, err = d2.Read(make([]byte, 1))
	require.Error(t, err)
	require.NoError(t, a1.Close()) // frees the slot
	d3, err := net.Dial("tcp", inner.Addr().String())
	require.NoError(t, err)
	defer d3.Close()
	c := <-accepted
	require.NotNil(t, c)
	c.Close()
}

func TestBudget(t *testing.T) {
	b := NewBudget(10)
	ctx := context.Background()
	require.NoError(t, b.Acquire(ctx, 6))
	require.NoError(t, b.Acquire(ctx, 4))
	got := make(chan struct{})
	go func() {
		require.NoError(t, b.Acquire(ctx, 5))
		close(got)
	}()
	select {
	case <-got:
		t.Fatal("acquired beyond the limit")
	case <-time.After(50 * time.Millisecond):
	}
	b.Release(6)
	<-got
	require.Equal(t, int64(9), b.InUse())
	tctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, b.Acquire(tctx, 5), context.DeadlineExceeded)
	b.Release(9)
	require.NoError(t, b.Acquire(ctx, 100), "one request larger than the limit passes when nothing is held")
}

func TestLogLimiter(t *testing.T) {
	var got [][]any
	l := NewLogLimiter(time.Hour, func(_ string, kv ...any) { got = append(got, kv) })
	for range 5 {
		l.Log("m", "k", 1)
	}
	require.Len(t, got, 1)
	l.next = time.Time{}
	l.Log("m")
	require.Equal(t, []any{"suppressed", 4}, got[1])
}

// TestListenUnixLongPath: a path that fits bind still works although the
// temporary directory makes it longer.
func TestListenUnixLongPath(t *testing.T) {
	dir, err := os.MkdirTemp("", "netx")
	require.NoError(t, err)
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, strings.Repeat("x", maxSocketPath-len(dir)-1))
	require.Len(t, path, maxSocketPath)
	ln, err := Listen("unix:" + path)
	require.NoError(t, err)
	defer ln.Close()
	st, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	c, err := net.Dial("unix", path)
	require.NoError(t, err)
	c.Close()
}

// BenchmarkBudget is the cost a request pays: acquire and release.
func BenchmarkBudget(b *testing.B) {
	bu := NewBudget(64 << 20)
	ctx := context.Background()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := bu.Acquire(ctx, 4096); err != nil {
				b.Fatal(err)
			}
			bu.Release(4096)
		}
	})
}
