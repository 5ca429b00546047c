package control

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/go-logr/logr/testr"
	"github.com/stretchr/testify/require"

	"github.com/cairnstore/cairn/engine"
	"github.com/cairnstore/cairn/replica"
)

const testToken = "test-token"

// sockDir returns a short directory for unix sockets (paths are limited to
// 108 bytes), removed at cleanup.
func sockDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "cairn-c")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// openTestVolume serves one replica of size bytes in the test process and
// opens a volume on it.
func openTestVolume(t *testing.T, size int64) *engine.Volume {
	t.Helper()
	r, err := replica.OpenOrCreate(filepath.Join(t.TempDir(), "r0"), size)
	require.NoError(t, err)
	addr := "unix:" + filepath.Join(sockDir(t), "r0.sock")
	ln, err := replica.Listen(addr)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = replica.Serve(ctx, ln, r, testToken)
	}()
	t.Cleanup(func() { cancel(); <-done; r.Close() })
	v, err := engine.Open(context.Background(), engine.Config{
		Name: "vol1", Size: size, Replicas: []string{addr}, Dial: engine.ReplicaDialer(testToken), Log: testr.New(t),
	})
	require.NoError(t, err)
	t.Cleanup(func() { v.Close() })
	return v
}
