package engine

import (
	"fmt"
	"sync/atomic"
	"time"
)

// SlowPolicy drops a replica that is persistently slower than the others
// before it slows the volume down to its pace for long (every mutation
// waits for every replica) or piles up requests until the I/O timeout
// drops it with all of them at once (a timeout storm).
//
// Each replica keeps a moving average of the latency of its mutation
// requests (writes, trims, write-zeroes, flushes: every healthy replica
// takes each of them, so the averages are comparable). Reads go to one
// replica and are not counted, nor are rebuilding and resyncing replicas
// (their repair traffic slows them for a while by design). A healthy
// replica is slow while its average is at least Latency and more than
// Factor times the smallest average of the other healthy replicas. A
// replica that stays slow for For is dropped like a failed one
// (generation bumped on the survivors) with a reason naming both
// averages. It is never the last healthy replica: with no other healthy
// replica there is nothing to compare with.
//
// A dropped slow replica is rebuilt (caught up) by RunAutoRebuild like any
// returning one, but not before For has passed, doubling with each further
// drop for slowness (at most 32 times For), so a link that stays slow
// costs a rebuild now and then instead of a drop every few seconds.
type SlowPolicy struct {
	// Factor is how many times slower than the fastest other healthy
	// replica counts as slow (default 5; negative disables the policy).
	Factor float64
	// Latency is the least average latency that counts as slow
	// (default 250ms), so fast replicas are never judged by noise.
	Latency time.Duration
	// For is how long a replica must stay slow to be dropped (default 10s).
	For time.Duration
}

func (p *SlowPolicy) setDefaults() {
	if p.Factor == 0 {
		p.Factor = 5
	}
	if p.Latency == 0 {
		p.Latency = 250 * time.Millisecond
	}
	if p.For == 0 {
		p.For = 10 * time.Second
	}
}

// maxSlowBackoff bounds the hold-off after repeated drops (For << 5).
const maxSlowBackoff = 5

// slowness is a member's side of the policy; every field is atomic (it is
// updated on the connections' reader goroutines).
type slowness struct {
	avg   atomic.Int64 // moving average of mutation latency, ns
	since atomic.Int64 // unix ns when it became slow, 0 while it is not
	drops atomic.Int32 // times dropped for slowness
	hold  atomic.Int64 // unix ns before which auto rebuild leaves it alone
}

// observe folds one latency into the moving average (weight 1/8).
func (s *slowness) observe(d time.Duration) int64 {
	for {
		old := s.avg.Load()
		avg := int64(d)
		if old != 0 {
			avg = old + (int64(d)-old)/8
		}
		if s.avg.CompareAndSwap(old, avg) {
			return avg
		}
	}
}

// observeMutation records that m completed a mutation after d and drops m
// if it has been slower than the others for the policy's time. Called
// with Volume.mu held for reading (by the request's fanout or mutate), so
// v.view is stable; it never blocks.
func (v *Volume) observeMutation(m *member, d time.Duration, now time.Time) {
	p := v.cfg.SlowReplica
	if p.Factor < 0 || m.failed.Load() {
		return
	}
	avg := m.slow.observe(d)
	fastest := int64(-1)
	for _, o := range v.view.healthy {
		if o == m || o.failed.Load() {
			continue
		}
		if a := o.slow.avg.Load(); a > 0 && (fastest < 0 || a < fastest) {
			fastest = a
		}
	}
	if fastest < 0 || avg < int64(p.Latency) || float64(avg) <= p.Factor*float64(fastest) {
		m.slow.since.Store(0)
		return
	}
	since := m.slow.since.Load()
	if since == 0 {
		m.slow.since.CompareAndSwap(0, now.UnixNano())
		return
	}
	if now.UnixNano()-since < int64(p.For) {
		return
	}
	drops := min(m.slow.drops.Add(1), maxSlowBackoff+1)
	m.slow.hold.Store(now.Add(p.For << (drops - 1)).UnixNano())
	m.slow.since.Store(0)
	v.fail(m, fmt.Errorf("%w: mean mutation latency %v, the fastest other replica's %v, for %v", ErrSlowReplica,
		time.Duration(avg).Round(time.Millisecond), time.Duration(fastest).Round(time.Millisecond), p.For))
}

// slowHold reports whether auto rebuild should still leave m alone after
// a drop for slowness.
func (m *member) slowHold(now time.Time) bool { return now.UnixNano() < m.slow.hold.Load() }
