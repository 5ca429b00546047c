package engine

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestUncleanShutdownResyncsReplicas simulates writes cut short by an
// engine crash: the replicas of an uncleanly closed volume (odd
// generation) differ in a few blocks. The next Open serves reads from one
// source only, repairs the others while writes continue, and afterwards
// every replica holds the same bytes. A clean Close marks the volume so
// the next Open needs no resync.
func TestUncleanShutdownResyncsReplicas(t *testing.T) {
	const size = 8 << 20
	rs := newTestReplicas(t, 3, size)
	rnd := rand.New(rand.NewPCG(3, 4))

	// A first engine writes and is closed cleanly: even generation.
	v := openTestVolume(t, size, rs)
	require.Equal(t, uint64(1), v.Generation()%2, "open generation is odd")
	base := randBytes(rnd, size)
	require.NoError(t, v.WriteAt(bg, base, 0))
	require.NoError(t, v.Flush(bg))
	require.NoError(t, v.Snapshot(bg, "s1", nil))
	require.NoError(t, v.WriteAt(bg, randBytes(rnd, 1<<20), 2<<20))
	require.NoError(t, v.Close())
	gen := rs[0].generation()
	require.Equal(t, uint64(0), gen%2, "clean close stores an even generation")
	for _, r := range rs {
		require.Equal(t, gen, r.generation())
	}
	v2 := openTestVolume(t, size, rs)
	require.False(t, v2.Resyncing(), "clean shutdown: no resync")
	require.NoError(t, v2.Close())

	// Now an engine opens the volume (odd generation, as Open stores before
	// any I/O) and "dies": in-flight writes reached only some replicas.
	crash := func() {
		gen := rs[0].generation()
		gen += 1 + gen%2 // next odd
		for i, r := range rs {
			require.NoError(t, r.r.SetGeneration(gen))
			for k := 0; k < 20; k++ {
				off := rnd.Int64N(hot/blockSize) * blockSize
				_, err := r.r.WriteAt(randBytes(rnd, blockSize*(1+i)), min(off, size-int64(blockSize*(1+i))))
				require.NoError(t, err)
			}
		}
		require.NotEqual(t, rs[0].contents(), rs[1].contents())
	}
	crash()
	v3 := resyncWhileWriting(t, rs)
	// The replicas tracked the session's changes: only those regions were
	// compared, not the MiB the clean session before wrote at 2 MiB.
	st := v3.Status()
	require.NotNil(t, st.LastResync)
	require.True(t, st.LastResync.Tracked, "%+v", st.LastResync)
	require.LessOrEqual(t, st.LastResync.Compared, int64(hot+64<<10))
	require.Positive(t, st.LastResync.Repaired)
	require.NoError(t, v3.Close())
	require.Equal(t, uint64(0), rs[0].generation()%2)

	// A second crash, after which the replica processes restart: their
	// change tracking survives (replica.cbt), so the resync still compares
	// only the session's regions.
	crash()
	for _, r := range rs {
		r.stop()
		r.start()
	}
	v4 := resyncWhileWriting(t, rs)
	st = v4.Status()
	require.NotNil(t, st.LastResync)
	require.True(t, st.LastResync.Tracked, "%+v", st.LastResync)
	require.LessOrEqual(t, st.LastResync.Compared, int64(hot+64<<10))
	require.Positive(t, st.LastResync.Repaired)
	require.NoError(t, v4.Close())
}

// resyncWhileWriting opens the uncleanly closed volume on rs, keeps writing
// (some writes unaligned) until the resync finished, and checks every
// replica and the volume read the same.
func resyncWhileWriting(t *testing.T, rs []*testReplica) *Volume {
	t.Helper()
	size := rs[0].size
	v3 := openTestVolume(t, size, rs, func(c *Config) { c.RebuildWorkers = 4 })
	// Writes keep flowing during the resync, some unaligned.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		r := rand.New(rand.NewPCG(5, 6))
		for {
			select {
			case <-stop:
				return
			default:
			}
			n := 1 + r.IntN(20000)
			off := r.Int64N(hot - int64(n))
			if err := v3.WriteAt(bg, randBytes(r, n), off); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for v3.Resyncing() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	require.False(t, v3.Resyncing())
	st := v3.Status()
	require.Equal(t, Healthy, st.Robustness, "%+v", st)
	require.NoError(t, v3.Flush(bg))
	want := rs[0].contents()
	got := make([]byte, size)
	require.NoError(t, v3.ReadAt(bg, got, 0))
	requireSame(t, want, got, "volume")
	for _, r := range rs[1:] {
		requireSame(t, want, r.contents(), r.addr)
	}
	return v3
}

// hot is the part of the volume the simulated crashes and the writes
// during the resync touch.
const hot = 1 << 20

// TestSubmitConcurrent drives the asynchronous path with many concurrent
// requests (reads, writes, flushes, trims) and checks the result against a
// model; writes to one block are never concurrent, as with a real client.
func TestSubmitConcurrent(t *testing.T) {
	const size = 4 << 20
	rs := newTestReplicas(t, 3, size)
	v := openTestVolume(t, size, rs)
	m := &model{data: make([]byte, size)}
	const workers = 16
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 9))
			// Each worker owns the blocks b with b%workers == w.
			for i := 0; i < 300; i++ {
				blk := int64(r.IntN(size/blockSize/workers)*workers + w)
				done := make(chan error, 1)
				rq := &Request{Off: blk * blockSize, Done: func(_ *Request, err error) { done <- err }}
				switch k := r.IntN(10); {
				case k < 5:
					rq.Op, rq.Buf = IOWrite, randBytes(r, blockSize)
					m.write(rq.Buf, rq.Off)
				case k < 8:
					rq.Op, rq.Buf = IORead, make([]byte, blockSize)
				case k < 9:
					rq.Op, rq.Length = IOTrim, blockSize
					m.write(make([]byte, blockSize), rq.Off)
				default:
					rq.Op = IOFlush
				}
				v.Submit(rq)
				if err := <-done; err != nil {
					t.Error(err)
					return
				}
				if rq.Op == IORead {
					m.mu.Lock()
					want := append([]byte(nil), m.data[rq.Off:rq.Off+blockSize]...)
					m.mu.Unlock()
					requireSame(t, want, rq.Buf, "read")
				}
			}
		}()
	}
	wg.Wait()
	for _, r := range rs {
		requireSame(t, m.data, r.contents(), r.addr)
	}
	// Out of range and large requests.
	done := make(chan error, 1)
	v.Submit(&Request{Op: IOWrite, Buf: make([]byte, 10), Off: size - 5, Done: func(_ *Request, err error) { done <- err }})
	require.ErrorIs(t, <-done, ErrOutOfRange)
	big := make([]byte, size)
	v.Submit(&Request{Op: IOWrite, Buf: big, Done: func(_ *Request, err error) { done <- err }})
	require.NoError(t, <-done)
	for _, r := range rs {
		requireSame(t, big, r.contents(), r.addr)
	}
}
