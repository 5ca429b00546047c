package nbd

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	"github.com/stretchr/testify/require"

	"github.com/cairnstore/cairn/engine"
	"github.com/cairnstore/cairn/internal/testutil"
)

// startLimitServer serves a sparse file with s (Backend set here) and
// returns the socket path and a channel that yields Serve's result.
func startLimitServer(t *testing.T, s *Server) (string, <-chan error) {
	t.Helper()
	dir := t.TempDir()
	b, err := engine.OpenFileBackend(filepath.Join(dir, "disk.raw"), testSize)
	require.NoError(t, err)
	t.Cleanup(func() { b.Close() })
	s.Export, s.Backend = "vol1", b
	sock := filepath.Join(dir, "nbd.sock")
	ln, err := Listen("unix:" + sock)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return")
		}
	})
	return sock, done
}

// TestServeSurvivesEMFILE: accept failing with EMFILE does not end Serve
// (which would take the volume offline), and the server serves a client
// once descriptors are free.
func TestServeSurvivesEMFILE(t *testing.T) {
	sock, done := startLimitServer(t, &Server{})
	hog := testutil.ExhaustFDs(t)
	hog.Free(1)
	c, err := net.Dial("unix", sock)
	require.NoError(t, err)
	select {
	case err := <-done:
		t.Fatalf("Serve returned while out of descriptors: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	hog.Restore()
	c.Close()

	good := rawClient(t, sock, false)
	sendReq(t, good, cmdWrite, 1, 0, 3, []byte("abc"))
	_, e := readSimple(t, good)
	require.Zero(t, e)
	select {
	case err := <-done:
		t.Fatalf("Serve returned: %v", err)
	default:
	}
}

// TestSocketModeIgnoresUmask: the NBD socket is 0600 even with umask 000.
func TestSocketModeIgnoresUmask(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	path := filepath.Join(t.TempDir(), "nbd.sock")
	ln, err := Listen("unix:" + path)
	require.NoError(t, err)
	defer ln.Close()
	st, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm())
}

// TestBrokenClientsLogRateLimited: clients that break the protocol log a
// few lines, not one each.
func TestBrokenClientsLogRateLimited(t *testing.T) {
	var lines atomic.Int32
	log := funcr.New(func(_, _ string) { lines.Add(1) }, funcr.Options{})
	sock, _ := startLimitServer(t, &Server{Log: log})
	for range 30 {
		c := rawClient(t, sock, false)
		_, err := c.Write(make([]byte, 28)) // bad request magic
		require.NoError(t, err)
		_, _ = c.Read(make([]byte, 1)) // wait for the server to close it
	}
	require.LessOrEqual(t, lines.Load(), int32(2))
	require.GreaterOrEqual(t, lines.Load(), int32(1))
}

// TestUnreadRepliesBoundMemory: a client that sends large reads and never
// reads the replies holds at most the per-connection budget, and all of
// it is released when the client goes.
func TestUnreadRepliesBoundMemory(t *testing.T) {
	s := &Server{}
	sock, _ := startLimitServer(t, s)
	before := heapInuse()
	c := rawClient(t, sock, true)
	// 256 reads of 8 MiB: 2 GiB of replies if nothing held the reader back.
	go func() {
		for i := range 256 {
			b := make([]byte, 0, 28)
			b = append(b, 0x25, 0x60, 0x95, 0x13, 0, 0, 0, cmdRead)
			b = append(b, 0, 0, 0, 0, 0, 0, 0, byte(i))
			b = append(b, 0, 0, 0, 0, 0, byte(i%8)<<7, 0, 0)
			b = append(b, 0, 0x80, 0, 0)
			if _, err := c.Write(b); err != nil {
				return
			}
		}
	}()
	var peak int64
	for range 20 {
		time.Sleep(50 * time.Millisecond)
		peak = max(peak, s.inFlightBytes())
	}
	grown := int64(heapInuse()) - int64(before)
	t.Logf("in flight %d MiB, heap grew %d MiB", peak>>20, grown>>20)
	require.LessOrEqual(t, peak, int64(DefaultMaxConnBytes))
	require.Less(t, grown, int64(256<<20))
	c.Close()
	require.Eventually(t, func() bool { return s.inFlightBytes() == 0 }, 10*time.Second, 10*time.Millisecond)
	heapInuse() // the second GC empties the buffer pools' victim caches
	t.Logf("after the client left, heap grew %d MiB", (int64(heapInuse())-int64(before))>>20)
}

func heapInuse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}
