package replica

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// abandon simulates the process dying: every file is closed without a
// sync (its unsynced data stays in the page cache until crashSim drops
// it) and the directory lock is released.
func (r *Replica) abandon() {
	r.opMu.Lock()
	defer r.opMu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	r.spareRun.Wait()
	select {
	case l := <-r.spares:
		l.f.Close()
	default:
	}
	for _, l := range r.layers {
		l.f.Close()
	}
	r.ms.close()
	r.lockf.Close()
}

// TestPowerLossDropsUnsynced runs random operations, then "loses power":
// each block written since its file's last fdatasync independently keeps
// its new content or goes back to its content at that sync (crashSim).
// Every reopen must succeed, every block must read as of the last flush
// (or snapshot, which syncs) or as its latest write, and every snapshot
// must read exactly as when it was taken.
func TestPowerLossDropsUnsynced(t *testing.T) {
	const size = 256 * BlockSize
	crashSim = newUnsyncedLog()
	defer func() { crashSim = nil }()
	dir := t.TempDir()
	r, err := Create(dir, size)
	require.NoError(t, err)
	rng := rand.New(rand.NewPCG(41, 42))
	model := make([]byte, size)   // what the head reads now
	flushed := make([]byte, size) // what it read at the last sync point
	snaps := map[string][]byte{}
	var order []string
	seq, dropped := 0, 0
	for round := 0; round < 40; round++ {
		for i := 0; i < 10+rng.IntN(40); i++ {
			switch op := rng.IntN(100); {
			case op < 55:
				off := rng.Int64N(size)
				n := min(size-off, 1+rng.Int64N(3*BlockSize))
				if rng.IntN(2) == 0 {
					off &^= BlockSize - 1
					n = min(size-off, BlockSize*(1+rng.Int64N(4)))
				}
				p := make([]byte, n)
				for k := range p {
					p[k] = byte(rng.IntN(255) + 1)
				}
				_, err := r.WriteAt(p, off)
				require.NoError(t, err)
				copy(model[off:], p)
			case op < 62:
				off := rng.Int64N(size)
				n := min(size-off, rng.Int64N(6*BlockSize))
				require.NoError(t, r.WriteZeroes(off, n))
				clear(model[off : off+n])
			case op < 68:
				off := rng.Int64N(size)
				n := min(size-off, rng.Int64N(6*BlockSize))
				require.NoError(t, r.Trim(off, n))
				b0, b1 := (off+BlockSize-1)/BlockSize*BlockSize, (off+n)/BlockSize*BlockSize
				if b0 < b1 {
					clear(model[b0:b1])
				}
			case op < 80:
				require.NoError(t, r.Flush())
				copy(flushed, model)
			case op < 88:
				seq++
				name := fmt.Sprintf("s%d", seq)
				require.NoError(t, r.Snapshot(name, nil))
				snaps[name] = bytes.Clone(model)
				order = append(order, name)
				copy(flushed, model)
			case op < 95 && len(order) > 0:
				// the newest snapshot (merged down or copied up) or the oldest
				k := 0
				if rng.IntN(2) == 0 {
					k = len(order) - 1
				}
				require.NoError(t, r.RemoveSnapshot(order[k]))
				delete(snaps, order[k])
				order = append(order[:k], order[k+1:]...)
			case len(order) > 0:
				k := rng.IntN(len(order))
				require.NoError(t, r.Revert(order[k]))
				copy(model, snaps[order[k]])
				copy(flushed, model)
				for _, n := range order[k+1:] {
					delete(snaps, n)
				}
				order = order[:k+1]
			}
		}
		// power cut
		r.abandon()
		dropped += crashSim.drop(rng, 0.5)
		r, err = Open(dir)
		require.NoError(t, err, "round %d: open after power loss", round)
		got := readAll(t, r, size)
		for b := int64(0); b < size/BlockSize; b++ {
			g, f, m := got[b*BlockSize:(b+1)*BlockSize], flushed[b*BlockSize:(b+1)*BlockSize], model[b*BlockSize:(b+1)*BlockSize]
			if !bytes.Equal(g, f) && !bytes.Equal(g, m) {
				t.Fatalf("round %d: block %d reads neither its flushed nor its latest content", round, b)
			}
		}
		require.Equal(t, fmt.Sprint(order), fmt.Sprint(snapNames(r)), "round %d: snapshot chain", round)
		for _, name := range order {
			sr, err := r.OpenSnapshot(name)
			require.NoError(t, err)
			requireSame(t, snaps[name], readAll(t, sr, size), fmt.Sprintf("round %d: snapshot %s", round, name))
			sr.Close()
		}
		copy(model, got)
		copy(flushed, got)
	}
	require.NoError(t, r.Close())
	require.Positive(t, dropped, "the simulation dropped some unsynced blocks")
	t.Logf("dropped %d unsynced blocks over 40 power cuts", dropped)
}
