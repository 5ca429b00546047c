package engine

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// slowTestPolicy judges replicas within a test's time: slow from 20ms on,
// dropped after 300ms of it.
var slowTestPolicy = SlowPolicy{Factor: 5, Latency: 20 * time.Millisecond, For: 300 * time.Millisecond}

// writeAsync writes p at off through the fast path (Submit) and waits.
func writeAsync(v *Volume, p []byte, off int64) error {
	done := make(chan error, 1)
	v.Submit(&Request{Op: IOWrite, Buf: p, Off: off, Done: func(_ *Request, err error) { done <- err }})
	return <-done
}

// TestSlowReplicaIsDroppedAndRebuilt puts one of three replicas behind a
// slow link (every chunk held 60ms, far below the I/O timeout): writes
// keep succeeding, the slow replica is dropped with ErrSlowReplica's
// reason and the generation bumped, the fast ones are never dropped, and
// after the link recovers the replica rejoins by a rebuild and holds
// every write.
func TestSlowReplicaIsDroppedAndRebuilt(t *testing.T) {
	const size = 4 << 20
	rs := newTestReplicas(t, 3, size)
	proxy := newStallProxy(t, rs[2].addr)
	v := openTestVolume(t, size, rs, func(c *Config) {
		c.Replicas[2] = proxy.addr
		c.SlowReplica = slowTestPolicy
	})
	gen := v.Generation()
	proxy.setDelay(60 * time.Millisecond)
	rng := rand.New(rand.NewPCG(1, 2))
	want := make([]byte, size)
	write := func(i int, sync bool) {
		p := randBytes(rng, 4096)
		off := int64(i%(size/4096)) * 4096
		var err error
		if sync {
			err = v.WriteAt(bg, p, off)
		} else {
			err = writeAsync(v, p, off)
		}
		require.NoError(t, err)
		copy(want[off:], p)
	}
	// Both paths count: the fast path (Submit) and the synchronous one.
	for i := 0; ; i++ {
		require.Less(t, i, 500, "the slow replica was never dropped")
		write(i, i%2 == 1)
		st := v.Status()
		if st.Replicas[2].Mode == ModeFailed {
			require.Contains(t, st.Replicas[2].Reason, ErrSlowReplica.Error())
			break
		}
		require.Equal(t, Healthy, st.Robustness, "a fast replica was dropped: %+v", st.Replicas)
	}
	st := v.Status()
	require.Equal(t, Degraded, st.Robustness)
	require.Equal(t, ModeHealthy, st.Replicas[0].Mode)
	require.Equal(t, ModeHealthy, st.Replicas[1].Mode)
	require.Greater(t, v.Generation(), gen, "the drop did not bump the generation")
	require.True(t, v.members[2].slowHold(time.Now()), "auto rebuild is not held off after a drop for slowness")

	// The link recovers; the replica rejoins and catches up.
	proxy.setDelay(0)
	for i := range 64 {
		write(i*7, false)
	}
	_, err := v.Rebuild(context.Background(), proxy.addr)
	require.NoError(t, err)
	require.Equal(t, Healthy, v.Status().Robustness)
	for i := range 64 {
		write(i*11, i%2 == 0)
	}
	require.NoError(t, v.Flush(bg))
	for i, r := range rs {
		requireSame(t, want, r.contents(), "replica "+string(rune('0'+i)))
	}
}

// TestEquallySlowReplicasStay slows every replica alike (a slow machine,
// not a slow replica) for several times the policy's time: none is
// dropped, whatever their latency.
func TestEquallySlowReplicasStay(t *testing.T) {
	const size = 4 << 20
	rs := newTestReplicas(t, 3, size)
	var proxies []*stallProxy
	for _, r := range rs {
		proxies = append(proxies, newStallProxy(t, r.addr))
	}
	v := openTestVolume(t, size, rs, func(c *Config) {
		for i, p := range proxies {
			c.Replicas[i] = p.addr
		}
		c.SlowReplica = slowTestPolicy
	})
	for _, p := range proxies {
		p.setDelay(30 * time.Millisecond)
	}
	p := make([]byte, 4096)
	for start := time.Now(); time.Since(start) < 4*slowTestPolicy.For; {
		require.NoError(t, writeAsync(v, p, 0))
		require.NoError(t, v.WriteAt(bg, p, 4096))
	}
	st := v.Status()
	require.Equal(t, Healthy, st.Robustness, "%+v", st.Replicas)
}
