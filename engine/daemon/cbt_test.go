package daemon

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cairnstore/cairn/engine"
)

// TestChangeTrackingSurvivesReplicaRestarts: on a 4 GiB volume (sparse
// files), 1% of the volume changes, then every replica process is
// restarted (SIGKILL); the resync after an unclean engine stop and the
// catch-up of a replica that missed writes each move at most 2% of the
// volume, because the replicas' change tracking survived their restarts.
// fio verifies everything it wrote.
func TestChangeTrackingSurvivesReplicaRestarts(t *testing.T) {
	const size = 4 << 30
	const limit = size / 50 // 2%
	rs := startReplicas(t, 3, size)
	e := startEngine(t, nbdOptions(t, size, rs))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// 1% of the volume each, in 64 KiB blocks at random offsets of one half
	first := []string{"--rw=randwrite", "--bs=64k", "--iodepth=8", "--offset=0", "--size=2g",
		"--io_size=41m", "--verify=crc32c", "--randseed=5"}
	second := []string{"--rw=randwrite", "--bs=64k", "--iodepth=8", "--offset=2g", "--size=2g",
		"--io_size=41m", "--verify=crc32c", "--randseed=6"}
	write := func(job []string) {
		t.Helper()
		out, err := fioCmd(t, ctx, e.nbdSock, append(job, "--do_verify=0", "--end_fsync=1")...).CombinedOutput()
		require.NoError(t, err, "%s", out)
	}
	verify := func(job []string) {
		t.Helper()
		out, err := fioCmd(t, ctx, e.nbdSock, append(job, "--verify_only=1", "--verify_fatal=1")...).CombinedOutput()
		require.NoError(t, err, "%s", out)
		require.Contains(t, string(out), "err= 0")
		require.NotContains(t, string(out), "verify:")
	}
	restartReplicas := func(rs ...*procReplica) {
		t.Helper()
		for _, r := range rs {
			r.kill()
			r.start()
		}
		for _, r := range rs {
			r.waitReady()
		}
	}

	// Resync: the engine stops uncleanly, every replica restarts.
	write(first)
	require.NoError(t, e.cmd.Process.Signal(syscall.SIGKILL))
	_ = e.cmd.Wait()
	e.cmd = nil
	restartReplicas(rs...)
	e.restart()
	st := e.waitStatus("replicas resynced", 5*time.Minute, func(s engine.Status) bool {
		return s.Robustness == engine.Healthy && s.LastResync != nil
	})
	t.Logf("resync after restarting every replica: %+v", *st.LastResync)
	require.True(t, st.LastResync.Tracked, "%+v", st.LastResync)
	require.LessOrEqual(t, st.LastResync.Compared, int64(limit))
	require.LessOrEqual(t, st.LastResync.Repaired, int64(limit))
	verify(first)

	// Catch-up: a replica misses 1% of the volume, the engine stops
	// cleanly, every replica restarts, the engine reopens and brings the
	// returning replica up to date.
	rs[2].kill()
	write(second)
	require.Equal(t, engine.ModeFailed, e.status().Replicas[2].Mode)
	require.NoError(t, e.cmd.Process.Signal(syscall.SIGTERM))
	_ = e.cmd.Wait()
	e.cmd = nil
	restartReplicas(rs...)
	e.restart()
	st = e.waitStatus("replica caught up", 5*time.Minute, func(s engine.Status) bool {
		return s.Robustness == engine.Healthy && s.LastRebuild != nil
	})
	t.Logf("catch-up after restarting every replica: %+v, compared %+v", *st.LastRebuild, *st.LastResync)
	require.Empty(t, st.LastRebuild.Error)
	require.True(t, st.LastRebuild.CaughtUp, "%+v", st.LastRebuild)
	require.Empty(t, st.LastRebuild.Layers)
	require.LessOrEqual(t, st.LastRebuild.Bytes, int64(limit))
	require.LessOrEqual(t, st.LastResync.Compared, int64(limit))
	verify(first)
	verify(second)
	// the caught-up replica holds both writes: read them from it alone
	rs[0].kill()
	rs[1].kill()
	verify(second)
	verify(first)
	st = e.status()
	require.Equal(t, engine.ModeHealthy, st.Replicas[2].Mode, "%+v", st.Replicas)
}
