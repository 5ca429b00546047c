package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	"github.com/stretchr/testify/require"

	"github.com/cairnstore/cairn/engine"
	"github.com/cairnstore/cairn/engine/control"
	"github.com/cairnstore/cairn/internal/netx"
	"github.com/cairnstore/cairn/internal/testutil"
	"github.com/cairnstore/cairn/replica"
)

const testToken = "daemon-test-token-0123456789abcdef0123456789abcdef"

// TestMain lets the test binary act as a replica or engine process, so that
// tests can SIGKILL exactly one of them.
func TestMain(m *testing.M) {
	// Helpers started with CAIRN_TEST_PLAINTEXT_TCP=1 have TLS off (--tls=false).
	if os.Getenv("CAIRN_TEST_PLAINTEXT_TCP") == "1" {
		netx.SetPlaintextTCP(true)
	}
	switch os.Getenv("CAIRN_TEST_HELPER") {
	case "replica":
		os.Exit(replicaHelper())
	case "engine":
		os.Exit(engineHelper())
	}
	os.Exit(m.Run())
}

func replicaHelper() int {
	size, _ := strconv.ParseInt(os.Getenv("CAIRN_SIZE"), 10, 64)
	r, err := replica.OpenOrCreate(os.Getenv("CAIRN_DIR"), size)
	if err != nil {
		fmt.Fprintln(os.Stderr, "replica:", err)
		return 1
	}
	defer r.Close()
	ln, err := replica.Listen(os.Getenv("CAIRN_ADDR"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "replica:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := replica.Serve(ctx, ln, r, testToken); err != nil {
		fmt.Fprintln(os.Stderr, "replica:", err)
		return 1
	}
	return 0
}

func engineHelper() int {
	var o Options
	if err := json.Unmarshal([]byte(os.Getenv("CAIRN_ENGINE_OPTS")), &o); err != nil {
		fmt.Fprintln(os.Stderr, "engine:", err)
		return 1
	}
	o.Log = funcr.New(func(prefix, args string) { fmt.Fprintln(os.Stderr, prefix, args) }, funcr.Options{})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := Run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "engine:", err)
		return 1
	}
	return 0
}

// proc is a helper process.
type proc struct {
	t   *testing.T
	cmd *exec.Cmd
	out *syncBuffer
	env []string
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startProc(t *testing.T, env ...string) *proc {
	t.Helper()
	p := &proc{t: t, env: env}
	p.start()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("helper %v output:\n%s", env[0], p.out.String())
		}
	})
	return p
}

func (p *proc) start() {
	p.t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), p.env...)
	// A helper goes with the test binary, even one that is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if p.out == nil {
		p.out = &syncBuffer{}
	}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	require.NoError(p.t, cmd.Start())
	p.cmd = cmd
}

// kill sends SIGKILL and reaps the process.
func (p *proc) kill() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	_ = p.cmd.Wait()
	p.cmd = nil
}

// procReplica is a replica in its own process.
type procReplica struct {
	*proc
	dir, addr string
}

// startReplicas starts n replica processes on unix sockets.
func startReplicas(t *testing.T, n int, size int64) []*procReplica {
	return startReplicasOn(t, n, size, false)
}

// startReplicasOn starts n replica processes listening on unix sockets or,
// with tcp, on loopback TCP (the transport replicas use between nodes:
// TLS, unless env has CAIRN_TEST_PLAINTEXT_TCP=1); env is added to theirs.
func startReplicasOn(t *testing.T, n int, size int64, tcp bool, env ...string) []*procReplica {
	t.Helper()
	sd := sockDir(t)
	var addrs []string
	for i := 0; i < n; i++ {
		addr := "unix:" + filepath.Join(sd, fmt.Sprintf("r%d.sock", i))
		if tcp {
			addr = testutil.FreeLoopbackAddr(t)
		}
		addrs = append(addrs, addr)
	}
	return startReplicasAt(t, size, addrs, env...)
}

// startReplicasAt starts a replica process on each address, with env
// added to theirs, and waits until they serve.
func startReplicasAt(t *testing.T, size int64, addrs []string, env ...string) []*procReplica {
	t.Helper()
	var out []*procReplica
	for i, addr := range addrs {
		dir := filepath.Join(t.TempDir(), fmt.Sprintf("r%d", i))
		p := startProc(t, append([]string{"CAIRN_TEST_HELPER=replica", "CAIRN_DIR=" + dir, "CAIRN_ADDR=" + addr,
			"CAIRN_SIZE=" + strconv.FormatInt(size, 10)}, env...)...)
		out = append(out, &procReplica{proc: p, dir: dir, addr: addr})
	}
	for _, r := range out {
		r.waitReady()
	}
	return out
}

func (r *procReplica) waitReady() {
	r.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := replica.Dial(ctx, r.addr, testToken)
		cancel()
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("replica %s not ready: %v\n%s", r.addr, err, r.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// dial connects a client straight to the replica (bypassing the engine).
func (r *procReplica) dial() *replica.Client {
	r.t.Helper()
	c, err := replica.Dial(context.Background(), r.addr, testToken)
	require.NoError(r.t, err)
	r.t.Cleanup(func() { c.Close() })
	return c
}

func sockDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "cairn-d")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func tokenFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(p, []byte(testToken+"\n"), 0o600))
	return p
}

func replicaAddrs(rs []*procReplica) []string {
	var a []string
	for _, r := range rs {
		a = append(a, r.addr)
	}
	return a
}

// engineProc is an engine in its own process with NBD and control sockets.
type engineProc struct {
	*proc
	nbdSock string
	ctlSock string
	ctl     *control.Client
}

// startEngine starts an engine process with o, env added to its
// environment.
func startEngine(t *testing.T, o Options, env ...string) *engineProc {
	t.Helper()
	b, err := json.Marshal(o)
	require.NoError(t, err)
	p := startProc(t, append([]string{"CAIRN_TEST_HELPER=engine", "CAIRN_ENGINE_OPTS=" + string(b)}, env...)...)
	e := &engineProc{proc: p, ctl: control.NewClient(o.Control, testToken)}
	e.nbdSock, _ = strings.CutPrefix(o.Listen, "unix:")
	e.ctlSock, _ = strings.CutPrefix(o.Control, "unix:")
	e.waitReady()
	return e
}

func (e *engineProc) waitReady() {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := e.ctl.Status(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("engine not ready: %v\n%s", err, e.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *engineProc) restart() {
	e.start()
	e.waitReady()
}

func (e *engineProc) status() engine.Status {
	e.t.Helper()
	st, err := e.ctl.Status(context.Background())
	require.NoError(e.t, err)
	return st
}

// waitStatus polls the status until cond holds.
func (e *engineProc) waitStatus(what string, timeout time.Duration, cond func(engine.Status) bool) engine.Status {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := e.status()
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s; status %+v\n%s", what, st, e.out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
