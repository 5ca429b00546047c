package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cairnstore/cairn/internal/netx"
	"github.com/cairnstore/cairn/replica"
)

// runMainEnv makes the test binary act as the cairn binary (TestMain), so
// process-level tests run the real command without building it.
const runMainEnv = "CAIRN_TEST_RUN_MAIN"

// testVolumeToken is a token as the node agent makes them: 32 random bytes, hex.
const testVolumeToken = "5f1c0b8e6a4d3f2e1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

type replicaProc struct {
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	done   chan error
}

func startReplica(t *testing.T, args ...string) *replicaProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"replica"}, args...)...)
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	p := &replicaProc{cmd: cmd, stderr: &bytes.Buffer{}, done: make(chan error, 1)}
	cmd.Stderr = p.stderr
	require.NoError(t, cmd.Start())
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// wait returns the exit error (nil for status 0) or fails after timeout.
func (p *replicaProc) wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case err := <-p.done:
		return err
	case <-time.After(timeout):
		t.Fatalf("cairn replica did not exit within %s; stderr:\n%s", timeout, p.stderr)
		return nil
	}
}

// dialWhenUp dials until the server listens (or the process exits).
func dialWhenUp(t *testing.T, p *replicaProc, addr, token string) *replica.Client {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := replica.Dial(context.Background(), addr, token)
		if err == nil {
			return c
		}
		select {
		case werr := <-p.done:
			p.done <- werr
			t.Fatalf("cairn replica exited (%v) before serving; stderr:\n%s", werr, p.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("cairn replica not serving on %s: %v; stderr:\n%s", addr, err, p.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestReplicaCommand runs `cairn replica` as the node does: it creates the
// replica, serves I/O to the right token only, stops cleanly on SIGTERM,
// keeps the data across restarts, and grows (never shrinks) to a larger
// --size, as the node agent restarts it after a volume grew.
func TestReplicaCommand(t *testing.T) {
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "data")
	tokenFile := filepath.Join(tmp, "token")
	require.NoError(t, os.WriteFile(tokenFile, []byte(testVolumeToken+"\n"), 0o600))
	addr := "unix:" + filepath.Join(tmp, "r.sock")
	args := []string{"--dir", dir, "--size", "4Mi", "--listen", addr, "--token-file", tokenFile}
	ctx := context.Background()

	p := startReplica(t, args...)
	c := dialWhenUp(t, p, addr, testVolumeToken)
	in, err := c.Info(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 4<<20, in.Size)
	data := bytes.Repeat([]byte("cairn!"), 1000)
	_, err = c.WriteAt(ctx, data, 12345)
	require.NoError(t, err)
	require.NoError(t, c.Flush(ctx))
	got := make([]byte, len(data))
	_, err = c.ReadAt(ctx, got, 12345)
	require.NoError(t, err)
	require.Equal(t, data, got)
	// the wrong token is refused; the server keeps serving the right one
	_, err = replica.Dial(ctx, addr, "wrong-token")
	require.ErrorIs(t, err, replica.ErrAuth)
	require.NoError(t, c.Ping(ctx))

	// SIGTERM: clean exit, the client sees the connection go away
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, p.wait(t, 30*time.Second), "stderr:\n%s", p.stderr)
	require.Contains(t, p.stderr.String(), "Replica stopped")
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("client still connected after the server stopped")
	}
	c.Close()

	// a larger size grows the replica, keeping the data
	grown := startReplica(t, "--dir", dir, "--size", "8Mi", "--listen", addr, "--token-file", tokenFile)
	c = dialWhenUp(t, grown, addr, testVolumeToken)
	in, err = c.Info(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 8<<20, in.Size)
	clear(got)
	_, err = c.ReadAt(ctx, got, 12345)
	require.NoError(t, err)
	require.Equal(t, data, got)
	c.Close()
	require.NoError(t, grown.cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, grown.wait(t, 30*time.Second), "stderr:\n%s", grown.stderr)

	// missing flags, an empty, weak or world-readable token file are refused too
	weak := filepath.Join(tmp, "weak")
	require.NoError(t, os.WriteFile(weak, []byte("s3cret\n"), 0o600))
	open := filepath.Join(tmp, "open")
	require.NoError(t, os.WriteFile(open, []byte(testVolumeToken), 0o600))
	require.NoError(t, os.Chmod(open, 0o644))
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--dir", dir, "--size", "4Mi", "--listen", addr}, "required"},
		{[]string{"--dir", dir, "--size", "4Mi", "--listen", addr, "--token-file", os.DevNull}, "not a regular file"},
		{[]string{"--dir", dir, "--size", "4Xi", "--listen", addr, "--token-file", tokenFile}, "4Xi"},
		{[]string{"--dir", dir, "--size", "4Mi", "--listen", addr, "--token-file", weak}, "token too short"},
		{[]string{"--dir", dir, "--size", "4Mi", "--listen", addr, "--token-file", open}, "chmod 600"},
	} {
		bp := startReplica(t, tc.args...)
		require.Error(t, bp.wait(t, 30*time.Second), "args %v", tc.args)
		stderr := bp.stderr.String()
		require.True(t, strings.HasPrefix(stderr, "cairn: "), "stderr: %s", stderr)
		require.Contains(t, stderr, tc.msg)
		require.NotContains(t, stderr, "s3cret")
		require.NotContains(t, stderr, testVolumeToken)
	}

	// restart with the old size: no shrink, the flushed data is there
	p = startReplica(t, args...)
	c = dialWhenUp(t, p, addr, testVolumeToken)
	in, err = c.Info(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 8<<20, in.Size)
	clear(got)
	_, err = c.ReadAt(ctx, got, 12345)
	require.NoError(t, err)
	require.Equal(t, data, got)
	c.Close()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, p.wait(t, 30*time.Second), "stderr:\n%s", p.stderr)
}

// TestReplicaTLSFlag: `cairn replica` on TCP serves TLS by default, and
// --tls=false serves plaintext, which a client with TLS on refuses.
func TestReplicaTLSFlag(t *testing.T) {
	tmp := t.TempDir()
	tokenFile := filepath.Join(tmp, "token")
	require.NoError(t, os.WriteFile(tokenFile, []byte(testVolumeToken+"\n"), 0o600))
	ctx := context.Background()
	for _, tc := range []struct {
		flags []string
		err   string
	}{
		{nil, ""},
		{[]string{"--tls=false"}, "serves plaintext TCP"},
	} {
		port, err := netx.FreePort("127.0.0.1")
		require.NoError(t, err)
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		p := startReplica(t, append([]string{"--dir", filepath.Join(tmp, fmt.Sprint(port)), "--size", "4Mi",
			"--listen", addr, "--token-file", tokenFile}, tc.flags...)...)
		if tc.err == "" {
			c := dialWhenUp(t, p, addr, testVolumeToken)
			require.NoError(t, c.Ping(ctx))
			require.NoError(t, c.Close())
			continue
		}
		require.Eventually(t, func() bool { return netx.Listening(ctx, addr, time.Second) }, 30*time.Second, 50*time.Millisecond,
			"stderr:\n%s", p.stderr)
		_, err = replica.Dial(ctx, addr, testVolumeToken)
		require.ErrorIs(t, err, replica.ErrAuth)
		require.ErrorContains(t, err, tc.err)
	}
}
