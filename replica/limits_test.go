package replica

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cairnstore/cairn/internal/testutil"
	"github.com/cairnstore/cairn/replica/wire"
)

// startLimitServer serves r with s on a unix socket; the returned channel
// yields Serve's result.
func startLimitServer(t *testing.T, s *Server) (string, <-chan error) {
	t.Helper()
	addr := "unix:" + filepath.Join(t.TempDir(), "r.sock")
	ln, err := Listen(addr)
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
	return addr, done
}

// TestServeSurvivesEMFILE: accept failing with EMFILE does not end Serve,
// and the server serves an authenticated client once descriptors are free.
func TestServeSurvivesEMFILE(t *testing.T) {
	s, err := NewServer(newTestReplica(t, 1<<20), testToken, nil)
	require.NoError(t, err)
	addr, done := startLimitServer(t, s)

	hog := testutil.ExhaustFDs(t)
	hog.Free(1)
	c, err := net.Dial("unix", strings.TrimPrefix(addr, "unix:"))
	require.NoError(t, err)
	select {
	case err := <-done:
		t.Fatalf("Serve returned while out of descriptors: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	hog.Restore()
	c.Close()

	cl := dialTest(t, addr)
	_, err = cl.WriteAt(context.Background(), []byte("still here"), 0)
	require.NoError(t, err)
	select {
	case err := <-done:
		t.Fatalf("Serve returned: %v", err)
	default:
	}
}

// TestServeCapsUnauthenticated: connections beyond the cap that have not
// authenticated are closed at once; authenticated clients are not counted.
func TestServeCapsUnauthenticated(t *testing.T) {
	s, err := NewServer(newTestReplica(t, 1<<20), testToken, nil)
	require.NoError(t, err)
	s.maxUnauthenticated = 4
	addr, _ := startLimitServer(t, s)
	cl := dialTest(t, addr) // authenticated: does not count
	path := strings.TrimPrefix(addr, "unix:")
	var open, refused int
	for range 10 {
		c, err := net.Dial("unix", path)
		require.NoError(t, err)
		defer c.Close()
		// An accepted connection gets the server hello; a refused one EOF.
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			open++
		} else {
			refused++
		}
	}
	require.Equal(t, 4, open)
	require.Equal(t, 6, refused)
	require.NoError(t, cl.Ping(context.Background()))
}

// TestBadTokenLogsRateLimited: a flood of bad-token connections logs a few
// lines, not one per connection.
func TestBadTokenLogsRateLimited(t *testing.T) {
	var buf syncBuffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	s, err := NewServer(newTestReplica(t, 1<<20), testToken, log)
	require.NoError(t, err)
	addr, _ := startLimitServer(t, s)
	for range 50 {
		_, err := Dial(context.Background(), addr, "wrong")
		require.ErrorIs(t, err, ErrAuth)
	}
	lines := strings.Count(buf.String(), "\n")
	require.LessOrEqual(t, lines, 2, buf.String())
	require.GreaterOrEqual(t, lines, 1)
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestSocketModeIgnoresUmask: the socket is 0600 even with umask 000.
func TestSocketModeIgnoresUmask(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	path := filepath.Join(t.TempDir(), "r.sock")
	ln, err := Listen("unix:" + path)
	require.NoError(t, err)
	defer ln.Close()
	st, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm())
}

// TestUnreadRepliesBoundMemory: a client that sends large reads and never
// reads the replies holds at most the per-connection budget, and all of
// it is released when the client goes.
func TestUnreadRepliesBoundMemory(t *testing.T) {
	s, err := NewServer(newTestReplica(t, 64<<20), testToken, nil)
	require.NoError(t, err)
	addr, _ := startLimitServer(t, s)
	before := heapInuse()
	c, err := wire.Dial(context.Background(), addr, testToken)
	require.NoError(t, err)
	// 256 reads of 4 MiB: 1 GiB of replies if nothing held the reader back.
	go func() {
		hdr := make([]byte, wire.ReqHeaderSize)
		for i := range 256 {
			h := wire.ReqHeader{Op: wire.OpRead, ID: uint64(i), Offset: uint64(i%16) * MaxIO, Length: MaxIO}
			h.Encode(hdr)
			if _, err := c.Write(hdr); err != nil {
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
	require.LessOrEqual(t, peak, int64(maxConnBytes))
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
