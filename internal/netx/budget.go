package netx

import (
	"context"
	"sync"
	"sync/atomic"
)

// Budget bounds the bytes held by in-flight requests: a server acquires a
// request's bytes before reading or executing it and releases them once
// its reply is written or dropped. Acquire never blocks while nothing is
// held, so one request larger than the limit still goes through. The fast
// path is a few atomic operations; the mutex is taken only when someone
// waits.
type Budget struct {
	limit   int64
	used    atomic.Int64
	waiters atomic.Int32

	mu   sync.Mutex
	wake chan struct{} // closed and replaced on a release that has waiters
}

// NewBudget returns a budget of limit bytes.
func NewBudget(limit int64) *Budget {
	return &Budget{limit: limit, wake: make(chan struct{})}
}

// InUse is the number of bytes held.
func (b *Budget) InUse() int64 { return b.used.Load() }

// Acquire takes n bytes, waiting while the bytes held plus n exceed the
// limit. It fails only when ctx is done.
func (b *Budget) Acquire(ctx context.Context, n int64) error {
	for !b.tryAcquire(n) {
		b.mu.Lock()
		b.waiters.Add(1)
		wake := b.wake
		b.mu.Unlock()
		if b.tryAcquire(n) {
			b.waiters.Add(-1)
			return nil
		}
		select {
		case <-wake:
			b.waiters.Add(-1)
		case <-ctx.Done():
			b.waiters.Add(-1)
			return ctx.Err()
		}
	}
	return nil
}

func (b *Budget) tryAcquire(n int64) bool {
	for {
		cur := b.used.Load()
		if cur != 0 && cur+n > b.limit {
			return false
		}
		if b.used.CompareAndSwap(cur, cur+n) {
			return true
		}
	}
}

// Release returns n bytes and wakes the waiters.
func (b *Budget) Release(n int64) {
	b.used.Add(-n)
	if b.waiters.Load() == 0 {
		return
	}
	b.mu.Lock()
	close(b.wake)
	b.wake = make(chan struct{})
	b.mu.Unlock()
}
