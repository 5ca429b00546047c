// Package netx holds the network plumbing shared by Cairn's data-plane
// servers (the replica server, the engine's NBD server and its control
// endpoint): opening listeners with private unix sockets, an accept loop
// that survives descriptor exhaustion and caps connections that have not
// authenticated, TLS 1.3 with keys derived from a shared secret for
// connections between nodes (tls.go), a byte budget for in-flight
// requests and a rate limiter for connection logs.
package netx

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Listen opens addr: "unix:/path" for a unix socket, anything else is a
// TCP host:port. A unix socket is created with mode 0600 whatever the
// umask, and a stale socket file at path is replaced.
func Listen(addr string) (net.Listener, error) {
	if network, path := SplitAddr(addr); network == "unix" {
		return listenUnix(path)
	}
	return net.Listen("tcp", addr)
}

// SplitAddr returns the network and address of a Cairn address:
// ("unix", PATH) for "unix:PATH", ("tcp", addr) for anything else.
func SplitAddr(addr string) (network, address string) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		return "unix", path
	}
	return "tcp", addr
}

// IsUnix reports whether addr names a unix socket ("unix:PATH").
func IsUnix(addr string) bool { return strings.HasPrefix(addr, "unix:") }

// Dial connects to addr ("unix:PATH" or host:port), the counterpart of
// Listen. The connection reads and writes with raw system calls (RawIO).
func Dial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	network, address := SplitAddr(addr)
	c, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	return RawIO(c), nil
}

// maxSocketPath is the longest socket path bind accepts (sun_path).
const maxSocketPath = 107

// listenUnix binds the socket inside a fresh 0700 directory next to path,
// makes it 0600 and renames it into place: no other user can connect
// before the socket has its final mode.
func listenUnix(path string) (net.Listener, error) {
	dir, err := os.MkdirTemp(filepath.Dir(path), ".s")
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	ln, err := bindIn(dir, tmp)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	st, err := os.Lstat(tmp)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	if err := placeSocket(tmp, path); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	return &unixListener{UnixListener: ln, addr: &net.UnixAddr{Name: path, Net: "unix"}, file: st}, nil
}

// bindIn binds a unix socket at tmp, a path in dir. When tmp is too long
// for bind (the temporary directory lengthens the path) it binds through
// the /proc/self/fd link of dir.
func bindIn(dir, tmp string) (*net.UnixListener, error) {
	if len(tmp) <= maxSocketPath {
		return net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	}
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	name := fmt.Sprintf("/proc/self/fd/%d/s", d.Fd())
	return net.ListenUnix("unix", &net.UnixAddr{Name: name, Net: "unix"})
}

// placeSocket makes the socket at tmp 0600 and moves it to path,
// replacing a stale socket but no other kind of file.
func placeSocket(tmp, path string) error {
	if err := os.Chmod(tmp, 0o600); err != nil {
		return err
	}
	if st, err := os.Lstat(path); err == nil && st.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	return os.Rename(tmp, path)
}

// unixListener reports the final socket path and removes it on Close,
// unless another listener has since put its own socket there.
type unixListener struct {
	*net.UnixListener
	addr *net.UnixAddr
	file os.FileInfo // the socket file as bound
}

func (l *unixListener) Addr() net.Addr { return l.addr }

func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	if err == nil {
		if st, serr := os.Lstat(l.addr.Name); serr == nil && os.SameFile(st, l.file) {
			os.Remove(l.addr.Name)
		}
	}
	return err
}

// Listening reports whether something listens at the TCP address addr: a
// connection succeeds within timeout and is not a self-connection (on
// Linux, dialing a local port nobody listens on in the ephemeral range can
// connect the socket to itself when the kernel picks that port as source).
func Listening(ctx context.Context, addr string, timeout time.Duration) bool {
	d := net.Dialer{Timeout: timeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	defer c.Close()
	return c.LocalAddr().String() != c.RemoteAddr().String()
}
