//go:build bench

package daemon

import (
	"fmt"
	"strconv"
	"testing"

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
		name string
		args []string
		pids []int
	}
	var targets []target
	for _, tlsOn := range []bool{true, false} {
		name, env := "3 replicas TCP, TLS", []string(nil)
		if !tlsOn {
			name, env = "3 replicas TCP, plaintext", []string{"CAIRN_TEST_PLAINTEXT_TCP=1"}
		}
		// This process dials the replicas to see them ready: same policy.
		netx.SetPlaintextTCP(!tlsOn)
		rs := startReplicasOn(t, 3, size, true, env...)
		o := nbdOptions(t, size, rs)
		o.RebuildInterval = 0
		e := startEngine(t, o, env...)
		netx.SetPlaintextTCP(false)
		pids := []int{e.cmd.Process.Pid}
		for _, r := range rs {
			pids = append(pids, r.cmd.Process.Pid)
		}
		targets = append(targets, target{name, []string{"--ioengine=nbd", "--uri=nbd+unix:///vol1?socket=" + e.nbdSock}, pids})
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
				before := cpuTime(t, tg.pids)
				res := fioRun(t, append(args, tg.args...)...)
				cpu := cpuTime(t, tg.pids) - before
				iops[tg.name], bws[tg.name] = append(iops[tg.name], res.iops), append(bws[tg.name], res.bw)
				cpus[tg.name] = append(cpus[tg.name], float64(cpu.Microseconds())/float64(res.ios))
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
