package replica

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
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
		if arg, ok := strings.CutPrefix(v, growCrashPrefix); ok {
			growCrashChild(arg)
		}
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

// crashStateError says why got is not a state a SIGKILL may leave behind.
// The child acknowledges iteration k only after its flush, and starts k+1
// only after the acknowledgement, so exactly one iteration is in flight. The
// contract allows the acknowledged state with any prefix of the in-flight
// ops applied, plus the next op torn: each 4 KiB block it touches is wholly
// as before it or wholly as after it. Anything else, an acknowledged write
// missing among it, is an error.
func crashStateError(got, acked []byte, inflight []crashOp) error {
	state := slices.Clone(acked)
	for j := 0; j <= len(inflight); j++ {
		after := state
		if j < len(inflight) {
			after = slices.Clone(state)
			applyOps(after, inflight[j:j+1])
		}
		if blockMismatch(got, state, after) < 0 {
			return nil
		}
		state = after
	}
	b := blockMismatch(got, acked, acked)
	i := b
	for got[i] == acked[i] {
		i++
	}
	return fmt.Errorf("block %d (byte %d is %d, acknowledged %d) matches no prefix of the %d in-flight ops, torn or whole",
		b/BlockSize, i, got[i], acked[i], len(inflight))
}

// blockMismatch is the offset of the first 4 KiB block of got equal to
// neither before nor after, or -1.
func blockMismatch(got, before, after []byte) int {
	for lo := 0; lo < len(got); lo += BlockSize {
		hi := min(lo+BlockSize, len(got))
		if !bytes.Equal(got[lo:hi], before[lo:hi]) && !bytes.Equal(got[lo:hi], after[lo:hi]) {
			return lo
		}
	}
	return -1
}

// TestCrashOracle checks crashStateError against hand-made states: it must
// accept every prefix and per-block tear of the in-flight ops and reject a
// dropped acknowledged write, ops applied out of order and a block torn
// inside itself.
func TestCrashOracle(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	randBytes := func(n int) []byte {
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(rng.Uint32()) | 1 // never equal to zeroes
		}
		return p
	}
	before := randBytes(crashSize)
	ackedOp := crashOp{off: 100 * BlockSize, data: randBytes(BlockSize), n: BlockSize}
	acked := slices.Clone(before)
	applyOps(acked, []crashOp{ackedOp})
	inflight := []crashOp{
		{off: 10*BlockSize + 7, data: randBytes(2 * BlockSize), n: 2 * BlockSize},
		{off: 20 * BlockSize, n: 3 * BlockSize}, // zeroes
		{snap: true},
		{off: 30*BlockSize + 100, data: randBytes(3 * BlockSize), n: 3 * BlockSize},
		{off: 10 * BlockSize, data: randBytes(BlockSize), n: BlockSize}, // rewrites part of the first
	}
	with := func(ops ...crashOp) []byte {
		b := slices.Clone(acked)
		applyOps(b, ops)
		return b
	}
	torn := func(base []byte, op crashOp, blocks ...int) []byte {
		b := slices.Clone(base)
		whole := slices.Clone(base)
		applyOps(whole, []crashOp{op})
		for _, blk := range blocks {
			copy(b[blk*BlockSize:(blk+1)*BlockSize], whole[blk*BlockSize:])
		}
		return b
	}
	halfBlock := with(inflight[0])
	copy(halfBlock[11*BlockSize:11*BlockSize+100], acked[11*BlockSize:])
	for _, tc := range []struct {
		name string
		got  []byte
		ok   bool
	}{
		{"nothing in flight applied", with(), true},
		{"first op", with(inflight[0]), true},
		{"two ops", with(inflight[:2]...), true},
		{"all but the rewrite", with(inflight[:4]...), true},
		{"all ops", with(inflight...), true},
		{"first op torn", torn(acked, inflight[0], 11), true},
		{"last op torn", torn(with(inflight[:3]...), inflight[3], 30, 32), true},
		{"acknowledged write dropped", before, false},
		{"acknowledged write dropped, in-flight done", func() []byte { b := slices.Clone(before); applyOps(b, inflight); return b }(), false},
		{"second op without the first", with(inflight[1]), false},
		{"last op without the second", with(inflight[0], inflight[3]), false},
		{"block torn inside itself", halfBlock, false},
	} {
		err := crashStateError(tc.got, acked, inflight)
		if tc.ok {
			require.NoError(t, err, tc.name)
		} else {
			require.Error(t, err, tc.name)
		}
	}
}

// TestCrashSIGKILL kills a writer child at random points 50 times; every
// reopen must succeed and every write acknowledged by a flush must read
// back (the one unacknowledged iteration may be partly done: see
// crashStateError). The change tracking of the session started before the
// first child must survive every kill: each block that differs from the
// volume at its start, written in flight or not, lies in a region
// ChangedSince reports.
func TestCrashSIGKILL(t *testing.T) {
	dir := t.TempDir()
	r, err := Create(dir, crashSize)
	require.NoError(t, err)
	require.NoError(t, r.SetGeneration(1)) // a session starts: track it
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
		if err := crashStateError(got, want, crashOps(seed, last+1)); err != nil {
			t.Fatalf("round %d (acked %d): %v", round, last, err)
		}
		requireTracked(t, r, 1, got, make([]byte, crashSize))
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
