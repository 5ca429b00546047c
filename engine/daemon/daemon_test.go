package daemon

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cairnstore/cairn/engine"
	"github.com/cairnstore/cairn/internal/netx"
	"github.com/cairnstore/cairn/internal/testutil"
	"github.com/cairnstore/cairn/replica/wire"
)

func nbdOptions(t *testing.T, size int64, rs []*procReplica) Options {
	sd := sockDir(t)
	return Options{
		Volume: "vol1", Size: size, Replicas: replicaAddrs(rs), TokenFile: tokenFile(t),
		Frontend: "nbd", Listen: "unix:" + filepath.Join(sd, "nbd.sock"), Control: "unix:" + filepath.Join(sd, "ctl.sock"),
		IOTimeout: 5 * time.Second, RebuildInterval: 300 * time.Millisecond,
	}
}

func fioCmd(t *testing.T, ctx context.Context, sock string, args ...string) *exec.Cmd {
	fio := testutil.RequireTool(t, "fio")
	base := []string{"--name=cairn", "--ioengine=nbd", "--uri=nbd+unix:///vol1?socket=" + sock, "--output-format=normal"}
	return exec.CommandContext(ctx, fio, append(base, args...)...)
}

// TestFioVerifySurvivesReplicaKillAndRebuild writes with fio verify through
// NBD on a 3-replica volume while one replica process is SIGKILLed, then
// restarts it and waits for the engine to rebuild it: with replicas on
// unix sockets, and on TCP, where every connection is TLS (a plaintext
// client is refused).
func TestFioVerifySurvivesReplicaKillAndRebuild(t *testing.T) {
	const size = 64 << 20
	t.Run("unix", func(t *testing.T) { fioVerifySurvivesReplicaKill(t, startReplicas(t, 3, size)) })
	t.Run("tcp+tls", func(t *testing.T) {
		rs := startReplicasOn(t, 3, size, true)
		requireTLSOnly(t, rs[0].addr)
		fioVerifySurvivesReplicaKill(t, rs)
	})
}

// requireTLSOnly checks that the replica at addr refuses a plaintext client.
func requireTLSOnly(t *testing.T, addr string) {
	t.Helper()
	cred, err := wire.NewCredentials(testToken)
	require.NoError(t, err)
	raw, err := netx.Dial(context.Background(), addr)
	require.NoError(t, err)
	defer raw.Close()
	_, err = wire.ClientHandshake(context.Background(), raw, cred, false)
	require.ErrorIs(t, err, wire.ErrAuth)
	require.ErrorContains(t, err, "requires TLS")
}

func fioVerifySurvivesReplicaKill(t *testing.T, rs []*procReplica) {
	const size = 64 << 20
	e := startEngine(t, nbdOptions(t, size, rs))
	require.Equal(t, engine.Healthy, e.status().Robustness)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	fio := fioCmd(t, ctx, e.nbdSock, "--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=64m",
		"--verify=crc32c", "--verify_fatal=1", "--do_verify=1", "--randrepeat=0")
	fio.Stdout, fio.Stderr = &out, &out
	require.NoError(t, fio.Start())
	// Kill one replica while fio writes.
	time.Sleep(400 * time.Millisecond)
	rs[1].kill()
	require.NoError(t, fio.Wait(), "%s", out.String())
	require.Contains(t, out.String(), "err= 0")
	st := e.status()
	require.Equal(t, engine.Degraded, st.Robustness, "%+v", st)
	require.Equal(t, engine.ModeFailed, st.Replicas[1].Mode)
	require.Equal(t, st.Generation, st.Replicas[0].Generation)

	// The replica comes back; the engine rebuilds it while fio keeps writing.
	rs[1].start()
	rs[1].waitReady()
	fio2 := fioCmd(t, ctx, e.nbdSock, "--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=64m",
		"--offset=0", "--time_based", "--runtime=2", "--ba=512", "--bs=512-64k")
	out.Reset()
	fio2.Stdout, fio2.Stderr = &out, &out
	require.NoError(t, fio2.Start())
	st = e.waitStatus("3 healthy replicas", 60*time.Second, func(s engine.Status) bool {
		return s.Robustness == engine.Healthy && s.LastRebuild != nil && s.LastRebuild.Error == ""
	})
	require.NoError(t, fio2.Wait(), "%s", out.String())
	require.NotNil(t, st.LastRebuild)
	require.Empty(t, st.LastRebuild.Error)
	// the replica returned with the volume's chain: only what was written
	// while it was away is repaired, no layer moves
	require.True(t, st.LastRebuild.CaughtUp, "%+v", st.LastRebuild)
	t.Logf("rebuild: caught up %v, %d bytes, layers %v, %v", st.LastRebuild.CaughtUp, st.LastRebuild.Bytes, st.LastRebuild.Layers,
		st.LastRebuild.Finished.Sub(st.LastRebuild.Started))

	// Every replica holds the same bytes: read each straight from its server.
	var first []byte
	for i, r := range rs {
		c := r.dial()
		buf := make([]byte, size)
		_, err := c.ReadAt(context.Background(), buf, 0)
		require.NoError(t, err)
		info, err := c.Info(context.Background())
		require.NoError(t, err)
		require.Equal(t, st.Generation, info.Generation, "replica %d generation", i)
		if first == nil {
			first = buf
			continue
		}
		if !bytes.Equal(first, buf) {
			for j := range buf {
				if buf[j] != first[j] {
					t.Fatalf("replica %d differs from replica 0 at byte %d", i, j)
				}
			}
		}
	}
	// And fio's verify pass over the whole device still matches what the
	// first run wrote outside of the second run's area: run a read check.
	out.Reset()
	rd := fioCmd(t, ctx, e.nbdSock, "--rw=read", "--bs=1m", "--iodepth=4", "--size=64m")
	rd.Stdout, rd.Stderr = &out, &out
	require.NoError(t, rd.Run(), "%s", out.String())
}

// TestEngineKillKeepsFlushedData SIGKILLs the engine during writes and
// restarts it on the same replicas: everything fio wrote and flushed before
// verifies, and the replicas agree on a newer generation.
func TestEngineKillKeepsFlushedData(t *testing.T) {
	const size = 64 << 20
	rs := startReplicas(t, 2, size)
	o := nbdOptions(t, size, rs)
	e := startEngine(t, o)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	pattern := []string{"--rw=randwrite", "--bs=4k", "--iodepth=16", "--offset=0", "--size=32m",
		"--verify=crc32c", "--randseed=1234"}
	out, err := fioCmd(t, ctx, e.nbdSock, append(pattern, "--do_verify=0", "--end_fsync=1")...).CombinedOutput()
	require.NoError(t, err, "%s", out)
	gen1 := e.status().Generation

	// Unflushed random writes elsewhere, then SIGKILL mid-stream.
	bg := fioCmd(t, ctx, e.nbdSock, "--rw=randwrite", "--bs=4k", "--iodepth=16", "--offset=32m", "--size=32m",
		"--time_based", "--runtime=30")
	require.NoError(t, bg.Start())
	time.Sleep(700 * time.Millisecond)
	require.NoError(t, e.cmd.Process.Signal(syscall.SIGKILL))
	_ = e.cmd.Wait()
	e.cmd = nil
	_ = bg.Wait() // fio fails: its server vanished

	e.restart()
	// The unclean stop makes the engine resync the replicas first.
	st := e.waitStatus("replicas resynced", time.Minute, func(s engine.Status) bool { return s.Robustness == engine.Healthy })
	require.Greater(t, st.Generation, gen1)
	for i, r := range rs {
		info, err := r.dial().Info(context.Background())
		require.NoError(t, err)
		require.Equal(t, st.Generation, info.Generation, "replica %d", i)
	}
	out, err = fioCmd(t, ctx, e.nbdSock, append(pattern, "--verify_only=1", "--verify_fatal=1")...).CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Contains(t, string(out), "err= 0")
	require.NotContains(t, string(out), "verify:")
}

// TestEngineKillLoopReplicasAgree SIGKILLs the engine many times while fio
// issues unflushed, partly unaligned random writes on many connections.
// After every restart the engine resyncs the replicas: each one then holds
// the same bytes over the whole device, and data written and flushed before
// the kills still verifies.
func TestEngineKillLoopReplicasAgree(t *testing.T) {
	const size = 16 << 20
	const kills = 6
	rs := startReplicas(t, 3, size)
	e := startEngine(t, nbdOptions(t, size, rs))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	flushed := []string{"--rw=randwrite", "--bs=4k", "--iodepth=16", "--offset=0", "--size=8m",
		"--verify=crc32c", "--randseed=77"}
	out, err := fioCmd(t, ctx, e.nbdSock, append(flushed, "--do_verify=0", "--end_fsync=1")...).CombinedOutput()
	require.NoError(t, err, "%s", out)

	rnd := rand.New(rand.NewPCG(11, 12))
	for i := 0; i < kills; i++ {
		bg := fioCmd(t, ctx, e.nbdSock, "--rw=randwrite", "--bsrange=512-64k", "--ba=512", "--iodepth=32",
			"--numjobs=2", "--offset=8m", "--size=8m", "--time_based", "--runtime=30", "--randrepeat=0")
		require.NoError(t, bg.Start())
		time.Sleep(time.Duration(200+rnd.IntN(500)) * time.Millisecond)
		require.NoError(t, e.cmd.Process.Signal(syscall.SIGKILL))
		_ = e.cmd.Wait()
		e.cmd = nil
		_ = bg.Wait() // fio fails: its server vanished

		e.restart()
		st := e.waitStatus("replicas resynced", time.Minute, func(s engine.Status) bool { return s.Robustness == engine.Healthy })
		// the replica processes kept running: their change tracking (since
		// the first open; there was no clean close since) bounds the resync
		require.NotNil(t, st.LastResync, "kill %d", i)
		require.True(t, st.LastResync.Tracked, "kill %d: %+v", i, st.LastResync)
		var first []byte
		for j, r := range rs {
			buf := make([]byte, size)
			_, err := r.dial().ReadAt(context.Background(), buf, 0)
			require.NoError(t, err)
			info, err := r.dial().Info(context.Background())
			require.NoError(t, err)
			require.Equal(t, st.Generation, info.Generation, "kill %d: replica %d generation", i, j)
			if first == nil {
				first = buf
			} else if !bytes.Equal(first, buf) {
				for k := range buf {
					if buf[k] != first[k] {
						t.Fatalf("kill %d: replica %d differs from replica 0 at byte %d", i, j, k)
					}
				}
			}
		}
		out, err := fioCmd(t, ctx, e.nbdSock, append(flushed, "--verify_only=1", "--verify_fatal=1")...).CombinedOutput()
		require.NoError(t, err, "kill %d: %s", i, out)
		require.Contains(t, string(out), "err= 0")
	}
	require.GreaterOrEqual(t, strings.Count(e.out.String(), "Resync finished"), kills, "every restart resyncs")
	for _, l := range strings.Split(e.out.String(), "\n") {
		if strings.Contains(l, "Resync finished") {
			t.Log(l)
		}
	}
}

// TestNBDClientsOnReplicatedVolume drives the replicated volume with
// qemu-img, nbdcopy and nbdinfo.
func TestNBDClientsOnReplicatedVolume(t *testing.T) {
	const size = 32 << 20
	rs := startReplicas(t, 3, size)
	e := startEngine(t, nbdOptions(t, size, rs))
	uri := "nbd+unix:///vol1?socket=" + e.nbdSock
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(testutil.RequireTool(t, name), args...).CombinedOutput()
		require.NoError(t, err, "%s %s: %s", name, strings.Join(args, " "), out)
		return string(out)
	}
	require.Equal(t, "33554432", strings.TrimSpace(run("nbdinfo", "--size", uri)))
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	run("qemu-img", "create", "-f", "raw", src, "32M")
	run("qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 8M", "-c", "write -P 0xa5 12345 1M", "-c", "write -P 0x33 30M 2M", src)
	run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, uri)
	run("qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri)
	dst := filepath.Join(dir, "dst.raw")
	run("nbdcopy", "--connections=4", uri, dst)
	run("qemu-img", "compare", "-f", "raw", "-F", "raw", src, dst)
	st := e.status()
	require.Equal(t, engine.Healthy, st.Robustness)

	// The metrics endpoint reports the I/O and the replica states.
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", e.ctlSock)
	}}}
	resp, err := hc.Get("http://engine/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	for _, want := range []string{
		`cairn_engine_io_operations_total{op="write",volume="vol1"}`,
		`cairn_engine_io_bytes_total{op="read",volume="vol1"}`,
		`cairn_engine_io_latency_seconds_bucket{op="write",volume="vol1",le=`,
		`cairn_engine_replica_state{mode="healthy",replica="` + rs[0].addr + `",volume="vol1"} 1`,
		`cairn_engine_generation{volume="vol1"}`,
	} {
		require.Contains(t, string(body), want)
	}
	// Without the token the control API refuses.
	resp, err = hc.Get("http://engine/v1/status")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
}
