//go:build bench

package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/cairnstore/cairn/engine"
	"github.com/cairnstore/cairn/engine/fuse"
	"github.com/cairnstore/cairn/internal/testutil"
	"github.com/cairnstore/cairn/replica"
)

// benchSeconds is the duration of one fio run (CAIRN_BENCH_SECONDS, default 60).
func benchSeconds() int {
	if s, err := strconv.Atoi(os.Getenv("CAIRN_BENCH_SECONDS")); err == nil && s > 0 {
		return s
	}
	return 60
}

// benchWanted filters workloads and targets by CAIRN_BENCH_WORKLOADS and
// CAIRN_BENCH_TARGETS (comma-separated substrings; empty keeps all), for
// quick before/after comparisons of one case.
func benchWanted(env, name string) bool {
	v := os.Getenv(env)
	if v == "" {
		return true
	}
	for _, s := range strings.Split(v, ",") {
		if strings.Contains(name, s) {
			return true
		}
	}
	return false
}

func benchRuns() int {
	if s, err := strconv.Atoi(os.Getenv("CAIRN_BENCH_RUNS")); err == nil && s >= 3 {
		return s
	}
	return 3
}

type workload struct {
	name string
	args []string
	read bool
}

var workloads = []workload{
	{"4k randwrite QD16", []string{"--rw=randwrite", "--bs=4k", "--iodepth=16"}, false},
	{"4k randread QD16", []string{"--rw=randread", "--bs=4k", "--iodepth=16"}, true},
	{"1M seq write QD8", []string{"--rw=write", "--bs=1m", "--iodepth=8"}, false},
	{"1M seq read QD8", []string{"--rw=read", "--bs=1m", "--iodepth=8"}, true},
}

// fioResult is what one fio run reports.
type fioResult struct {
	iops, bw float64
	ios      int64 // completed I/Os
}

// fioRun runs fio with JSON output.
func fioRun(t *testing.T, args ...string) fioResult {
	t.Helper()
	fio := testutil.RequireTool(t, "fio")
	out, err := exec.Command(fio, append(args, "--output-format=json")...).Output()
	require.NoError(t, err, "fio %s: %s", strings.Join(args, " "), out)
	type dir struct {
		IOPS     float64 `json:"iops"`
		BWBytes  float64 `json:"bw_bytes"`
		TotalIOs int64   `json:"total_ios"`
	}
	var res struct {
		Jobs []struct {
			Read, Write dir
			Error       int `json:"error"`
		} `json:"jobs"`
	}
	// fio may print warnings before the JSON document.
	if i := strings.IndexByte(string(out), '{'); i > 0 {
		out = out[i:]
	}
	require.NoError(t, json.Unmarshal(out, &res), "%s", out)
	require.NotEmpty(t, res.Jobs)
	j := res.Jobs[0]
	require.Zero(t, j.Error)
	return fioResult{j.Read.IOPS + j.Write.IOPS, j.Read.BWBytes + j.Write.BWBytes, j.Read.TotalIOs + j.Write.TotalIOs}
}

type stats struct{ min, med, max float64 }

func summarize(xs []float64) stats {
	s := slices.Clone(xs)
	slices.Sort(s)
	return stats{s[0], s[len(s)/2], s[len(s)-1]}
}

func (s stats) String() string { return fmt.Sprintf("%.0f / %.0f / %.0f", s.min, s.med, s.max) }

func dropCaches() {
	exec.Command("sync").Run()
	_ = os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200)
}

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat
// (100 on every Linux architecture Go supports).
const clockTicks = 100

// cpuTime is the user plus system CPU time the processes have used so far
// (all their threads, from /proc/PID/stat).
func cpuTime(t *testing.T, pids []int) time.Duration {
	t.Helper()
	var ticks int64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		require.NoError(t, err)
		// Fields after the parenthesised command name, which may hold spaces.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
		// utime and stime are fields 14 and 15 of the whole line.
		for _, s := range f[11:13] {
			n, err := strconv.ParseInt(s, 10, 64)
			require.NoError(t, err)
			ticks += n
		}
	}
	return time.Duration(ticks) * time.Second / clockTicks
}

// hostCPU is the busy CPU time of the whole machine so far (every CPU's
// user, nice, system, irq, softirq and steal time from /proc/stat): the
// serving processes plus fio, the kernel's loop and FUSE work, and
// anything else running.
func hostCPU(t *testing.T) time.Duration {
	t.Helper()
	b, err := os.ReadFile("/proc/stat")
	require.NoError(t, err)
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // "cpu" user nice system idle iowait irq softirq steal ...
	require.Greater(t, len(f), 8, "/proc/stat: %q", line)
	var ticks int64
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		n, err := strconv.ParseInt(f[i], 10, 64)
		require.NoError(t, err)
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks
}

// benchTarget is one device the engine benchmark drives with fio.
type benchTarget struct {
	name string
	// args are fio's target arguments (engine, device).
	args []string
	// pids are the processes serving the target, whose CPU time is counted.
	pids []int
	// peer is the target this one's IOPS are compared with.
	peer string
}

const qemuPeer = "qemu-nbd none/native TCP"

// startQemuNBD serves a raw file of size with qemu-nbd on loopback TCP
// (--cache=none --aio=native: O_DIRECT with Linux AIO, the peer).
func startQemuNBD(t *testing.T, size int64) benchTarget {
	qemuNBD := testutil.RequireTool(t, "qemu-nbd")
	raw := filepath.Join(t.TempDir(), "raw.img")
	require.NoError(t, exec.Command("truncate", "-s", strconv.FormatInt(size, 10), raw).Run())
	addr := testutil.FreeLoopbackAddr(t)
	host, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	q := exec.Command(qemuNBD, "--cache=none", "--aio=native", "-f", "raw", "--shared=16", "--persistent",
		"-b", host, "-p", port, "-x", "vol1", raw)
	q.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	require.NoError(t, q.Start())
	t.Cleanup(func() { _ = q.Process.Kill(); _ = q.Wait() })
	require.Eventually(t, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, 10*time.Second, 20*time.Millisecond)
	return benchTarget{name: qemuPeer, args: nbdTCPArgs(addr), pids: []int{q.Process.Pid}}
}

func nbdTCPArgs(addr string) []string {
	return []string{"--ioengine=nbd", "--uri=nbd://" + addr + "/vol1"}
}

// startCairnNBD serves a volume on n replica processes over loopback TCP
// with an engine process whose NBD frontend listens on loopback TCP.
func startCairnNBD(t *testing.T, n int, size int64) benchTarget {
	rs := startReplicasOn(t, n, size, true)
	o := nbdOptions(t, size, rs)
	o.Listen = testutil.FreeLoopbackAddr(t)
	o.RebuildInterval = 0
	e := startEngine(t, o)
	pids := []int{e.cmd.Process.Pid}
	for _, r := range rs {
		pids = append(pids, r.cmd.Process.Pid)
	}
	return benchTarget{name: fmt.Sprintf("cairn NBD %d replica(s)", n), args: nbdTCPArgs(o.Listen), pids: pids, peer: qemuPeer}
}

// startCairnFUSE serves a volume on n replica processes over loopback TCP
// with an engine process whose FUSE frontend holds the volume file, on a
// loop device (the block device where there is no nbd module).
func startCairnFUSE(t *testing.T, n int, size int64, nbdPeer string) benchTarget {
	testutil.RequireRoot(t)
	rs := startReplicasOn(t, n, size, true)
	o := nbdOptions(t, size, rs)
	o.Frontend, o.Listen, o.Mountpoint = "fuse", "", filepath.Join(t.TempDir(), "fuse")
	o.RebuildInterval = 0
	// The engine is killed at cleanup: lazily unmount its dead mount after.
	t.Cleanup(func() { _ = unix.Unmount(o.Mountpoint, unix.MNT_DETACH) })
	e := startEngine(t, o)
	file := filepath.Join(o.Mountpoint, o.Volume)
	dev, err := fuse.AttachLoop(context.Background(), file)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, fuse.DetachLoop(context.Background(), dev, file)) })
	pids := []int{e.cmd.Process.Pid}
	for _, r := range rs {
		pids = append(pids, r.cmd.Process.Pid)
	}
	return benchTarget{name: fmt.Sprintf("cairn FUSE+loop %d replica(s)", n),
		args: []string{"--ioengine=libaio", "--direct=1", "--filename=" + dev}, pids: pids, peer: nbdPeer}
}

// TestBenchEngine prints Cairn against qemu-nbd --cache=none --aio=native
// on a raw file, both over loopback TCP, and the FUSE frontend on a loop
// device against the NBD frontend, with the CPU time the serving processes
// spend per 1,000 I/Os. Every target is preconditioned by a full
// sequential write, and runs of all targets are interleaved, so load from
// elsewhere on the machine hits every target alike.
func TestBenchEngine(t *testing.T) {
	const size = 1 << 30
	secs := benchSeconds()
	runs := benchRuns()

	var targets []benchTarget
	add := func(name string, start func() benchTarget) {
		if benchWanted("CAIRN_BENCH_TARGETS", name) {
			targets = append(targets, start())
		}
	}
	add(qemuPeer, func() benchTarget { return startQemuNBD(t, size) })
	for _, n := range []int{1, 3} {
		add(fmt.Sprintf("cairn NBD %d replica(s)", n), func() benchTarget { return startCairnNBD(t, n, size) })
	}
	add("cairn FUSE+loop 3 replica(s)", func() benchTarget { return startCairnFUSE(t, 3, size, "cairn NBD 3 replica(s)") })

	// Precondition every target with a full sequential write.
	for _, tg := range targets {
		fioRun(t, append([]string{"--name=fill", "--rw=write", "--bs=1m", "--iodepth=8", "--size=" + strconv.Itoa(size)}, tg.args...)...)
	}

	type result struct{ iops, bw, cpu, host stats }
	results := map[string]map[string]result{}
	for _, w := range workloads {
		if !benchWanted("CAIRN_BENCH_WORKLOADS", w.name) {
			continue
		}
		is, bs, cs, hs := map[string][]float64{}, map[string][]float64{}, map[string][]float64{}, map[string][]float64{}
		for r := 0; r < runs; r++ {
			for _, tg := range targets {
				args := append([]string{"--name=bench", "--size=" + strconv.Itoa(size), "--time_based",
					"--runtime=" + strconv.Itoa(secs), "--randrepeat=0", "--norandommap"}, w.args...)
				cpu0, host0 := cpuTime(t, tg.pids), hostCPU(t)
				res := fioRun(t, append(args, tg.args...)...)
				cpu, host := cpuTime(t, tg.pids)-cpu0, hostCPU(t)-host0
				is[tg.name], bs[tg.name] = append(is[tg.name], res.iops), append(bs[tg.name], res.bw/(1<<20))
				ios := float64(max(res.ios, 1))
				cs[tg.name] = append(cs[tg.name], float64(cpu.Milliseconds())*1000/ios)
				hs[tg.name] = append(hs[tg.name], float64(host.Milliseconds())*1000/ios)
			}
		}
		results[w.name] = map[string]result{}
		for _, tg := range targets {
			results[w.name][tg.name] = result{summarize(is[tg.name]), summarize(bs[tg.name]), summarize(cs[tg.name]), summarize(hs[tg.name])}
		}
	}

	fmt.Printf("\nCairn engine benchmark: fio %ds per run, %d interleaved runs, 1 GiB volume preconditioned by a full sequential write, min / median / max\n", secs, runs)
	fmt.Printf("  %s: qemu-nbd --cache=none --aio=native on a raw file (O_DIRECT + Linux AIO), fio nbd engine over loopback TCP\n"+
		"  cairn NBD N replica(s): fio nbd engine -> engine (loopback TCP) -> N replica processes (loopback TCP);\n"+
		"      replicas write and read through the page cache (buffered pwrite/pread, fdatasync on flush)\n"+
		"  cairn FUSE+loop: fio libaio O_DIRECT on a loop device (direct I/O) over the FUSE frontend's volume file,\n"+
		"      the same engine and replicas; compared with cairn NBD 3 replica(s)\n"+
		"  CPU ms/1k: user+system CPU time of every serving process (engine and replicas, or qemu-nbd; not fio)\n"+
		"      per 1,000 I/Os, from /proc/PID/stat\n"+
		"  host ms/1k: busy CPU time of the whole machine per 1,000 I/Os (/proc/stat): the serving processes plus\n"+
		"      fio and the kernel's block, loop and FUSE work; with the CPUs saturated, IOPS follow its inverse\n\n", qemuPeer)
	fmt.Printf("%-18s %-30s %-24s %-20s %-20s %-20s %s\n", "workload", "target", "IOPS", "MiB/s", "CPU ms/1k I/Os", "host ms/1k I/Os", "x peer (median IOPS)")
	for _, w := range workloads {
		rs := results[w.name]
		if rs == nil {
			continue
		}
		for _, tg := range targets {
			r := rs[tg.name]
			ratio := "-"
			if p, ok := rs[tg.peer]; ok {
				ratio = fmt.Sprintf("%.2fx %s", r.iops.med/p.iops.med, tg.peer)
			}
			cpu := fmt.Sprintf("%.1f / %.1f / %.1f", r.cpu.min, r.cpu.med, r.cpu.max)
			host := fmt.Sprintf("%.1f / %.1f / %.1f", r.host.min, r.host.med, r.host.max)
			fmt.Printf("%-18s %-30s %-24s %-20s %-20s %-20s %s\n", w.name, tg.name, r.iops, r.bw, cpu, host, ratio)
		}
	}
}

// TestBenchEngineRebuild prints rebuild throughput.
func TestBenchEngineRebuild(t *testing.T) { benchRebuild(t) }

// benchRebuild measures rebuild throughput of a volume of
// CAIRN_BENCH_REBUILD_GIB (default 4) GiB written as 4k data/4k hole and
// fully written, against fio's sequential direct read rate of the disk.
func benchRebuild(t *testing.T) {
	gib := int64(4)
	if s, err := strconv.ParseInt(os.Getenv("CAIRN_BENCH_REBUILD_GIB"), 10, 64); err == nil && s > 0 {
		gib = s
	}
	size := gib << 30
	runs := benchRuns()

	// Disk sequential read rate on a fully written file of the same size.
	disk := filepath.Join(t.TempDir(), "disk.img")
	fioRun(t, "--name=fill", "--filename="+disk, "--rw=write", "--bs=1m", "--iodepth=8", "--ioengine=libaio",
		"--direct=1", "--size="+strconv.FormatInt(size, 10))
	var diskRates []float64
	for r := 0; r < runs; r++ {
		dropCaches()
		res := fioRun(t, "--name=seqread", "--filename="+disk, "--rw=read", "--bs=1m", "--iodepth=8",
			"--ioengine=libaio", "--direct=1", "--size="+strconv.FormatInt(size, 10))
		diskRates = append(diskRates, res.bw/(1<<20))
	}
	// Source and target replicas share this one disk, and the target must
	// write (and sync) what the source reads: the copy rate of the disk
	// (direct read of one file while writing another, both QD16) is the
	// physical limit of a rebuild here.
	copyFile := filepath.Join(t.TempDir(), "copy.img")
	var copyRates []float64
	for r := 0; r < runs; r++ {
		dropCaches()
		job := func(name, file, rw string) []string {
			return []string{"--name=" + name, "--filename=" + file, "--rw=" + rw, "--bs=1m", "--iodepth=16",
				"--ioengine=libaio", "--direct=1", "--size=" + strconv.FormatInt(size, 10)}
		}
		res := fioRun(t, append(job("read", disk, "read"), job("write", copyFile, "write")...)...)
		copyRates = append(copyRates, res.bw/(1<<20))
		os.Remove(copyFile)
	}
	os.Remove(disk)
	diskMed, copyMed := summarize(diskRates).med, summarize(copyRates).med

	fmt.Printf("\nRebuild, %d GiB volume, MiB/s of volume size, min / median / max (disk seq read by fio: %s MiB/s; "+
		"disk copy rate, read one file while writing another: %s MiB/s)\n", gib, summarize(diskRates), summarize(copyRates))
	for _, pattern := range []string{"4k data / 4k hole", "fully written"} {
		src := filepath.Join(t.TempDir(), "src")
		r, err := replica.Create(src, size)
		require.NoError(t, err)
		buf := make([]byte, 1<<20)
		for i := range buf {
			buf[i] = byte(i*7 + 1)
		}
		if pattern == "fully written" {
			for off := int64(0); off < size; off += int64(len(buf)) {
				_, err := r.WriteAt(buf, off)
				require.NoError(t, err)
			}
		} else {
			for off := int64(0); off < size; off += 8192 {
				_, err := r.WriteAt(buf[:4096], off)
				require.NoError(t, err)
			}
		}
		require.NoError(t, r.Flush())
		require.NoError(t, r.Close())

		sd := sockDir(t)
		srcAddr := "unix:" + filepath.Join(sd, "src.sock")
		sp := startProc(t, "CAIRN_TEST_HELPER=replica", "CAIRN_DIR="+src, "CAIRN_ADDR="+srcAddr, "CAIRN_SIZE="+strconv.FormatInt(size, 10))
		(&procReplica{proc: sp, dir: src, addr: srcAddr}).waitReady()
		v, err := engine.Open(context.Background(), engine.Config{
			Name: "bench", Size: size, Replicas: []string{srcAddr}, Dial: engine.ReplicaDialer(testToken),
		})
		require.NoError(t, err)
		var rates []float64
		for run := 0; run < runs; run++ {
			dir := filepath.Join(t.TempDir(), "dst")
			addr := "unix:" + filepath.Join(sd, fmt.Sprintf("dst%d.sock", run))
			dp := startProc(t, "CAIRN_TEST_HELPER=replica", "CAIRN_DIR="+dir, "CAIRN_ADDR="+addr, "CAIRN_SIZE="+strconv.FormatInt(size, 10))
			(&procReplica{proc: dp, dir: dir, addr: addr}).waitReady()
			dropCaches()
			start := time.Now()
			res, err := v.Rebuild(context.Background(), addr)
			require.NoError(t, err)
			el := time.Since(start).Seconds()
			rates = append(rates, float64(size)/(1<<20)/el)
			t.Logf("%s run %d: %.1fs, %d bytes copied", pattern, run, el, res.Bytes)
			require.NoError(t, v.RemoveReplica(context.Background(), addr))
			dp.kill()
			os.RemoveAll(dir)
		}
		v.Close()
		sp.kill()
		os.RemoveAll(src)
		s := summarize(rates)
		fmt.Printf("%-20s %-30s %.2fx disk seq read, %.2fx disk copy rate\n", pattern, s.String(), s.med/diskMed, s.med/copyMed)
	}
}
