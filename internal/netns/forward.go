package netns

import (
	"io"
	"net"
	"sync"
)

// Forwarder relays TCP connections from a listen address on the host's
// bridge to a target only the host reaches (a loopback address), so nodes
// in namespaces reach the API server. Block cuts one source address off
// the target while the rest of its network stays up.
type Forwarder struct {
	ln      net.Listener
	target  string
	mu      sync.Mutex
	blocked map[string]bool
	conns   map[net.Conn]string // live client connections and their source address
}

// Forward listens on listen and relays every connection to target until
// Close.
func Forward(listen, target string) (*Forwarder, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	f := &Forwarder{ln: ln, target: target, blocked: map[string]bool{}, conns: map[net.Conn]string{}}
	go f.accept()
	return f, nil
}

// Addr is the address the forwarder listens on.
func (f *Forwarder) Addr() string { return f.ln.Addr().String() }

// Close stops listening and closes every relayed connection.
func (f *Forwarder) Close() error {
	err := f.ln.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		c.Close()
	}
	return err
}

// Block closes src's connections and refuses its new ones.
func (f *Forwarder) Block(src string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.blocked[src] = true
	for c, from := range f.conns {
		if from == src {
			c.Close()
		}
	}
}

// Unblock lets src connect again.
func (f *Forwarder) Unblock(src string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.blocked, src)
}

func (f *Forwarder) accept() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		go f.relay(c)
	}
}

// track records c unless its source is blocked.
func (f *Forwarder) track(c net.Conn) bool {
	src, _, _ := net.SplitHostPort(c.RemoteAddr().String())
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.blocked[src] {
		return false
	}
	f.conns[c] = src
	return true
}

func (f *Forwarder) relay(c net.Conn) {
	defer c.Close()
	if !f.track(c) {
		return
	}
	defer func() {
		f.mu.Lock()
		delete(f.conns, c)
		f.mu.Unlock()
	}()
	up, err := net.Dial("tcp", f.target)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
}
