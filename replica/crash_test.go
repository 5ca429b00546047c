package replica

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const (
	crashEnv  = "CAIRN_REPLICA_CRASH_CHILD"
	crashSize = 1 << 20
)

func TestMain(m *testing.M) {
	if v := os.Getenv(crashEnv); v != "" {
		crashChild(v)
		return
	}
	os.Exit(m.Run())
}

type crashOp struct {
	off   int64
	data  []byte // nil: write zeroes of length n
	n     int64
	snap  bool
	unsnp bool
}

// crashOps is the deterministic work of iteration k of run seed; the child
// executes it and the parent replays it to know what must be on disk.
func crashOps(seed, k uint64) []crashOp {
	rng := rand.New(rand.NewPCG(seed, k))
	var ops []crashOp
	for i := 0; i < 1+rng.IntN(4); i++ {
		off := rng.Int64N(crashSize - 1)
		n := min(crashSize-off, 1+rng.Int64N(3*BlockSize))
		if rng.IntN(6) == 0 {
			ops = append(ops, crashOp{off: off, n: n})
			continue
		}
		p := make([]byte, n)
		for j := range p {
			p[j] = byte(rng.Uint32())
		}
		ops = append(ops, crashOp{off: off, data: p, n: n})
	}
	if k%5 == 0 {
		ops = append(ops, crashOp{snap: true})
	}
	if k%7 == 0 {
		ops = append(ops, crashOp{unsnp: true})
	}
	return ops
}

func applyOps(buf []byte, ops []crashOp) {
	for _, op := range ops {
		switch {
		case op.snap, op.unsnp:
		case op.data == nil:
			clear(buf[op.off : op.off+op.n])
		default:
			copy(buf[op.off:], op.data)
		}
	}
}

// crashChild opens the replica and loops: ops, flush, "ack k" on stdout.
func crashChild(arg string) {
	dir, seedS, _ := strings.Cut(arg, ",")
	seed, _ := strconv.ParseUint(seedS, 10, 64)
	r, err := Open(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		os.Exit(2)
	}
	for k := uint64(1); ; k++ {
		for _, op := range crashOps(seed, k) {
			switch {
			case op.snap:
				err = r.Snapshot(fmt.Sprintf("c%d-%d", seed, k), nil)
			case op.unsnp:
				if s := r.Snapshots(); len(s) > 2 && k%14 == 0 {
					err = r.RemoveSnapshot(s[len(s)-1].Name) // may merge the head down
				} else if len(s) > 2 {
					err = r.RemoveSnapshot(s[0].Name)
				}
			case op.data == nil:
				err = r.WriteZeroes(op.off, op.n)
			default:
				_, err = r.WriteAt(op.data, op.off)
			}
			if err != nil {
				fmt.Fprintln(os.Stderr, "child op:", err)
				os.Exit(3)
			}
		}
		if err := r.Flush(); err != nil {
			fmt.Fprintln(os.Stderr, "child flush:", err)
			os.Exit(4)
		}
		os.Stdout.WriteString("ack " + strconv.FormatUint(k, 10) + "\n")
	}
}

// TestCrashSIGKILL kills a writer child at random points 50 times; every
// reopen must succeed and every write acknowledged by a flush must read
// back (bytes of the one unacknowledged iteration may be old or new).
func TestCrashSIGKILL(t *testing.T) {
	dir := t.TempDir()
	r, err := Create(dir, crashSize)
	require.NoError(t, err)
	require.NoError(t, r.Close())
	base := make([]byte, crashSize)
	rng := rand.New(rand.NewPCG(5, 5))
	kills := 50
	for round := 1; round <= kills; round++ {
		seed := uint64(round)
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%d", crashEnv, dir, seed))
		out, err := cmd.StdoutPipe()
		require.NoError(t, err)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		require.NoError(t, cmd.Start())
		acks := make(chan uint64, 1)
		go func() {
			var last uint64
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if v, ok := strings.CutPrefix(sc.Text(), "ack "); ok {
					last, _ = strconv.ParseUint(v, 10, 64)
				}
			}
			acks <- last
		}()
		time.Sleep(time.Duration(20+rng.IntN(80)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		last := <-acks
		werr := cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("round %d: child exited on its own: %v: %s", round, werr, stderr.String())
		}
		r, err := Open(dir)
		require.NoError(t, err, "round %d: reopen after SIGKILL", round)
		got := readAll(t, r, crashSize)
		want := base
		for k := uint64(1); k <= last; k++ {
			applyOps(want, crashOps(seed, k))
		}
		next := append([]byte(nil), want...)
		applyOps(next, crashOps(seed, last+1))
		for i := range got {
			if got[i] != want[i] && got[i] != next[i] {
				t.Fatalf("round %d (acked %d): byte %d is %d, want %d (acked) or %d (in flight)", round, last, i, got[i], want[i], next[i])
			}
		}
		for _, s := range r.Snapshots() {
			sr, err := r.OpenSnapshot(s.Name)
			require.NoError(t, err)
			readAll(t, sr, crashSize)
			sr.Close()
		}
		require.NoError(t, r.Close())
		base = got
		if last == 0 {
			t.Logf("round %d: killed before the first ack", round)
		}
	}
}
