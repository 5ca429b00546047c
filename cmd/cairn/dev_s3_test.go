package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cairnstore/cairn/internal/netx"
	"github.com/cairnstore/cairn/internal/testutil"
)

// TestVersitygwPortTaken: the S3 port an earlier run kept (or just chose)
// is held by another process when dev starts. versitygw moves to a fresh
// port, the credentials file keeps it, and the S3 server answers there
// with the same keys; the other process's listener is left alone.
func TestVersitygwPortTaken(t *testing.T) {
	bin := testutil.RequireTool(t, "versitygw")
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "data"), 0o700))
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer taken.Close()
	port := taken.Addr().(*net.TCPAddr).Port
	creds := filepath.Join(dir, "credentials")
	require.NoError(t, os.WriteFile(creds, []byte(fmt.Sprintf("ACCESS=ak\nSECRET=sk-secret-key\nPORT=%d\n", port)), 0o600))

	s, stop, err := startVersitygw(bin, dir)
	require.NoError(t, err)
	defer stop()
	require.NotEqual(t, fmt.Sprintf("http://127.0.0.1:%d", port), s.endpoint)
	require.Equal(t, "ak", s.access)
	require.True(t, netx.Listening(t.Context(), s.endpoint[len("http://"):], 0), "versitygw listens on %s", s.endpoint)
	require.NoError(t, createBucket(context.Background(), s), "the server on the new port takes the kept keys")

	again, _, err := loadDevS3(creds)
	require.NoError(t, err)
	require.Equal(t, s.endpoint, again.endpoint, "the next run starts on the new port")
	require.Equal(t, s.secret, again.secret)
}
