package node

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"strconv"
	"strings"
	"sync"
)

// DefaultReplicaPorts is the range replica ports are chosen from: below
// Linux's default ephemeral range (32768-60999), so an outgoing connection
// of any process on the node can never take a port a replica's address
// names while that replica is not running.
const DefaultReplicaPorts = "10000-30000"

// portRange is a half-open range of TCP ports [lo, hi).
type portRange struct{ lo, hi int }

// parsePortRange reads "LO-HI" (inclusive).
func parsePortRange(s string) (portRange, error) {
	lo, hi, ok := strings.Cut(s, "-")
	a, err1 := strconv.Atoi(lo)
	b, err2 := strconv.Atoi(hi)
	if !ok || err1 != nil || err2 != nil || a < 1024 || b > 65535 || a > b {
		return portRange{}, fmt.Errorf("replica ports %q: want LO-HI within 1024-65535", s)
	}
	return portRange{lo: a, hi: b + 1}, nil
}

// ports chooses replica ports and holds each one with a listener of the
// agent while its replica process does not run, so that no other process
// (another agent on the host, a second local cluster) binds it in between.
type ports struct {
	mu   sync.Mutex
	host string
	r    portRange
	held map[int]net.Listener
}

// pick chooses a free port for replica name, starting at a point derived
// from the name, skipping ports in taken, and holds it.
func (p *ports) pick(name string, taken map[int]bool) (int, error) {
	h := fnv.New32a()
	_, _ = h.Write([]byte(name))
	span := p.r.hi - p.r.lo
	start := int(h.Sum32() % uint32(span))
	for i := range span {
		port := p.r.lo + (start+i)%span
		if taken[port] {
			continue
		}
		if err := p.hold(port); err == nil {
			return port, nil
		}
	}
	return 0, fmt.Errorf("no free replica port in %d-%d on %s", p.r.lo, p.r.hi-1, p.host)
}

// hold binds port unless the agent already holds it.
func (p *ports) hold(port int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.held[port]; ok {
		return nil
	}
	l, err := net.Listen("tcp", net.JoinHostPort(p.host, strconv.Itoa(port)))
	if err != nil {
		return err
	}
	if p.held == nil {
		p.held = map[int]net.Listener{}
	}
	p.held[port] = l
	return nil
}

// release lets the replica process bind port.
func (p *ports) release(port int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if l, ok := p.held[port]; ok {
		_ = l.Close()
		delete(p.held, port)
	}
}

// releaseAll drops every hold (agent shutdown).
func (p *ports) releaseAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for port, l := range p.held {
		errs = append(errs, l.Close())
		delete(p.held, port)
	}
	_ = errors.Join(errs...)
}
