//go:build bench

package backupstore

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cairnstore/cairn/internal/testutil"
	"github.com/stretchr/testify/require"
)

// benchKey is the encryption key of the benchmark's Cairn store: restic
// always encrypts, so Cairn does too.
var benchKey = []byte("cairn-bench-key-0123456789abcdef")

// benchSize returns CAIRN_BENCH_BACKUP_SIZE (bytes, or with Ki/Mi/Gi), 2 GiB
// by default.
func benchSize(t *testing.T) int64 {
	s := os.Getenv("CAIRN_BENCH_BACKUP_SIZE")
	if s == "" {
		return 2 << 30
	}
	mult := int64(1)
	for suf, m := range map[string]int64{"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30} {
		if strings.HasSuffix(s, suf) {
			s, mult = strings.TrimSuffix(s, suf), m
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	require.NoError(t, err, "CAIRN_BENCH_BACKUP_SIZE")
	return n * mult
}

// writeDataset writes the benchmark image: "random" is incompressible;
// "mixed" is half zeros, a quarter text, a quarter random, in 1 MiB runs.
func writeDataset(t *testing.T, path, kind string, size int64) {
	f, err := os.Create(path)
	require.NoError(t, err)
	defer f.Close()
	r := rand.New(rand.NewPCG(uint64(len(kind)), 42))
	chunk := make([]byte, 1<<20)
	text := bytes.Repeat([]byte(loremText), len(chunk)/len(loremText)+1)[:len(chunk)]
	for off := int64(0); off < size; off += int64(len(chunk)) {
		p := chunk[:min(int64(len(chunk)), size-off)]
		switch {
		case kind == "random":
			fillRandom(r, p)
		default:
			switch k := r.IntN(4); k {
			case 0, 1:
				clear(p)
			case 2:
				copy(p, text)
				binary := []byte(fmt.Sprintf("%016x", off))
				for i := 0; i+len(binary) < len(p); i += 4096 {
					copy(p[i:], binary)
				}
			default:
				fillRandom(r, p)
			}
		}
		if kind != "random" && isZero(p) {
			continue // leave a hole: zero runs stay sparse
		}
		_, err := f.WriteAt(p, off)
		require.NoError(t, err)
	}
	require.NoError(t, f.Truncate(size))
}

// change1Percent rewrites 4 KiB in 1% of the 2 MiB blocks and returns the
// extents written (what a replica diff would report).
func change1Percent(t *testing.T, path string, size int64, seed uint64) []Extent {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	r := rand.New(rand.NewPCG(seed, 1))
	nblocks := int(size / DefaultBlockSize)
	n := max(1, nblocks/100)
	buf := make([]byte, 4096)
	var ext []Extent
	for _, b := range r.Perm(nblocks)[:n] {
		fillRandom(r, buf)
		off := int64(b)*DefaultBlockSize + int64(r.IntN(DefaultBlockSize/4096))*4096
		_, err := f.WriteAt(buf, off)
		require.NoError(t, err)
		ext = append(ext, Extent{Offset: off, Length: 4096})
	}
	require.NoError(t, f.Sync())
	return ext
}

type measured struct {
	secs   float64
	rssMiB float64
	cpu    float64 // user+system seconds of the process and of versitygw
}

// benchServer is the S3 server whose CPU time run adds to each command's.
var benchServer *testutil.S3Server

// run runs a command and returns its wall time and peak RSS.
func run(t *testing.T, env []string, name string, args ...string) measured {
	if name != "sync" {
		settle(t)
	}
	cmd := exec.Command(name, args...)
	cmd.Env = env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	srvCPU := 0.0
	if benchServer != nil {
		srvCPU = benchServer.CPUSeconds()
	}
	start := time.Now()
	err := cmd.Run()
	secs := time.Since(start).Seconds()
	require.NoError(t, err, "%s %s:\n%s", name, strings.Join(args, " "), out.String())
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
	if benchServer != nil {
		cpu += benchServer.CPUSeconds() - srvCPU
	}
	return measured{secs: secs, rssMiB: float64(ru.Maxrss) / 1024, cpu: cpu}
}

// settle flushes dirty pages so that one measurement does not pay for the
// previous one's writeback.
func settle(t *testing.T) {
	out, err := exec.Command("sync").CombinedOutput()
	require.NoError(t, err, string(out))
}

// cairnHelper runs this test binary as a separate Cairn backup/restore
// process so its time and peak RSS are measured like restic's.
func cairnHelper(t *testing.T, srv *testutil.S3Server, mode, url, file string, extra ...string) measured {
	env := append(srv.Env(), "CAIRN_BENCH_HELPER="+mode, "CAIRN_BENCH_URL="+url, "CAIRN_BENCH_FILE="+file,
		"CAIRN_BENCH_ENDPOINT="+srv.Endpoint)
	env = append(env, extra...)
	return run(t, env, os.Args[0], "-test.run=^TestBenchHelper$")
}

// TestBenchHelper is the Cairn side of the benchmark in its own process.
func TestBenchHelper(t *testing.T) {
	mode := os.Getenv("CAIRN_BENCH_HELPER")
	if mode == "" {
		t.Skip("helper process")
	}
	ctx := context.Background()
	o := Options{Key: benchKey}
	o.Endpoint = os.Getenv("CAIRN_BENCH_ENDPOINT")
	o.AccessKeyID, o.SecretAccessKey = os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY")
	s, err := Open(ctx, os.Getenv("CAIRN_BENCH_URL"), o)
	require.NoError(t, err)
	file := os.Getenv("CAIRN_BENCH_FILE")
	switch mode {
	case "backup":
		src, err := OpenFileSource(file)
		require.NoError(t, err)
		defer src.Close()
		bo := BackupOptions{Volume: "bench", Source: src}
		if p := os.Getenv("CAIRN_BENCH_EXTENTS"); p != "" {
			b, err := os.ReadFile(p)
			require.NoError(t, err)
			require.NoError(t, json.Unmarshal(b, &bo.Changed))
		}
		_, err = s.CreateBackup(ctx, bo)
		require.NoError(t, err)
	case "restore":
		info, err := s.Latest(ctx, "bench")
		require.NoError(t, err)
		sink, fresh, err := CreateFileSink(file, info.Size)
		require.NoError(t, err)
		defer sink.Close()
		_, err = s.Restore(ctx, RestoreOptions{Volume: "bench", Sink: sink, SinkZeroed: fresh})
		require.NoError(t, err)
		// No fsync here: the benchmark syncs both tools' output the same way.
	}
}

// countObjects counts objects and bytes under a directory of versitygw's
// posix backend.
func countObjects(t *testing.T, dir string) (n int, bytes int64) {
	require.NoError(t, filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			n++
			bytes += info.Size()
		}
		return err
	}))
	return
}

func sameFile(t *testing.T, a, b string) {
	out, err := exec.Command("cmp", a, b).CombinedOutput()
	require.NoError(t, err, "restored image differs: %s", out)
}

type stat []float64

func (s stat) String() string { return s.format("%.2f") }

func (s stat) format(f string) string {
	c := append([]float64(nil), s...)
	sort.Float64s(c)
	return fmt.Sprintf(f+" / "+f+" / "+f, c[0], c[len(c)/2], c[len(c)-1])
}

// TestBenchBackup compares Cairn's backup and restore with restic's against
// the same versitygw, on incompressible and mixed data.
func TestBenchBackup(t *testing.T) {
	restic := testutil.RequireTool(t, "restic")
	srv := testutil.StartS3(t)
	benchServer = srv
	defer func() { benchServer = nil }()
	size := benchSize(t)
	runs := 3
	if s := os.Getenv("CAIRN_BENCH_RUNS"); s != "" {
		runs, _ = strconv.Atoi(s)
	}
	dir := t.TempDir()
	gib := float64(size) / (1 << 30)
	renv := append(srv.Env(), "RESTIC_PASSWORD=bench", "RESTIC_CACHE_DIR="+filepath.Join(dir, "restic-cache"))

	// op collects one operation's measurements for both tools.
	type op struct {
		name                string
		cairn, restic       stat // wall seconds
		cairnRSS, resticRSS stat // peak RSS MiB
		cairnCPU, resticCPU stat // CPU seconds, client + versitygw
	}
	addC := func(o *op, m measured) {
		o.cairn, o.cairnRSS, o.cairnCPU = append(o.cairn, m.secs), append(o.cairnRSS, m.rssMiB), append(o.cairnCPU, m.cpu)
	}
	addR := func(o *op, m measured) {
		o.restic, o.resticRSS, o.resticCPU = append(o.restic, m.secs), append(o.resticRSS, m.rssMiB), append(o.resticCPU, m.cpu)
	}
	var rows []*op
	var notes []string
	for _, kind := range []string{"random", "mixed"} {
		img := filepath.Join(dir, kind+".img")
		full, rest, restSync := &op{name: kind + " full backup"}, &op{name: kind + " restore"}, &op{name: kind + " restore + fsync"}
		incDiff, incHash := &op{name: kind + " incr. 1% (replica diff)"}, &op{name: kind + " incr. 1% (no diff: hash)"}
		var incUp stat
		var objsC, objsR, bytesC, bytesR float64
		for i := 0; i < runs; i++ {
			writeDataset(t, img, kind, size)
			prefix := fmt.Sprintf("%s-%d", kind, i)
			cURL := srv.URL("cairn/" + prefix)
			rRepo := fmt.Sprintf("s3:%s/%s/restic/%s", srv.Endpoint, srv.Bucket, prefix)
			run(t, renv, restic, "-r", rRepo, "init", "--repository-version", "2")

			// Full backup.
			addC(full, cairnHelper(t, srv, "backup", cURL, img))
			addR(full, run(t, renv, restic, "-r", rRepo, "backup", "--host", "bench", img))
			n, b := countObjects(t, filepath.Join(srv.Dir, srv.Bucket, "cairn", prefix))
			objsC, bytesC = float64(n)/gib, float64(b)/float64(size)
			n, b = countObjects(t, filepath.Join(srv.Dir, srv.Bucket, "restic", prefix))
			objsR, bytesR = float64(n)/gib, float64(b)/float64(size)

			// Restore, then the same again including an fsync of the result.
			out := filepath.Join(dir, "restore-cairn.img")
			os.Remove(out)
			m := cairnHelper(t, srv, "restore", cURL, out)
			addC(rest, m)
			sync := run(t, renv, "sync", out)
			addC(restSync, measured{secs: m.secs + sync.secs, rssMiB: m.rssMiB, cpu: m.cpu + sync.cpu})
			sameFile(t, img, out)
			os.Remove(out)
			rdir := filepath.Join(dir, "restore-restic")
			os.RemoveAll(rdir)
			m = run(t, renv, restic, "-r", rRepo, "restore", "latest", "--target", rdir)
			addR(rest, m)
			sync = run(t, renv, "sync", filepath.Join(rdir, img))
			addR(restSync, measured{secs: m.secs + sync.secs, rssMiB: m.rssMiB, cpu: m.cpu + sync.cpu})
			sameFile(t, img, filepath.Join(rdir, img))
			os.RemoveAll(rdir)

			// Incremental after changing 1% of the blocks: with the replica
			// diff (the normal path) and without it (hash fallback); restic
			// rescans the file either way.
			ext := change1Percent(t, img, size, uint64(i+1))
			extFile := filepath.Join(dir, "extents.json")
			eb, _ := json.Marshal(ext)
			require.NoError(t, os.WriteFile(extFile, eb, 0o600))
			before, _ := countObjectsBytes(t, srv, "cairn/"+prefix)
			addC(incDiff, cairnHelper(t, srv, "backup", cURL, img, "CAIRN_BENCH_EXTENTS="+extFile))
			after, _ := countObjectsBytes(t, srv, "cairn/"+prefix)
			incUp = append(incUp, 100*float64(after-before)/float64(size))
			m = run(t, renv, restic, "-r", rRepo, "backup", "--host", "bench", img)
			addR(incDiff, m)
			change1Percent(t, img, size, uint64(100+i))
			addC(incHash, cairnHelper(t, srv, "backup", cURL, img))
			addR(incHash, run(t, renv, restic, "-r", rRepo, "backup", "--host", "bench", img))
		}
		rows = append(rows, full, rest, restSync, incDiff, incHash)
		notes = append(notes,
			fmt.Sprintf("%s: objects per GiB: cairn %.0f, restic %.0f; stored bytes / volume bytes: cairn %.3f, restic %.3f",
				kind, objsC, objsR, bytesC, bytesR),
			fmt.Sprintf("%s: incremental upload (diff path) %% of volume: %s; incremental/full time ratio (median): %.3f",
				kind, incUp.format("%.3f"), median(incDiff.cairn)/median(full.cairn)),
			fmt.Sprintf("%s: median speedup cairn vs restic: backup %.2fx wall, %.2fx CPU; restore %.2fx wall, %.2fx CPU",
				kind, median(full.restic)/median(full.cairn), median(full.resticCPU)/median(full.cairnCPU),
				median(rest.restic)/median(rest.cairn), median(rest.resticCPU)/median(rest.cairnCPU)),
			fmt.Sprintf("%s: targets: objects/GiB <= restic's %s; full backup >= 1.5x restic %s; restore >= 1.5x restic %s; incremental 1%% uploads <= 2%% %s",
				kind, met(objsC <= objsR), met(median(full.restic)/median(full.cairn) >= 1.5),
				met(median(rest.restic)/median(rest.cairn) >= 1.5), met(median(incUp) <= 2)),
		)
	}
	fmt.Printf("\nBackup benchmark: %.2f GiB per dataset, %d runs, same versitygw, Cairn zstd+AES-256-GCM in %d MiB packs vs restic %s (repo v2, compression auto)\n",
		gib, runs, DefaultPackSize>>20, resticVersion(restic))
	fmt.Printf("figures are min / median / max; CPU = user+system seconds of the tool's process plus versitygw's during the operation\n\n")
	f := "%-34s %-22s %-22s %-8s %-22s %-22s %-20s %-20s\n"
	fmt.Printf(f, "operation", "cairn wall s", "restic wall s", "speedup", "cairn CPU s", "restic CPU s", "cairn peak RSS MiB", "restic peak RSS MiB")
	for _, r := range rows {
		fmt.Printf(f, r.name, r.cairn, r.restic, fmt.Sprintf("%.2fx", median(r.restic)/median(r.cairn)),
			r.cairnCPU, r.resticCPU, r.cairnRSS.format("%.0f"), r.resticRSS.format("%.0f"))
	}
	fmt.Println()
	for _, n := range notes {
		fmt.Println(n)
	}
}

// met prints whether a target was met (the benchmark reports, it does
// not assert: timings on a shared machine are not test results).
func met(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT MET"
}

func median(s stat) float64 {
	c := append([]float64(nil), s...)
	sort.Float64s(c)
	return c[len(c)/2]
}

func countObjectsBytes(t *testing.T, srv *testutil.S3Server, prefix string) (int64, int) {
	n, b := countObjects(t, filepath.Join(srv.Dir, srv.Bucket, filepath.FromSlash(prefix)))
	return b, n
}

func resticVersion(bin string) string {
	out, _ := exec.Command(bin, "version").Output()
	f := strings.Fields(string(out))
	if len(f) > 1 {
		return f[1]
	}
	return "?"
}
