//go:build bench

package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cairnstore/cairn/engine"
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

// fioResult runs fio with JSON output and returns IOPS and bytes/s.
func fioRun(t *testing.T, args ...string) (iops, bw float64) {
	t.Helper()
	fio := testutil.RequireTool(t, "fio")
	out, err := exec.Command(fio, append(args, "--output-format=json")...).Output()
	require.NoError(t, err, "fio %s: %s", strings.Join(args, " "), out)
	var res struct {
		Jobs []struct {
			Read, Write struct {
				IOPS    float64 `json:"iops"`
				BWBytes float64 `json:"bw_bytes"`
			}
			Error int `json:"error"`
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
	return j.Read.IOPS + j.Write.IOPS, j.Read.BWBytes + j.Write.BWBytes
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

// TestBenchEngine prints Cairn (1 and 3 replicas) against qemu-nbd on a raw
// file (O_DIRECT, the reference, and through the page cache, which
// is what the replicas do) and fio direct on the raw file. Runs of all
// targets are interleaved, so load from elsewhere on the machine hits every
// target alike.
func TestBenchEngine(t *testing.T) {
	const size = 1 << 30
	secs := benchSeconds()
	runs := benchRuns()
	qemuNBD := testutil.RequireTool(t, "qemu-nbd")

	// Targets: name -> fio target arguments.
	type target struct {
		name string
		args []string
	}
	var targets []target
	for _, n := range []int{1, 3} {
		if !benchWanted("CAIRN_BENCH_TARGETS", fmt.Sprintf("cairn %d replica(s)", n)) {
			continue
		}
		rs := startReplicas(t, n, size)
		o := nbdOptions(t, size, rs)
		o.RebuildInterval = 0
		e := startEngine(t, o)
		targets = append(targets, target{fmt.Sprintf("cairn %d replica(s)", n),
			[]string{"--ioengine=nbd", "--uri=nbd+unix:///vol1?socket=" + e.nbdSock}})
	}
	for _, cache := range []string{"none", "writeback"} {
		if !benchWanted("CAIRN_BENCH_TARGETS", "qemu-nbd --cache="+cache) {
			continue
		}
		raw := filepath.Join(t.TempDir(), "raw-"+cache+".img")
		require.NoError(t, exec.Command("truncate", "-s", strconv.Itoa(size), raw).Run())
		qsock := filepath.Join(sockDir(t), "q.sock")
		args := []string{"--cache=" + cache, "-f", "raw", "--shared=16", "--persistent", "-k", qsock, "-x", "vol1", raw}
		if cache == "none" {
			args = append([]string{"--aio=native"}, args...)
		}
		q := exec.Command(qemuNBD, args...)
		require.NoError(t, q.Start())
		t.Cleanup(func() { _ = q.Process.Kill(); _ = q.Wait() })
		require.Eventually(t, func() bool { _, err := os.Stat(qsock); return err == nil }, 10*time.Second, 20*time.Millisecond)
		targets = append(targets, target{"qemu-nbd --cache=" + cache, []string{"--ioengine=nbd", "--uri=nbd+unix:///vol1?socket=" + qsock}})
	}
	if benchWanted("CAIRN_BENCH_TARGETS", "fio direct raw file") {
		raw := filepath.Join(t.TempDir(), "raw.img")
		require.NoError(t, exec.Command("truncate", "-s", strconv.Itoa(size), raw).Run())
		targets = append(targets, target{"fio direct raw file", []string{"--ioengine=libaio", "--direct=1", "--filename=" + raw}})
	}

	// Lay out every target fully so reads hit data.
	for _, tg := range targets {
		fioRun(t, append([]string{"--name=fill", "--rw=write", "--bs=1m", "--iodepth=8", "--size=" + strconv.Itoa(size)}, tg.args...)...)
	}

	iops := map[string]map[string]stats{}
	bws := map[string]map[string]stats{}
	for _, w := range workloads {
		if !benchWanted("CAIRN_BENCH_WORKLOADS", w.name) {
			continue
		}
		is, bs := map[string][]float64{}, map[string][]float64{}
		for r := 0; r < runs; r++ {
			for _, tg := range targets {
				args := append([]string{"--name=bench", "--size=" + strconv.Itoa(size), "--time_based",
					"--runtime=" + strconv.Itoa(secs), "--randrepeat=0", "--norandommap"}, w.args...)
				i, b := fioRun(t, append(args, tg.args...)...)
				is[tg.name], bs[tg.name] = append(is[tg.name], i), append(bs[tg.name], b)
			}
		}
		iops[w.name], bws[w.name] = map[string]stats{}, map[string]stats{}
		for _, tg := range targets {
			iops[w.name][tg.name], bws[w.name][tg.name] = summarize(is[tg.name]), summarize(bs[tg.name])
		}
	}

	fmt.Printf("\nCairn engine benchmark: fio %ds per run, %d interleaved runs, 1 GiB volume, min / median / max\n", secs, runs)
	fmt.Printf("  cairn N replica(s): fio nbd engine -> engine (unix socket) -> N replica processes (unix sockets);\n" +
		"      replicas write and read through the page cache (buffered pwrite/pread, fdatasync on flush)\n" +
		"  qemu-nbd --cache=none: O_DIRECT + Linux AIO on a raw file (the issue's reference)\n" +
		"  qemu-nbd --cache=writeback: page cache on a raw file (what the replicas do)\n" +
		"  fio direct raw file: libaio O_DIRECT, no NBD\n" +
		"  All data fits in the page cache (1 GiB per file); nothing is flushed during a run.\n\n")
	fmt.Printf("%-18s %-26s %-24s %-22s %-10s %s\n", "workload", "target", "IOPS", "MiB/s", "x none", "x writeback (medians)")
	for _, w := range workloads {
		if iops[w.name] == nil {
			continue
		}
		ref := iops[w.name]["qemu-nbd --cache=none"].med
		refWB := iops[w.name]["qemu-nbd --cache=writeback"].med
		for _, tg := range targets {
			s, b := iops[w.name][tg.name], bws[w.name][tg.name]
			mib := stats{b.min / (1 << 20), b.med / (1 << 20), b.max / (1 << 20)}
			fmt.Printf("%-18s %-26s %-24s %-22s %-10s %.2fx\n", w.name, tg.name, s, mib, fmt.Sprintf("%.2fx", s.med/ref), s.med/refWB)
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
		_, bw := fioRun(t, "--name=seqread", "--filename="+disk, "--rw=read", "--bs=1m", "--iodepth=8",
			"--ioengine=libaio", "--direct=1", "--size="+strconv.FormatInt(size, 10))
		diskRates = append(diskRates, bw/(1<<20))
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
		_, bw := fioRun(t, append(job("read", disk, "read"), job("write", copyFile, "write")...)...)
		copyRates = append(copyRates, bw/(1<<20))
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
