package netx

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
)

// A port chosen by listening on port 0 and closing the listener is free
// only until some other process binds it: between the choice and the
// server's own bind, another program starting at the same moment can be
// handed the same port by the kernel. FreePort therefore also reserves
// the port in the directory controller-runtime's envtest uses for the
// etcd, kube-apiserver and webhook ports it chooses
// (USER_CACHE_DIR/kubebuilder-envtest/port-N, an exclusive flock held
// until the process exits; envtest removes files older than two
// minutes), so that no two of Cairn's processes, and no envtest, take the
// same port at once.

// portAttempts bounds the ports FreePort tries before giving up.
const portAttempts = 100

var (
	reservedMu sync.Mutex
	// reserved keeps the locked files open (and so locked) until exit.
	reserved []*os.File
)

// FreePort asks the kernel for a free TCP port on host and reserves it
// for this process, skipping ports another process has reserved.
func FreePort(host string) (int, error) {
	for range portAttempts {
		ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return 0, fmt.Errorf("choose a port on %s: %w", host, err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		ok, err := reservePort(port)
		if err != nil {
			return 0, fmt.Errorf("choose a port on %s: %w", host, err)
		}
		if ok {
			return port, nil
		}
	}
	return 0, fmt.Errorf("choose a port on %s: the kernel offered %d ports that other processes had reserved", host, portAttempts)
}

// reservePort locks DIR/port-N; false when another process (or an earlier
// FreePort of this one) holds it.
func reservePort(port int) (bool, error) {
	dir, err := portDir()
	if err != nil {
		return false, err
	}
	f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("port-%d", port)), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return false, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return false, nil
		}
		return false, err
	}
	reservedMu.Lock()
	reserved = append(reserved, f)
	reservedMu.Unlock()
	return true, nil
}

// portDir is envtest's port reservation directory, created if needed.
func portDir() (string, error) {
	if base, err := os.UserCacheDir(); err == nil {
		dir := filepath.Join(base, "kubebuilder-envtest")
		if err := os.MkdirAll(dir, 0o750); err == nil {
			return dir, nil
		}
	}
	dir := filepath.Join(os.TempDir(), "kubebuilder-envtest")
	return dir, os.MkdirAll(dir, 0o750)
}
