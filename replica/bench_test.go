//go:build bench

package replica

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/cairnstore/cairn/internal/durable"
)

// TestBenchReplica prints the replica benchmark table (make bench):
// 4k random write/read and 1M sequential write/read directly on the store
// vs pwrite/pread on a raw sparse file, snapshot latency at 1 GiB and
// 100 GiB, and index memory per TiB. CAIRN_BENCH_SECONDS sets the
// duration of each I/O case (default 5), CAIRN_BENCH_RUNS the runs (3).
func TestBenchReplica(t *testing.T) {
	secs := envInt("CAIRN_BENCH_SECONDS", 5)
	runs := max(envInt("CAIRN_BENCH_RUNS", 3), 3)
	dur := time.Duration(secs) * time.Second
	var rows []string
	add := func(s string) { rows = append(rows, s); t.Log(s) }
	add(fmt.Sprintf("%-34s %-30s %-30s %s", "case", "cairn min/med/max", "raw file min/med/max", "ratio min/med/max"))

	const volSize = 1 << 30
	type ioCase struct {
		name    string
		bs      int
		workers int
		write   bool
		seq     bool
	}
	for _, c := range []ioCase{
		{"4k randwrite QD16 (IOPS)", 4096, 16, true, false},
		{"4k randread QD16 (IOPS)", 4096, 16, false, false},
		{"1M seqwrite QD1 (MiB/s)", 1 << 20, 1, true, true},
		{"1M seqread QD1 (MiB/s)", 1 << 20, 1, false, true},
	} {
		var cairn, raw, ratio []float64
		for run := 0; run < runs; run++ {
			dir := t.TempDir()
			r, err := Create(filepath.Join(dir, "r"), volSize)
			require.NoError(t, err)
			f, err := os.OpenFile(filepath.Join(dir, "raw"), os.O_RDWR|os.O_CREATE, 0o640)
			require.NoError(t, err)
			require.NoError(t, f.Truncate(volSize))
			if !c.write { // reads need data: fill both with the same pattern
				fill(t, r.WriteAt, volSize)
				fill(t, f.WriteAt, volSize)
				require.NoError(t, r.Flush())
				require.NoError(t, f.Sync())
			}
			// start each measurement with no dirty pages, alternate order
			cairnRun := func() float64 {
				unix.Sync()
				return runIO(dur, c.bs, c.workers, c.write, c.seq, volSize, r.WriteAt, r.ReadAt, r.Flush)
			}
			rawRun := func() float64 {
				unix.Sync()
				return runIO(dur, c.bs, c.workers, c.write, c.seq, volSize, f.WriteAt, f.ReadAt, func() error { return unix.Fdatasync(int(f.Fd())) })
			}
			var rs, fs float64
			if run%2 == 0 {
				rs, fs = cairnRun(), rawRun()
			} else {
				fs, rs = rawRun(), cairnRun()
			}
			r.Close()
			f.Close()
			os.RemoveAll(dir)
			if c.bs >= 1<<20 {
				rs, fs = rs*float64(c.bs)/(1<<20), fs*float64(c.bs)/(1<<20)
			}
			cairn, raw, ratio = append(cairn, rs), append(raw, fs), append(ratio, rs/fs)
		}
		add(fmt.Sprintf("%-34s %-30s %-30s %s", c.name, mmm(cairn, "%.0f"), mmm(raw, "%.0f"), mmm(ratio, "%.2fx")))
	}

	// snapshot latency on sparse volumes holding the same amount of data
	for _, size := range []int64{1 << 30, 100 << 30} {
		var p50, p99 []float64
		for run := 0; run < runs; run++ {
			r, err := Create(filepath.Join(t.TempDir(), "r"), size)
			require.NoError(t, err)
			rng := rand.New(rand.NewPCG(uint64(run), 1))
			buf := make([]byte, 64<<10)
			for i := 0; i < 1024; i++ { // 64 MiB scattered over the volume
				_, err := r.WriteAt(buf, rng.Int64N(size/int64(len(buf)))*int64(len(buf)))
				require.NoError(t, err)
			}
			require.NoError(t, r.Flush())
			var lat []float64
			for i := 0; i < 100; i++ {
				for k := 0; k < 16; k++ { // some dirty data per snapshot
					_, err := r.WriteAt(buf[:4096], rng.Int64N(size/4096)*4096)
					require.NoError(t, err)
				}
				// the engine flushes before it snapshots (DESIGN §7)
				require.NoError(t, r.Flush())
				start := time.Now()
				require.NoError(t, r.Snapshot(fmt.Sprintf("s%d", i), nil))
				lat = append(lat, float64(time.Since(start).Microseconds())/1000)
			}
			r.Close()
			slices.Sort(lat)
			p50 = append(p50, lat[len(lat)/2])
			p99 = append(p99, lat[len(lat)*99/100])
		}
		add(fmt.Sprintf("%-34s %-30s %-30s %s", fmt.Sprintf("snapshot create %d GiB p50 (ms)", size>>30), mmm(p50, "%.2f"), "-", "target p99 <= 10ms"))
		add(fmt.Sprintf("%-34s %-30s %-30s %s", fmt.Sprintf("snapshot create %d GiB p99 (ms)", size>>30), mmm(p99, "%.2f"), "-", ""))
	}

	// reference: the disk's own durable-metadata latency (write a 4 KiB
	// file, fsync, rename, fsync dir), the floor of any snapshot
	{
		var p50, p99 []float64
		for run := 0; run < runs; run++ {
			dir := t.TempDir()
			var lat []float64
			for i := 0; i < 100; i++ {
				start := time.Now()
				require.NoError(t, writeDurable(dir, make([]byte, 4096)))
				lat = append(lat, float64(time.Since(start).Microseconds())/1000)
			}
			slices.Sort(lat)
			p50 = append(p50, lat[len(lat)/2])
			p99 = append(p99, lat[len(lat)*99/100])
		}
		add(fmt.Sprintf("%-34s %-30s %-30s %s", "ref: durable 4K file write p50 (ms)", "-", mmm(p50, "%.2f"), ""))
		add(fmt.Sprintf("%-34s %-30s %-30s %s", "ref: durable 4K file write p99 (ms)", "-", mmm(p99, "%.2f"), ""))
	}

	// index memory: 1 TiB volume, 1% of its blocks owned, as scattered
	// 4 KiB blocks (worst case) and as 64 KiB extents; the index is
	// populated with that allocation pattern directly (no 10 GiB of data
	// written); the Go heap delta cross-checks the accounting.
	const tib = 1 << 40
	for _, ext := range []int64{1, 16} {
		var acct, heap []float64
		for run := 0; run < runs; run++ {
			runtime.GC()
			var m0, m1 runtime.MemStats
			runtime.ReadMemStats(&m0)
			x := newIndex(tib / BlockSize)
			rng := rand.New(rand.NewPCG(uint64(run), 2))
			blocks := int64(tib / BlockSize)
			for n := int64(0); n < blocks/100; n += ext {
				b := rng.Int64N(blocks/ext) * ext
				x.set(b, b+ext, 1)
			}
			runtime.GC()
			runtime.ReadMemStats(&m1)
			acct = append(acct, float64(x.memBytes())/(1<<20))
			heap = append(heap, float64(int64(m1.HeapAlloc)-int64(m0.HeapAlloc))/(1<<20))
			runtime.KeepAlive(x)
		}
		add(fmt.Sprintf("%-34s %-30s %-30s %s", fmt.Sprintf("index MiB/TiB, 1%% in %dK extents", ext*4), mmm(acct, "%.1f"), "heap "+mmm(heap, "%.1f"), "target <= 32"))
	}
	// and a real replica: 4 GiB volume, 1% written as scattered 4 KiB
	// blocks, reopened so the index is built from the files
	{
		var per []float64
		for run := 0; run < runs; run++ {
			const size = 4 << 30
			r, err := Create(filepath.Join(t.TempDir(), "r"), size)
			require.NoError(t, err)
			rng := rand.New(rand.NewPCG(uint64(run), 3))
			buf := make([]byte, BlockSize)
			for n := 0; n < size/BlockSize/100; n++ {
				_, err := r.WriteAt(buf, rng.Int64N(size/BlockSize)*BlockSize)
				require.NoError(t, err)
			}
			dir := r.Dir()
			r.Close()
			r, err = Open(dir)
			require.NoError(t, err)
			per = append(per, float64(r.IndexMemory())*float64(tib/size)/(1<<20))
			r.Close()
			os.RemoveAll(dir)
		}
		add(fmt.Sprintf("%-34s %-30s %-30s %s", "index MiB/TiB, real 4G reopened", mmm(per, "%.1f"), "-", "target <= 32"))
	}
	fmt.Println("\nReplica store benchmark (" + strconv.Itoa(runs) + " runs, " + dur.String() + " per I/O case)")
	for _, r := range rows {
		fmt.Println(r)
	}
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func mmm(v []float64, f string) string {
	s := slices.Clone(v)
	slices.Sort(s)
	return fmt.Sprintf(f+" / "+f+" / "+f, s[0], s[len(s)/2], s[len(s)-1])
}

func fill(t *testing.T, w func([]byte, int64) (int, error), size int64) {
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i)
	}
	for off := int64(0); off < size; off += int64(len(buf)) {
		_, err := w(buf, off)
		require.NoError(t, err)
	}
}

// runIO returns operations per second; writes end with a flush inside the
// measured time.
func runIO(d time.Duration, bs, workers int, write, seq bool, size int64,
	w, r func([]byte, int64) (int, error), flush func() error) float64 {
	var ops atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(d)
	start := time.Now()
	for g := 0; g < workers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 9))
			buf := make([]byte, bs)
			for i := range buf {
				buf[i] = byte(g + i)
			}
			nblk := size / int64(bs)
			var seqOff int64
			for n := 0; ; n++ {
				if n%64 == 0 && time.Now().After(deadline) {
					return
				}
				off := rng.Int64N(nblk) * int64(bs)
				if seq {
					off = seqOff
					seqOff = (seqOff + int64(bs)) % size
				}
				var err error
				if write {
					_, err = w(buf, off)
				} else {
					_, err = r(buf, off)
				}
				if err != nil {
					panic(err)
				}
				ops.Add(1)
			}
		}()
	}
	wg.Wait()
	if write {
		if err := flush(); err != nil {
			panic(err)
		}
	}
	return float64(ops.Load()) / time.Since(start).Seconds()
}

func writeDurable(dir string, b []byte) error {
	return durable.WriteRaw(filepath.Join(dir, "f"), b)
}
