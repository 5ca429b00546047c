//go:build bench

package daemon

import (
	"crypto/aes"
	"crypto/cipher"
	"fmt"
	"slices"
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
		rs := startReplicasOn(t, benchReplicas, size, true, env...)
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
		printCipherFloor(w, summarize(cpus[targets[1].name]).med)
	}
}

// benchReplicas is the replica count of TestBenchEngineTLS's volumes.
const benchReplicas = 3

// printCipherFloor prints what the cipher alone must add to a request of
// workload w, from AES-128-GCM's speed on this machine measured now (the
// suite TLS 1.3 negotiates here): the engine seals the payload once per
// replica connection and every replica opens it, 2 x replicas passes. As
// a share of the plaintext CPU per request (plainCPU, µs, engine and
// replicas), it bounds the IOPS ratio a CPU-bound run can reach with
// per-connection TLS, whatever the rest of the TLS path costs.
func printCipherFloor(w workload, plainCPU float64) {
	size := 4 << 10
	if slices.Contains(w.args, "--bs=1m") {
		size = 1 << 20
	}
	gbps := aesGCMSpeed()
	floor := float64(2*benchReplicas*size) / gbps / 1e3 // µs
	fmt.Printf("%-18s cipher floor: AES-128-GCM %.2f GB/s on one core -> %.1f µs per request (%d passes)"+
		" = %.0f%% of plaintext CPU; IOPS ratio bound %.2fx\n",
		w.name, gbps, floor, 2*benchReplicas, 100*floor/plainCPU, plainCPU/(plainCPU+floor))
}

// aesGCMSpeed measures sealing 16 KiB TLS records with AES-128-GCM, in
// GB/s.
func aesGCMSpeed() float64 {
	block, err := aes.NewCipher(make([]byte, 16))
	if err != nil {
		panic(err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		panic(err)
	}
	rec := make([]byte, 16<<10)
	out := make([]byte, 0, len(rec)+gcm.Overhead())
	nonce := make([]byte, gcm.NonceSize())
	r := testing.Benchmark(func(b *testing.B) {
		b.SetBytes(int64(len(rec)))
		for b.Loop() {
			out = gcm.Seal(out[:0], nonce, rec, nil)
		}
	})
	return float64(r.Bytes) * float64(r.N) / float64(r.T.Nanoseconds())
}
