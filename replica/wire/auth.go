package wire

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/cairnstore/cairn/internal/netx"
)

// Transports announced in the preamble (see doc.go).
const (
	TransportPlain uint32 = 0
	TransportTLS   uint32 = 1
)

// PreambleSize is the size of the server's plaintext preamble.
const PreambleSize = 16

// exporterLabel names the TLS exporter value the token proofs cover.
const exporterLabel = "EXPORTER-cairn-replica-token"

// Credentials are what both ends of a connection share: the volume's
// token and the TLS key derived from it.
type Credentials struct {
	token []byte
	key   *netx.TLSKey
}

// NewCredentials derives the TLS key of token (see doc.go).
func NewCredentials(token string) (*Credentials, error) {
	if token == "" {
		return nil, fmt.Errorf("%w: empty token", ErrInvalid)
	}
	key, err := netx.DeriveTLSKey([]byte(token), "replica")
	if err != nil {
		return nil, err
	}
	return &Credentials{token: []byte(token), key: key}, nil
}

// Dial connects to the replica server at addr ("host:port" or
// "unix:/path") and authenticates with token, returning the connection
// ready for request frames. Over TCP the connection uses TLS unless this
// process turned it off (netx.SetPlaintextTCP).
func Dial(ctx context.Context, addr, token string) (net.Conn, error) {
	cred, err := NewCredentials(token)
	if err != nil {
		return nil, err
	}
	conn, err := netx.Dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	authed, err := ClientHandshake(ctx, conn, cred, netx.UseTLS(addr))
	if err != nil {
		conn.Close()
		return nil, err
	}
	return authed, nil
}

func authMAC(token []byte, side string, sNonce, cNonce, binding []byte) []byte {
	m := hmac.New(sha256.New, token)
	m.Write([]byte("cairn-replica-" + side))
	m.Write(sNonce)
	m.Write(cNonce)
	m.Write(binding)
	return m.Sum(nil)
}

// handshakeDeadline is the end of a handshake started now under ctx.
func handshakeDeadline(ctx context.Context) time.Time {
	deadline := time.Now().Add(HandshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	return deadline
}

// ClientHandshake reads the server's preamble, starts TLS when useTLS
// (refusing a server that announces the other transport), answers the
// token challenge and checks the server's proof (see doc.go). It returns
// the connection to send frames on.
func ClientHandshake(ctx context.Context, conn net.Conn, cred *Credentials, useTLS bool) (net.Conn, error) {
	deadline := handshakeDeadline(ctx)
	conn.SetDeadline(deadline)
	defer conn.SetDeadline(time.Time{})
	peer := conn.RemoteAddr().String()
	pre := make([]byte, PreambleSize)
	if _, err := io.ReadFull(conn, pre); err != nil {
		return nil, fmt.Errorf("replica handshake: %w", err)
	}
	if string(pre[:8]) != Magic || binary.LittleEndian.Uint32(pre[8:]) != Version {
		return nil, fmt.Errorf("%w: peer is not a cairn replica (protocol %d)", ErrProtocol, Version)
	}
	switch tr := binary.LittleEndian.Uint32(pre[12:]); {
	case useTLS && tr != TransportTLS:
		return nil, fmt.Errorf("%w: replica at %s serves plaintext TCP (started with --tls=false?); refusing to send data unencrypted", ErrAuth, peer)
	case !useTLS && tr != TransportPlain:
		return nil, fmt.Errorf("%w: replica at %s requires TLS and this process has TLS off (--tls=false)", ErrAuth, peer)
	}
	var binding []byte
	if useTLS {
		hctx, cancel := context.WithDeadline(ctx, deadline)
		tc, err := netx.TLSClient(hctx, conn, cred.key.ClientConfig())
		cancel()
		if err != nil {
			return nil, tlsError("replica at "+peer, err)
		}
		if binding, err = tc.ExportKey(exporterLabel, 32); err != nil {
			return nil, fmt.Errorf("replica handshake: %w", err)
		}
		conn = tc
	}
	if err := clientChallenge(conn, cred.token, binding); err != nil {
		return nil, err
	}
	return conn, nil
}

// clientChallenge answers the server's nonce and checks its proof.
func clientChallenge(conn net.Conn, token, binding []byte) error {
	sNonce := make([]byte, NonceSize)
	if _, err := io.ReadFull(conn, sNonce); err != nil {
		var alert tls.AlertError
		if errors.As(err, &alert) {
			return tlsError("replica at "+conn.RemoteAddr().String(), err)
		}
		return fmt.Errorf("replica handshake: %w", err)
	}
	msg := make([]byte, 12+NonceSize+MACSize)
	copy(msg, Magic)
	binary.LittleEndian.PutUint32(msg[8:], Version)
	cNonce := msg[12 : 12+NonceSize]
	rand.Read(cNonce)
	copy(msg[12+NonceSize:], authMAC(token, "client", sNonce, cNonce, binding))
	if _, err := conn.Write(msg); err != nil {
		return fmt.Errorf("replica handshake: %w", err)
	}
	reply := make([]byte, 1+MACSize)
	if _, err := io.ReadFull(conn, reply); err != nil {
		return fmt.Errorf("%w: server closed the connection during authentication: %v", ErrAuth, err)
	}
	if reply[0] != 0 {
		return fmt.Errorf("%w: server refused the token", ErrAuth)
	}
	if !hmac.Equal(reply[1:], authMAC(token, "server", sNonce, cNonce, binding)) {
		return fmt.Errorf("%w: server does not know the token", ErrAuth)
	}
	return nil
}

// tlsError wraps a failed TLS handshake with peer: a peer with another
// key, a TLS alert from the peer or a peer that does not speak TLS is
// ErrAuth.
func tlsError(peer string, err error) error {
	var alert tls.AlertError
	var rec tls.RecordHeaderError
	switch {
	case errors.Is(err, netx.ErrPeerKey):
		return fmt.Errorf("%w: TLS with %s: %w (wrong token?)", ErrAuth, peer, err)
	case errors.As(err, &alert):
		return fmt.Errorf("%w: TLS with %s refused by the peer (%v): it does not hold this volume's key (wrong token?)", ErrAuth, peer, err)
	case errors.As(err, &rec):
		return fmt.Errorf("%w: %s does not speak TLS", ErrAuth, peer)
	}
	return fmt.Errorf("replica handshake: TLS with %s: %w", peer, err)
}

// ServerHandshake sends the preamble, runs TLS when useTLS and then the
// challenge: the server sends a nonce, the client answers with its own
// nonce and an HMAC-SHA256 over both (and the TLS session's exporter
// value) keyed by the token, and the server proves knowledge of the token
// in return. The token itself never crosses the wire. authed is called
// once the client has proven the token, before the client learns it is
// in. It returns the connection to read frames from; refusals wrap
// ErrAuth and say why.
func ServerHandshake(c net.Conn, cred *Credentials, useTLS bool, authed func()) (net.Conn, error) {
	deadline := time.Now().Add(HandshakeTimeout)
	c.SetDeadline(deadline)
	defer c.SetDeadline(time.Time{})
	pre := make([]byte, PreambleSize, PreambleSize+NonceSize)
	copy(pre, Magic)
	binary.LittleEndian.PutUint32(pre[8:], Version)
	var binding []byte
	if useTLS {
		binary.LittleEndian.PutUint32(pre[12:], TransportTLS)
		if _, err := c.Write(pre); err != nil {
			return nil, err
		}
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		tc, err := netx.TLSServer(ctx, c, cred.key.ServerConfig())
		cancel()
		if err != nil {
			return nil, tlsError("client "+c.RemoteAddr().String(), err)
		}
		if binding, err = tc.ExportKey(exporterLabel, 32); err != nil {
			return nil, err
		}
		c, pre = tc, pre[:0]
	}
	sNonce := make([]byte, NonceSize)
	rand.Read(sNonce)
	// Plaintext: preamble and nonce in one write.
	if _, err := c.Write(append(pre, sNonce...)); err != nil {
		return nil, err
	}
	if err := serverChallenge(c, cred.token, sNonce, binding, authed); err != nil {
		return nil, err
	}
	return c, nil
}

// serverChallenge checks the client's answer to sNonce and proves the
// token in return.
func serverChallenge(c net.Conn, token, sNonce, binding []byte, authed func()) error {
	resp := make([]byte, 12+NonceSize+MACSize)
	if _, err := io.ReadFull(c, resp); err != nil {
		return err
	}
	refuse := func(err error) error {
		reply := make([]byte, 1+MACSize)
		reply[0] = 1
		c.Write(reply)
		return err
	}
	if string(resp[:8]) != Magic || binary.LittleEndian.Uint32(resp[8:]) != Version {
		return refuse(fmt.Errorf("%w: bad hello", ErrProtocol))
	}
	cNonce := resp[12 : 12+NonceSize]
	if !hmac.Equal(resp[12+NonceSize:], authMAC(token, "client", sNonce, cNonce, binding)) {
		return refuse(fmt.Errorf("%w: wrong token", ErrAuth))
	}
	authed()
	reply := append([]byte{0}, authMAC(token, "server", sNonce, cNonce, binding)...)
	_, err := c.Write(reply)
	return err
}
