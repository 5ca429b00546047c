package engine

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/stretchr/testify/require"

	"github.com/cairnstore/cairn/internal/netx"
	"github.com/cairnstore/cairn/replica"
)

const testToken = "test-token"

// testReplica is a replica server running in the test process on a unix
// socket; stop and start simulate an outage (the directory survives).
type testReplica struct {
	t    *testing.T
	dir  string
	addr string
	size int64

	mu     sync.Mutex
	r      *replica.Replica
	cancel context.CancelFunc
	done   chan struct{}
}

// sockDir returns a short directory for unix sockets (paths are limited to
// 108 bytes), removed at cleanup.
func sockDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "cairn-e")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func newTestReplicas(t *testing.T, n int, size int64) []*testReplica {
	t.Helper()
	sd := sockDir(t)
	var out []*testReplica
	for i := 0; i < n; i++ {
		tr := &testReplica{
			t:    t,
			dir:  filepath.Join(t.TempDir(), fmt.Sprintf("r%d", i)),
			addr: "unix:" + filepath.Join(sd, fmt.Sprintf("r%d.sock", i)),
			size: size,
		}
		tr.start()
		t.Cleanup(tr.stop)
		out = append(out, tr)
	}
	return out
}

func (tr *testReplica) start() {
	tr.t.Helper()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	r, err := replica.OpenOrCreate(tr.dir, tr.size)
	require.NoError(tr.t, err)
	ln, err := replica.Listen(tr.addr)
	require.NoError(tr.t, err)
	ctx, cancel := context.WithCancel(context.Background())
	tr.r, tr.cancel, tr.done = r, cancel, make(chan struct{})
	go func() {
		defer close(tr.done)
		_ = replica.Serve(ctx, ln, r, testToken)
	}()
}

func (tr *testReplica) stop() {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.cancel == nil {
		return
	}
	tr.cancel()
	<-tr.done
	tr.r.Close()
	tr.cancel = nil
}

// generation reads the durable generation from the replica's files.
func (tr *testReplica) generation() uint64 {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.cancel != nil {
		return tr.r.Generation()
	}
	r, err := replica.Open(tr.dir)
	require.NoError(tr.t, err)
	defer r.Close()
	return r.Generation()
}

// contents reads the whole volume as this replica holds it.
func (tr *testReplica) contents() []byte {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	buf := make([]byte, tr.size)
	r := tr.r
	if tr.cancel == nil {
		var err error
		r, err = replica.Open(tr.dir)
		require.NoError(tr.t, err)
		defer r.Close()
	}
	_, err := r.ReadAt(buf, 0)
	require.NoError(tr.t, err)
	return buf
}

// stallProxy forwards a unix socket to a replica until stall is called;
// from then on it holds every byte (a replica host that stopped
// answering), until the test ends. setDelay makes it a slow link: each
// chunk read from either side is held that long before it is passed on.
type stallProxy struct {
	addr  string
	mu    sync.Mutex
	open  chan struct{} // closed while forwarding
	delay time.Duration
}

func newStallProxy(t *testing.T, target string) *stallProxy {
	t.Helper()
	p := &stallProxy{addr: "unix:" + filepath.Join(sockDir(t), "proxy.sock"), open: make(chan struct{})}
	close(p.open)
	ln, err := netx.Listen(p.addr)
	require.NoError(t, err)
	var conns []net.Conn
	var cmu sync.Mutex
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		select {
		case <-p.open:
		default:
			close(p.open)
		}
		p.mu.Unlock()
		cmu.Lock()
		for _, c := range conns {
			c.Close()
		}
		cmu.Unlock()
	})
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := netx.Dial(context.Background(), target)
			if err != nil {
				in.Close()
				continue
			}
			cmu.Lock()
			conns = append(conns, in, out)
			cmu.Unlock()
			go p.pipe(in, out)
			go p.pipe(out, in)
		}
	}()
	return p
}

func (p *stallProxy) stall() {
	p.mu.Lock()
	p.open = make(chan struct{})
	p.mu.Unlock()
}

func (p *stallProxy) setDelay(d time.Duration) {
	p.mu.Lock()
	p.delay = d
	p.mu.Unlock()
}

func (p *stallProxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			dst.Close()
			return
		}
		p.mu.Lock()
		open, delay := p.open, p.delay
		p.mu.Unlock()
		<-open
		time.Sleep(delay) // the slow link, not a wait for anything
		if _, err := dst.Write(buf[:n]); err != nil {
			src.Close()
			return
		}
	}
}

func addrs(rs []*testReplica) []string {
	var a []string
	for _, r := range rs {
		a = append(a, r.addr)
	}
	return a
}

func openTestVolume(t *testing.T, size int64, rs []*testReplica, mod ...func(*Config)) *Volume {
	t.Helper()
	cfg := Config{
		Name: "vol1", Size: size, Replicas: addrs(rs), Dial: ReplicaDialer(testToken),
		IOTimeout: 5 * time.Second, Log: testr.New(t),
	}
	for _, f := range mod {
		f(&cfg)
	}
	v, err := Open(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { v.Close() })
	return v
}

// model is the expected volume content.
type model struct {
	mu   sync.Mutex
	data []byte
}

func (m *model) write(p []byte, off int64) {
	m.mu.Lock()
	copy(m.data[off:], p)
	m.mu.Unlock()
}

func requireSame(t *testing.T, want, got []byte, what string) {
	t.Helper()
	if bytes.Equal(want, got) {
		return
	}
	for i := range want {
		if want[i] != got[i] {
			t.Fatalf("%s: first difference at byte %d (block %d): want %#x got %#x", what, i, i/4096, want[i], got[i])
		}
	}
}

func randBytes(r *rand.Rand, n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	return p
}
