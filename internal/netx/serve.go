package netx

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultMaxUnauthenticated is the default cap on connections per
// listener that have not authenticated yet.
const DefaultMaxUnauthenticated = 64

// Accept backoff after a temporary error, as net/http does.
const (
	minAcceptDelay = 5 * time.Millisecond
	maxAcceptDelay = time.Second
)

// Config configures Serve.
type Config struct {
	// MaxUnauthenticated caps the connections that have not called
	// authed yet; a connection accepted beyond it is closed at once.
	// Zero means DefaultMaxUnauthenticated.
	MaxUnauthenticated int
	// Log receives accept errors and rejected connections, at most one
	// line per second; nil discards them.
	Log func(msg string, keysAndValues ...any)
}

// Serve accepts connections on ln until ctx is done and runs handle for
// each in its own goroutine. handle calls authed once the peer has
// authenticated, which frees its unauthenticated slot (returning frees it
// too). Temporary accept errors, such as running out of file descriptors,
// are retried with backoff. When ctx is done, or on a permanent accept
// error, Serve closes ln and every connection, waits for the handlers and
// returns the error (nil for ctx).
func Serve(ctx context.Context, ln net.Listener, cfg Config, handle func(c net.Conn, authed func())) error {
	s := &server{handle: handle, conns: map[net.Conn]struct{}{}, log: NewLogLimiter(time.Second, cfg.Log)}
	s.pending = newGate(cfg.MaxUnauthenticated)
	// Closing once, and waiting for it, means Serve never returns while a
	// close started by ctx is still removing the socket file (it would
	// remove a socket a new listener had just put at the same path).
	var once sync.Once
	closeLn := func() { once.Do(func() { ln.Close() }) }
	stop := context.AfterFunc(ctx, closeLn)
	defer stop()
	err := s.acceptLoop(ctx, ln)
	closeLn()
	s.closeAll()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

type server struct {
	handle  func(net.Conn, func())
	pending *gate
	log     *LogLimiter

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

func (s *server) acceptLoop(ctx context.Context, ln net.Listener) error {
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || !temporary(err) {
				return err
			}
			delay = min(max(2*delay, minAcceptDelay), maxAcceptDelay)
			s.log.Log("Accept failed, retrying", "error", err.Error(), "delay", delay.String())
			if !sleep(ctx, delay) {
				return ctx.Err()
			}
			continue
		}
		delay = 0
		if !s.pending.tryAcquire() {
			s.log.Log("Connection refused: too many unauthenticated connections", "remote", c.RemoteAddr().String())
			c.Close()
			continue
		}
		s.start(c)
	}
}

// start runs the handler for c unless the server is shutting down.
func (s *server) start(c net.Conn) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.pending.release()
		c.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		var once atomic.Bool
		authed := func() {
			if once.CompareAndSwap(false, true) {
				s.pending.release()
			}
		}
		defer authed()
		defer s.forget(c)
		s.handle(RawIO(c), authed)
	}()
}

func (s *server) forget(c net.Conn) {
	c.Close()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

func (s *server) closeAll() {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// temporary reports whether an accept error may go away by itself:
// descriptor or memory exhaustion, an aborted connection, a timeout.
func temporary(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR, syscall.EAGAIN} {
		if errors.Is(err, e) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// gate is a counting semaphore that never blocks.
type gate struct {
	n   atomic.Int64
	max int64
}

func newGate(max int) *gate {
	if max <= 0 {
		max = DefaultMaxUnauthenticated
	}
	return &gate{max: int64(max)}
}

func (g *gate) tryAcquire() bool {
	if g.n.Add(1) > g.max {
		g.n.Add(-1)
		return false
	}
	return true
}

func (g *gate) release() { g.n.Add(-1) }

// LimitListener returns a listener that keeps at most max accepted
// connections open; a connection accepted beyond that is closed at once
// and Accept waits for the next one. For servers such as net/http that
// run their own accept loop.
func LimitListener(ln net.Listener, max int) net.Listener {
	return &limitListener{Listener: ln, gate: newGate(max)}
}

type limitListener struct {
	net.Listener
	gate *gate
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.gate.tryAcquire() {
			return &limitConn{Conn: c, gate: l.gate}, nil
		}
		c.Close()
	}
}

type limitConn struct {
	net.Conn
	gate *gate
	once sync.Once
}

func (c *limitConn) Close() error {
	c.once.Do(c.gate.release)
	return c.Conn.Close()
}
