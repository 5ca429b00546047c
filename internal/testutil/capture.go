package testutil

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"
)

// CaptureProxy forwards TCP connections from a loopback port to a target
// address and records every byte it forwards, both ways, so a test can
// check what crossed the wire.
type CaptureProxy struct {
	// Addr is the proxy's host:port.
	Addr string

	mu    sync.Mutex
	bytes bytes.Buffer
	conns []net.Conn
	wg    sync.WaitGroup
}

// StartCaptureProxy listens on 127.0.0.1 and forwards to target
// (host:port); it stops when the test ends.
func StartCaptureProxy(t testing.TB, target string) *CaptureProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("capture proxy: %v", err)
	}
	p := &CaptureProxy{Addr: ln.Addr().String()}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, in, out)
			p.mu.Unlock()
			p.wg.Add(2)
			go p.pipe(in, out)
			go p.pipe(out, in)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

// pipe copies src to dst, recording what it copies before it forwards it:
// whatever the peer has received is already in Captured.
func (p *CaptureProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	defer dst.Close()
	io.Copy(io.MultiWriter((*captureWriter)(p), dst), src)
}

type captureWriter CaptureProxy

func (w *captureWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.bytes.Write(b)
}

// Captured returns a copy of every byte forwarded so far, both
// directions interleaved.
func (p *CaptureProxy) Captured() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Clone(p.bytes.Bytes())
}
