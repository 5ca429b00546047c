package wire

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/cairnstore/cairn/internal/netx"
)

// Dial connects to the replica server at addr ("host:port" or
// "unix:/path") and authenticates with token, returning the connection
// ready for request frames.
func Dial(ctx context.Context, addr, token string) (net.Conn, error) {
	if token == "" {
		return nil, fmt.Errorf("%w: empty token", ErrInvalid)
	}
	conn, err := netx.Dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	if err := ClientHandshake(ctx, conn, []byte(token)); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

func authMAC(token []byte, side string, sNonce, cNonce []byte) []byte {
	m := hmac.New(sha256.New, token)
	m.Write([]byte("cairn-replica-" + side))
	m.Write(sNonce)
	m.Write(cNonce)
	return m.Sum(nil)
}

// ClientHandshake answers the server's challenge and checks the server's
// proof of the token (see doc.go).
func ClientHandshake(ctx context.Context, conn net.Conn, token []byte) error {
	deadline := time.Now().Add(HandshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn.SetDeadline(deadline)
	defer conn.SetDeadline(time.Time{})
	hello := make([]byte, 12+NonceSize)
	if _, err := io.ReadFull(conn, hello); err != nil {
		return fmt.Errorf("replica handshake: %w", err)
	}
	if string(hello[:8]) != Magic || binary.LittleEndian.Uint32(hello[8:]) != Version {
		return fmt.Errorf("%w: peer is not a cairn replica (protocol %d)", ErrProtocol, Version)
	}
	sNonce := hello[12:]
	msg := make([]byte, 12+NonceSize+MACSize)
	copy(msg, Magic)
	binary.LittleEndian.PutUint32(msg[8:], Version)
	cNonce := msg[12 : 12+NonceSize]
	rand.Read(cNonce)
	copy(msg[12+NonceSize:], authMAC(token, "client", sNonce, cNonce))
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
	if !hmac.Equal(reply[1:], authMAC(token, "server", sNonce, cNonce)) {
		return fmt.Errorf("%w: server does not know the token", ErrAuth)
	}
	return nil
}

// ServerHandshake runs the challenge: the server sends a nonce, the client
// answers with its own nonce and an HMAC-SHA256 over both keyed by the
// token, and the server proves knowledge of the token in return. The token
// itself never crosses the wire. authed is called once the client has
// proven the token, before the client learns it is in.
func ServerHandshake(c net.Conn, token []byte, authed func()) error {
	c.SetDeadline(time.Now().Add(HandshakeTimeout))
	defer c.SetDeadline(time.Time{})
	hello := make([]byte, 12+NonceSize)
	copy(hello, Magic)
	binary.LittleEndian.PutUint32(hello[8:], Version)
	sNonce := hello[12:]
	rand.Read(sNonce)
	if _, err := c.Write(hello); err != nil {
		return err
	}
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
	if !hmac.Equal(resp[12+NonceSize:], authMAC(token, "client", sNonce, cNonce)) {
		return refuse(ErrAuth)
	}
	authed()
	reply := append([]byte{0}, authMAC(token, "server", sNonce, cNonce)...)
	_, err := c.Write(reply)
	return err
}
