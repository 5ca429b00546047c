package netx

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// lockedElsewhere reports whether port's reservation file is locked, by
// trying to lock it through a new open file description as another
// process (or envtest's flock.Acquire) would.
func lockedElsewhere(t *testing.T, port int) bool {
	dir, err := portDir()
	require.NoError(t, err)
	f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("port-%d", port)), os.O_CREATE|os.O_RDWR, 0o600)
	require.NoError(t, err)
	defer f.Close()
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if err == nil {
		require.NoError(t, syscall.Flock(int(f.Fd()), syscall.LOCK_UN))
		return false
	}
	require.True(t, errors.Is(err, syscall.EWOULDBLOCK), "flock: %v", err)
	return true
}

// TestFreePortReserves: a port FreePort returns is free and reserved where
// envtest and every other Cairn process look, so none of them is handed it
// before the caller's server binds it.
func TestFreePortReserves(t *testing.T) {
	seen := map[int]bool{}
	for range 5 {
		port, err := FreePort("127.0.0.1")
		require.NoError(t, err)
		require.False(t, seen[port], "port %d handed out twice", port)
		seen[port] = true
		require.True(t, lockedElsewhere(t, port), "port %d not reserved", port)
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		require.NoError(t, err, "the port is free to bind")
		ln.Close()
	}
}

// TestReservePortSkipsTaken: a port another process reserved is refused.
func TestReservePortSkipsTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	dir, err := portDir()
	require.NoError(t, err)
	other, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("port-%d", port)), os.O_CREATE|os.O_RDWR, 0o600)
	require.NoError(t, err)
	defer other.Close()
	require.NoError(t, syscall.Flock(int(other.Fd()), syscall.LOCK_EX|syscall.LOCK_NB))
	ok, err := reservePort(port)
	require.NoError(t, err)
	require.False(t, ok, "port %d reserved by another holder was handed out", port)
}
