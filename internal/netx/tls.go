package netx

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// TLS between nodes. Data-plane connections over TCP use TLS 1.3 with
// mutual authentication by a key both ends derive from a secret they
// share (a volume's token): HKDF-SHA256(secret, salt "cairn-tls-v1", info
// purpose) seeds an Ed25519 key, which signs a self-signed certificate.
// Each side presents that certificate and accepts only a peer whose
// certificate carries the same public key (pinning; no CA, no names, no
// expiry check). A peer without the secret can neither complete the
// handshake nor read the traffic (ephemeral key exchange). Unix sockets
// never use TLS: they are private to the node (mode 0600).

// ErrPeerKey: the peer's TLS certificate does not carry the key derived
// from the shared secret.
var ErrPeerKey = errors.New("peer certificate does not hold the key derived from this volume's token")

// tlsSalt versions the key derivation.
const tlsSalt = "cairn-tls-v1"

// plaintextTCP turns TLS off for TCP (SetPlaintextTCP).
var plaintextTCP atomic.Bool

// SetPlaintextTCP makes this process's data-plane connections over TCP
// plaintext (true) or TLS (false, the default) from now on. It is the
// --tls=false knob of cairn replica, engine and node, meant for measuring
// what TLS costs; both ends of a connection must agree.
func SetPlaintextTCP(on bool) { plaintextTCP.Store(on) }

// UseTLS reports whether connections to or from addr use TLS in this
// process: TCP unless SetPlaintextTCP(true), never a unix socket.
func UseTLS(addr string) bool { return !IsUnix(addr) && !plaintextTCP.Load() }

// PlaintextTCP reports whether SetPlaintextTCP(true) turned TLS off.
func PlaintextTCP() bool { return plaintextTCP.Load() }

// IsUnixConn reports whether c is a unix-socket connection.
func IsUnixConn(c net.Conn) bool {
	_, unix := c.LocalAddr().(*net.UnixAddr)
	return unix
}

// TLSKey is the TLS identity derived from a shared secret for one
// purpose; both ends of a connection hold the same one.
type TLSKey struct {
	cert tls.Certificate
	pub  ed25519.PublicKey
}

// DeriveTLSKey derives the identity for purpose (for example
// "replica") from secret.
func DeriveTLSKey(secret []byte, purpose string) (*TLSKey, error) {
	if len(secret) == 0 {
		return nil, errors.New("tls key: empty secret")
	}
	seed, err := hkdf.Key(sha256.New, secret, []byte(tlsSalt), "cairn "+purpose, ed25519.SeedSize)
	if err != nil {
		return nil, fmt.Errorf("tls key: %w", err)
	}
	priv := ed25519.NewKeyFromSeed(seed)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "cairn " + purpose},
		NotBefore:    time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:     time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(nil, tmpl, tmpl, priv.Public(), priv)
	if err != nil {
		return nil, fmt.Errorf("tls key: %w", err)
	}
	pub := priv.Public().(ed25519.PublicKey)
	return &TLSKey{cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}, pub: pub}, nil
}

// verifyPeer accepts exactly one certificate holding k's public key.
func (k *TLSKey) verifyPeer(raw [][]byte, _ [][]*x509.Certificate) error {
	if len(raw) != 1 {
		return ErrPeerKey
	}
	cert, err := x509.ParseCertificate(raw[0])
	if err != nil {
		return fmt.Errorf("%w: %v", ErrPeerKey, err)
	}
	pub, ok := cert.PublicKey.(ed25519.PublicKey)
	if !ok || !bytes.Equal(pub, k.pub) {
		return ErrPeerKey
	}
	return nil
}

// ServerConfig is the TLS 1.3 server side: it presents the key and
// requires a client certificate with the same key.
func (k *TLSKey) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		Certificates:           []tls.Certificate{k.cert},
		ClientAuth:             tls.RequireAnyClientCert,
		VerifyPeerCertificate:  k.verifyPeer,
		SessionTicketsDisabled: true,
		// Full-size records from the first byte: the replica protocol
		// moves blocks, not web pages.
		DynamicRecordSizingDisabled: true,
	}
}

// ClientConfig is the TLS 1.3 client side: it presents the key and
// accepts only a server with the same key. Chain and name verification
// are replaced by the pin (InsecureSkipVerify skips only them; the
// handshake signature is still checked against the pinned key).
func (k *TLSKey) ClientConfig() *tls.Config {
	return &tls.Config{
		MinVersion:                  tls.VersionTLS13,
		Certificates:                []tls.Certificate{k.cert},
		InsecureSkipVerify:          true,
		VerifyPeerCertificate:       k.verifyPeer,
		ServerName:                  "cairn",
		DynamicRecordSizingDisabled: true,
	}
}

// TLSClient runs the client handshake on c and returns the encrypted
// connection (see TLSConn).
func TLSClient(ctx context.Context, c net.Conn, cfg *tls.Config) (*TLSConn, error) {
	raw := newCorkConn(c)
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, err
	}
	return &TLSConn{Conn: tc, raw: raw}, nil
}

// TLSServer runs the server handshake on c and returns the encrypted
// connection (see TLSConn).
func TLSServer(ctx context.Context, c net.Conn, cfg *tls.Config) (*TLSConn, error) {
	raw := newCorkConn(c)
	tc := tls.Server(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, err
	}
	return &TLSConn{Conn: tc, raw: raw}, nil
}

// TLSConn is a TLS connection that sends the records of one Write with
// one write system call per 64 KiB (crypto/tls makes one per 16 KiB
// record) and reads the socket through a buffer, so a batch of small
// frames costs the system calls it costs in plaintext.
type TLSConn struct {
	*tls.Conn
	raw *corkConn
}

// Write encrypts b and sends all its records at once.
func (c *TLSConn) Write(b []byte) (int, error) {
	c.raw.cork()
	n, err := c.Conn.Write(b)
	if ferr := c.raw.uncork(); err == nil {
		err = ferr
	}
	return n, err
}

// ExportKey returns n bytes of keying material bound to this TLS session
// under label (RFC 8446 exporter), for channel binding.
func (c *TLSConn) ExportKey(label string, n int) ([]byte, error) {
	cs := c.ConnectionState()
	return cs.ExportKeyingMaterial(label, nil, n)
}

// corkReadBuffer is the socket read buffer under TLS, and corkWriteFlush
// the amount of records a corked socket collects before it writes them
// (a batch of small frames fits; a large payload still streams, so the
// peer decrypts while this side encrypts).
const (
	corkReadBuffer = 64 << 10
	corkWriteFlush = 64 << 10
)

// corkConn is the socket under TLS: while corked, writes collect in a
// buffer and go out together, every corkWriteFlush bytes and on uncork;
// reads are buffered.
type corkConn struct {
	net.Conn
	rbuf []byte
	r, w int // unread bytes are rbuf[r:w]

	mu     sync.Mutex
	corked bool
	out    []byte
}

func newCorkConn(c net.Conn) *corkConn { return &corkConn{Conn: c} }

func (c *corkConn) Read(b []byte) (int, error) {
	if c.r == c.w {
		if len(b) >= corkReadBuffer {
			return c.Conn.Read(b)
		}
		if c.rbuf == nil {
			c.rbuf = make([]byte, corkReadBuffer)
		}
		n, err := c.Conn.Read(c.rbuf)
		if n == 0 {
			return 0, err
		}
		c.r, c.w = 0, n
	}
	n := copy(b, c.rbuf[c.r:c.w])
	c.r += n
	return n, nil
}

func (c *corkConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.corked {
		return c.Conn.Write(b)
	}
	if c.out == nil {
		c.out = make([]byte, 0, corkWriteFlush+32<<10)
	}
	c.out = append(c.out, b...)
	if len(c.out) >= corkWriteFlush {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(b), nil
}

func (c *corkConn) cork() {
	c.mu.Lock()
	c.corked = true
	c.mu.Unlock()
}

// uncork sends what collected while corked.
func (c *corkConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	return c.flushLocked()
}

func (c *corkConn) flushLocked() error {
	if len(c.out) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.out)
	c.out = c.out[:0]
	return err
}
