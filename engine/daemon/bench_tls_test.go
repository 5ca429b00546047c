//go:build bench

package daemon

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cairnstore/cairn/internal/netx"
)

// TestBenchEngineTLS prints what encryption in transit costs: the same
// 3-replica volume setup over loopback TCP with TLS (the default) and with
// --tls=false, runs interleaved, fio's nbd engine on the engine's NBD
// socket. Beside IOPS it prints the CPU time the engine and replica
// processes spent per 1,000 requests.
func TestBenchEngineTLS(t *testing.T) {
	const size = 1 << 30
	secs, runs := benchSeconds(), benchRuns()
	type target struct {
		name  string
		args  []string
		procs []*proc
	}
	var targets []target
	for _, tlsOn := range []bool{true, false} {
		name, env := "3 replicas TCP, TLS", []string(nil)
		if !tlsOn {
			name, env = "3 replicas TCP, plaintext", []string{"CAIRN_TEST_PLAINTEXT_TCP=1"}
		}
		// This process dials the replicas to see them ready: same policy.
		netx.SetPlaintextTCP(!tlsOn)
		rs := startTCPReplicas(t, 3, size, env...)
		o := nbdOptions(t, size, rs)
		o.RebuildInterval = 0
		e := startEngine(t, o, env...)
		netx.SetPlaintextTCP(false)
		procs := []*proc{e.proc}
		for _, r := range rs {
			procs = append(procs, r.proc)
		}
		targets = append(targets, target{name, []string{"--ioengine=nbd", "--uri=nbd+unix:///vol1?socket=" + e.nbdSock}, procs})
	}
	for _, tg := range targets {
		fioRun(t, append([]string{"--name=fill", "--rw=write", "--bs=1m", "--iodepth=8", "--size=" + strconv.Itoa(size)}, tg.args...)...)
	}

	fmt.Printf("\nEncryption in transit: fio %ds per run, %d interleaved runs, 1 GiB preconditioned volume, 3 replica processes\n"+
		"  on loopback TCP, fio nbd engine -> engine (unix socket); min / median / max; CPU = engine + replicas, ms per 1,000 requests\n\n", secs, runs)
	fmt.Printf("%-18s %-28s %-24s %-22s %-22s %s\n", "workload", "target", "IOPS", "MiB/s", "CPU ms/1k req", "IOPS x plaintext (medians)")
	for _, w := range workloads {
		if w.read || !benchWanted("CAIRN_BENCH_WORKLOADS", w.name) {
			continue
		}
		iops, bws, cpus := map[string][]float64{}, map[string][]float64{}, map[string][]float64{}
		for r := 0; r < runs; r++ {
			for _, tg := range targets {
				args := append([]string{"--name=bench", "--size=" + strconv.Itoa(size), "--time_based",
					"--runtime=" + strconv.Itoa(secs), "--randrepeat=0", "--norandommap"}, w.args...)
				before := procsCPU(t, tg.procs)
				i, b := fioRun(t, append(args, tg.args...)...)
				cpu := procsCPU(t, tg.procs) - before
				iops[tg.name], bws[tg.name] = append(iops[tg.name], i), append(bws[tg.name], b)
				cpus[tg.name] = append(cpus[tg.name], cpu*1000/(i*float64(secs))*1000)
			}
		}
		plain := summarize(iops[targets[1].name]).med
		for _, tg := range targets {
			s, b := summarize(iops[tg.name]), summarize(bws[tg.name])
			mib := stats{b.min / (1 << 20), b.med / (1 << 20), b.max / (1 << 20)}
			c := summarize(cpus[tg.name])
			fmt.Printf("%-18s %-28s %-24s %-22s %-22s %.2fx\n", w.name, tg.name, s, mib,
				fmt.Sprintf("%.1f / %.1f / %.1f", c.min, c.med, c.max), s.med/plain)
		}
	}
}

// procsCPU is the CPU time, in seconds, the processes have used so far
// (user + system, from /proc/PID/stat).
func procsCPU(t *testing.T, ps []*proc) float64 {
	t.Helper()
	var ticks int64
	for _, p := range ps {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
		require.NoError(t, err)
		// Fields after the command name (which may hold spaces): state is
		// field 3, utime and stime are fields 14 and 15.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
		for _, s := range f[11:13] {
			n, err := strconv.ParseInt(s, 10, 64)
			require.NoError(t, err)
			ticks += n
		}
	}
	return float64(ticks) / 100 // USER_HZ
}
