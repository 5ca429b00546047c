package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cairnstore/cairn/replica"
)

var bg = context.Background()

func TestReplicatedWritesReachEveryReplica(t *testing.T) {
	const size = 8 << 20
	rs := newTestReplicas(t, 3, size)
	v := openTestVolume(t, size, rs)
	require.Equal(t, Healthy, v.Status().Robustness)
	m := &model{data: make([]byte, size)}
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 300; i++ {
		n := 1 + rnd.IntN(64<<10)
		off := rnd.Int64N(size - int64(n))
		p := randBytes(rnd, n)
		require.NoError(t, v.WriteAt(bg, p, off))
		m.write(p, off)
	}
	require.NoError(t, v.WriteZeroes(bg, 4096, 3*4096+17))
	m.write(make([]byte, 3*4096+17), 4096)
	require.NoError(t, v.Flush(bg))
	got := make([]byte, size)
	require.NoError(t, v.ReadAt(bg, got, 0))
	requireSame(t, m.data, got, "volume read")
	for _, r := range rs {
		requireSame(t, m.data, r.contents(), r.addr)
	}
	// Out of range I/O is refused without touching replicas.
	require.ErrorIs(t, v.WriteAt(bg, make([]byte, 10), size-5), ErrOutOfRange)
	require.Equal(t, Healthy, v.Status().Robustness)
}

func TestFailedReplicaIsDroppedAndGenerationBumped(t *testing.T) {
	const size = 4 << 20
	rs := newTestReplicas(t, 3, size)
	v := openTestVolume(t, size, rs)
	gen0 := v.Generation()
	for _, r := range rs {
		require.Equal(t, gen0, r.generation())
	}
	require.NoError(t, v.WriteAt(bg, []byte("before"), 0))
	rs[2].stop()
	require.NoError(t, v.WriteAt(bg, []byte("after!"), 0))
	st := v.Status()
	require.Equal(t, Degraded, st.Robustness)
	require.Equal(t, ModeFailed, st.Replicas[2].Mode)
	require.Greater(t, v.Generation(), gen0)
	require.Equal(t, v.Generation(), rs[0].generation())
	require.Equal(t, v.Generation(), rs[1].generation())
	require.Equal(t, gen0, rs[2].generation())
	got := make([]byte, 6)
	require.NoError(t, v.ReadAt(bg, got, 0))
	require.Equal(t, "after!", string(got))

	// A restart picks only the newest generation; the stale one is never read.
	v.Close()
	rs[2].start()
	v2 := openTestVolume(t, size, rs)
	st = v2.Status()
	require.Equal(t, ModeHealthy, st.Replicas[0].Mode)
	require.Equal(t, ModeStale, st.Replicas[2].Mode)
	require.Contains(t, st.Replicas[2].Reason, "generation")
	for i := 0; i < 20; i++ {
		require.NoError(t, v2.ReadAt(bg, got, 0))
		require.Equal(t, "after!", string(got))
	}
}

// TestOpenSettlesReplicaSizes: a replica smaller than the volume (one
// that missed a Grow) is grown at Open; replicas larger than the
// configured size (a Grow the configuration has not caught up with) set
// the volume's size; a wrong token is refused.
func TestOpenSettlesReplicaSizes(t *testing.T) {
	rs := newTestReplicas(t, 2, 4<<20)
	small := newTestReplicas(t, 1, 2<<20)
	v := openTestVolume(t, 4<<20, append(rs, small...))
	st := v.Status()
	require.Equal(t, ModeHealthy, st.Replicas[2].Mode)
	require.Equal(t, int64(4<<20), small[0].r.Size(), "grown at Open")
	require.NoError(t, v.Close())

	v = openTestVolume(t, 2<<20, rs)
	require.Equal(t, int64(4<<20), v.Size(), "the replicas' larger size wins")
	require.NoError(t, v.Close())
	// Wrong token: refused.
	_, err := Open(bg, Config{Name: "v", Size: 4 << 20, Replicas: addrs(rs), Dial: ReplicaDialer("wrong")})
	require.ErrorIs(t, err, ErrNoHealthyReplica)
}

// TestRefusedAddChangesNothing: adding a replica that cannot join (nobody
// listening, or the wrong size) fails with ErrReplicaRefused, also through
// the control API as 422 (engine/control), and leaves the members and robustness as they were.
func TestRefusedAddChangesNothing(t *testing.T) {
	const size = 4 << 20
	rs := newTestReplicas(t, 2, size)
	odd := newTestReplicas(t, 1, 2*size)
	v := openTestVolume(t, size, rs)
	before := v.Status()
	require.Equal(t, Healthy, before.Robustness)
	unreachable := "unix:" + t.TempDir() + "/nobody.sock"
	for _, addr := range []string{unreachable, odd[0].addr} {
		_, err := v.Rebuild(bg, addr)
		require.ErrorIs(t, err, ErrReplicaRefused, addr)
		st := v.Status()
		require.Contains(t, st.LastRebuild.Error, "replica refused", "the attempt is reported")
		st.LastRebuild = nil
		require.Equal(t, before, st, "a refused add of %s changed the volume", addr)
	}
}

func TestSnapshotRevertRemove(t *testing.T) {
	const size = 4 << 20
	rs := newTestReplicas(t, 2, size)
	v := openTestVolume(t, size, rs)
	attached := true
	v.SetAttachedCheck(func() bool { return attached })
	require.NoError(t, v.WriteAt(bg, []byte("version-1"), 1000))
	require.NoError(t, v.Snapshot(bg, "s1", map[string]string{"by": "test"}))
	require.ErrorIs(t, v.Snapshot(bg, "s1", nil), ErrSnapshotExists)
	require.ErrorIs(t, v.Snapshot(bg, "bad name", nil), ErrInvalid)
	require.NoError(t, v.WriteAt(bg, []byte("version-2"), 1000))
	snaps, err := v.Snapshots(bg)
	require.NoError(t, err)
	require.Len(t, snaps, 1)
	require.Equal(t, "s1", snaps[0].Name)

	require.ErrorIs(t, v.Revert(bg, "s1"), ErrAttached)
	attached = false
	require.ErrorIs(t, v.Revert(bg, "nope"), ErrNotFound)
	require.NoError(t, v.Revert(bg, "s1"))
	got := make([]byte, 9)
	require.NoError(t, v.ReadAt(bg, got, 1000))
	require.Equal(t, "version-1", string(got))
	for _, r := range rs {
		require.Equal(t, "version-1", string(r.contents()[1000:1009]))
	}
	require.Equal(t, Healthy, v.Status().Robustness)
	require.NoError(t, v.RemoveSnapshot(bg, "s1"))
	require.ErrorIs(t, v.RemoveSnapshot(bg, "s1"), ErrNotFound)
	require.NoError(t, v.ReadAt(bg, got, 1000))
	require.Equal(t, "version-1", string(got))
}

func TestTimedOutReplicaIsDropped(t *testing.T) {
	const size = 4 << 20
	rs := newTestReplicas(t, 2, size)
	proxy := newStallProxy(t, rs[1].addr)
	v := openTestVolume(t, size, rs, func(c *Config) {
		c.IOTimeout = 300 * time.Millisecond
		c.Replicas[1] = proxy.addr
	})
	proxy.stall() // the replica's host stops answering
	start := time.Now()
	require.NoError(t, v.WriteAt(bg, []byte("x"), 0))
	require.Less(t, time.Since(start), 3*time.Second)
	st := v.Status()
	require.Equal(t, Degraded, st.Robustness)
	require.Contains(t, st.Replicas[1].Reason, "deadline")
	// The last replica failing faults the volume.
	rs[0].stop()
	err := v.WriteAt(bg, []byte("y"), 0)
	require.True(t, errors.Is(err, ErrNoHealthyReplica), "%v", err)
	require.Equal(t, Faulted, v.Status().Robustness)
}

// TestRebuildUnderConcurrentUnalignedWrites adds an empty replica to a
// volume with snapshots while writers hammer it with unaligned writes that
// share 4 KiB blocks (each writer owns every fourth 512-byte sector), plus
// trims and write-zeroes; afterwards every replica must equal the model.
func TestRebuildUnderConcurrentUnalignedWrites(t *testing.T) {
	const size = 16 << 20
	rs := newTestReplicas(t, 3, size)
	v := openTestVolume(t, size, rs[:2], func(c *Config) { c.RebuildWorkers = 4 })
	m := &model{data: make([]byte, size)}
	rnd := rand.New(rand.NewPCG(3, 4))
	// Pre-existing data in two snapshot layers and the head.
	for layer := 0; layer < 3; layer++ {
		for i := 0; i < 200; i++ {
			n := 512 * (1 + rnd.IntN(64))
			off := rnd.Int64N(size-int64(n)) &^ 511
			p := randBytes(rnd, n)
			require.NoError(t, v.WriteAt(bg, p, off))
			m.write(p, off)
		}
		if layer < 2 {
			require.NoError(t, v.Snapshot(bg, []string{"a", "b"}[layer], nil))
		}
	}

	const writers = 4
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 99))
			for {
				select {
				case <-stop:
					return
				default:
				}
				// A run of sectors owned by this writer: sector s with s%writers == w.
				sec := r.Int64N(size/512-64)&^(writers-1) + int64(w)
				count := 1 + r.IntN(8)
				for k := 0; k < count; k++ {
					s := sec + int64(k*writers)
					var p []byte
					var err error
					switch r.IntN(10) {
					case 0:
						p = make([]byte, 512)
						err = v.WriteZeroes(bg, s*512, 512)
					default:
						p = randBytes(r, 512)
						err = v.WriteAt(bg, p, s*512)
					}
					if err != nil {
						errs <- err
						return
					}
					m.write(p, s*512)
				}
			}
		}()
	}
	time.Sleep(50 * time.Millisecond)
	res, err := v.Rebuild(bg, rs[2].addr)
	require.NoError(t, err)
	time.Sleep(50 * time.Millisecond)
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Equal(t, []string{"a", "b"}, res.Layers[:2])
	st := v.Status()
	require.Equal(t, Healthy, st.Robustness)
	require.Len(t, st.Replicas, 3)
	require.NoError(t, v.Flush(bg))
	for _, r := range rs {
		requireSame(t, m.data, r.contents(), r.addr)
		require.Equal(t, v.Generation(), r.generation())
	}
	// Every replica has the same chain: the user snapshots and the
	// rebuild snapshot (kept so a later returning replica copies less).
	for _, r := range rs {
		var names []string
		for _, s := range r.r.Info().Snapshots {
			names = append(names, s.Name)
		}
		require.Len(t, names, 3, r.addr)
		require.Equal(t, []string{"a", "b"}, names[:2], r.addr)
		require.Contains(t, names[2], rebuildSnapshotPrefix)
	}
}

// TestReturningReplicas: a replica that returns after snapshots were taken
// without it copies only the layers newer than the last snapshot it
// shares; one that returns with the volume's chain is caught up by
// repairing only the regions written while it was away; older rebuild
// snapshots are pruned once every member is healthy.
func TestReturningReplicas(t *testing.T) {
	const size = 8 << 20
	rs := newTestReplicas(t, 3, size)
	v := openTestVolume(t, size, rs)
	m := &model{data: make([]byte, size)}
	write := randomWriter(t, v, m, 5, 1)
	chains := func() []string {
		var first []string
		for i, r := range rs {
			var names []string
			for _, s := range r.r.Snapshots() {
				names = append(names, s.Name)
			}
			if i == 0 {
				first = names
			}
			require.Equal(t, first, names, r.addr)
			requireSame(t, m.data, r.contents(), r.addr)
		}
		return first
	}
	write(500)
	require.NoError(t, v.Snapshot(bg, "old", nil))

	// 1. Away while a snapshot is taken: layers since "old" move.
	rs[2].stop()
	write(20)
	require.Equal(t, Degraded, v.Status().Robustness)
	require.NoError(t, v.Snapshot(bg, "while-away", nil))
	rs[2].start()
	res, err := v.Rebuild(bg, rs[2].addr)
	require.NoError(t, err)
	require.False(t, res.CaughtUp)
	require.Len(t, res.Layers, 2, "the layers since the common snapshot move: %v", res.Layers)
	require.Equal(t, "while-away", res.Layers[0])
	require.LessOrEqual(t, res.Bytes, int64(20*4096))
	require.False(t, res.Relayed, "the target pulls from the source itself")
	require.Equal(t, Healthy, v.Status().Robustness)
	c := chains()
	require.Equal(t, []string{"old", "while-away", res.Layers[1]}, c)
	firstRebuild := res.Layers[1]

	// 2. Away (restarted; its own tracking is not what counts) with the chain
	// unchanged: only what the source tracked as written is repaired.
	rs[1].stop()
	write(30)
	rs[1].start()
	res, err = v.Rebuild(bg, rs[1].addr)
	require.NoError(t, err)
	require.True(t, res.CaughtUp, "%+v", res)
	require.Empty(t, res.Layers)
	require.Positive(t, res.Bytes)
	require.LessOrEqual(t, res.Bytes, int64(30*4096))
	require.Equal(t, Healthy, v.Status().Robustness)
	require.Equal(t, c, chains())

	// 3. A layer rebuild with every member healthy afterwards prunes the
	// older rebuild snapshot.
	rs[0].stop()
	write(10)
	require.NoError(t, v.Snapshot(bg, "away2", nil))
	rs[0].start()
	res, err = v.Rebuild(bg, rs[0].addr)
	require.NoError(t, err)
	require.False(t, res.CaughtUp)
	require.Equal(t, Healthy, v.Status().Robustness)
	c = chains()
	require.NotContains(t, c, firstRebuild)
	require.Equal(t, []string{"old", "while-away", "away2", res.Layers[len(res.Layers)-1]}, c)
	_ = replica.BlockSize
}

// TestRebuildRelaysWhenTargetCannotPull: the engine reaches the replicas
// at addresses the target cannot dial (here: aliases only the engine's
// dialer knows), so the target's pull fails and the engine relays the
// data itself; the rebuilt replica holds the same data.
func TestRebuildRelaysWhenTargetCannotPull(t *testing.T) {
	const size = 8 << 20
	rs := newTestReplicas(t, 2, size)
	alias := map[string]string{}
	var aliases []string
	for i, r := range rs {
		a := fmt.Sprintf("unix:/nonexistent/alias%d.sock", i)
		alias[a] = r.addr
		aliases = append(aliases, a)
	}
	dial := ReplicaDialer(testToken)
	v := openTestVolume(t, size, nil, func(c *Config) {
		c.Replicas = aliases
		c.Dial = func(ctx context.Context, addr string) (*Replica, error) { return dial(ctx, alias[addr]) }
	})
	m := &model{data: make([]byte, size)}
	write := randomWriter(t, v, m, 9, 2)
	write(200)
	rs[1].stop()
	write(50)
	require.NoError(t, v.Snapshot(bg, "while-away", nil)) // a layer rebuild, not a catch-up
	rs[1].start()
	res, err := v.Rebuild(bg, aliases[1])
	require.NoError(t, err)
	require.True(t, res.Relayed)
	require.Positive(t, res.Bytes)
	require.Equal(t, Healthy, v.Status().Robustness)
	for _, r := range rs {
		requireSame(t, m.data, r.contents(), r.addr)
	}
}

// TestSnapshotDuringRebuild: a snapshot requested while a rebuild copies
// layers is taken on every replica, the target included; after the
// rebuild every replica has the same chain and the snapshot reads the same
// everywhere. Other control operations stay busy meanwhile.
func TestSnapshotDuringRebuild(t *testing.T) {
	const size = 8 << 20
	rs := newTestReplicas(t, 3, size)
	v := openTestVolume(t, size, rs)
	m := &model{data: make([]byte, size)}
	write := randomWriter(t, v, m, 13, 4)
	write(300)
	rs[2].stop()
	write(50)
	require.NoError(t, v.Snapshot(bg, "while-away", nil)) // a layer rebuild, not a catch-up
	rs[2].start()

	started, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	rebuildCopyHook = func() {
		once.Do(func() { close(started); <-release })
	}
	t.Cleanup(func() { rebuildCopyHook = nil })
	done := make(chan error, 1)
	go func() { _, err := v.Rebuild(bg, rs[2].addr); done <- err }()
	<-started
	write(20) // the target takes live writes meanwhile
	want := bytes.Clone(m.data)
	require.NoError(t, v.Snapshot(bg, "during", map[string]string{"k": "v"}))
	require.ErrorIs(t, v.RemoveSnapshot(bg, "during"), ErrBusy)
	write(20)
	close(release)
	require.NoError(t, <-done)
	require.Equal(t, Healthy, v.Status().Robustness)

	var chain []string
	for i, r := range rs {
		var names []string
		for _, s := range r.r.Snapshots() {
			names = append(names, s.Name)
		}
		if i == 0 {
			chain = names
			require.Contains(t, chain, "during")
		}
		require.Equal(t, chain, names, r.addr)
		sr, err := r.r.OpenSnapshot("during")
		require.NoError(t, err)
		got := make([]byte, size)
		_, err = sr.ReadAt(got, 0)
		require.NoError(t, err)
		require.NoError(t, sr.Close())
		requireSame(t, want, got, r.addr+" snapshot")
		requireSame(t, m.data, r.contents(), r.addr)
	}
}

// randomWriter returns a function that makes n writes of 1 to maxBlocks
// 4 KiB blocks at random block offsets of v, recording them in m.
func randomWriter(t *testing.T, v *Volume, m *model, seed uint64, maxBlocks int) func(n int) {
	rnd := rand.New(rand.NewPCG(seed, seed+1))
	blocks := int64(len(m.data) / 4096)
	return func(n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			k := 1 + rnd.IntN(maxBlocks)
			p := randBytes(rnd, 4096*k)
			off := rnd.Int64N(blocks-int64(k)+1) * 4096
			require.NoError(t, v.WriteAt(bg, p, off))
			m.write(p, off)
		}
	}
}
