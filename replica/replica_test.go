package replica

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func newTestReplica(t testing.TB, size int64) *Replica {
	t.Helper()
	r, err := Create(t.TempDir(), size)
	require.NoError(t, err)
	t.Cleanup(func() { r.Close() })
	return r
}

func reopen(t testing.TB, r *Replica) *Replica {
	t.Helper()
	dir := r.Dir()
	require.NoError(t, r.Close())
	r2, err := Open(dir)
	require.NoError(t, err)
	t.Cleanup(func() { r2.Close() })
	return r2
}

func readAll(t testing.TB, r interface {
	ReadAt([]byte, int64) (int, error)
}, size int64) []byte {
	t.Helper()
	buf := make([]byte, size)
	_, err := r.ReadAt(buf, 0)
	require.NoError(t, err)
	return buf
}

func requireSame(t testing.TB, want, got []byte, what string) {
	t.Helper()
	if !bytes.Equal(want, got) {
		for i := range want {
			if want[i] != got[i] {
				t.Fatalf("%s: first difference at byte %d (block %d): want %d got %d", what, i, i/BlockSize, want[i], got[i])
			}
		}
	}
}

// TestModel runs random operations against a Replica and a plain byte
// slice (plus one copy per snapshot) and checks every read, every
// snapshot's content and the state after reopen.
func TestModel(t *testing.T) {
	const size = 1 << 20
	r := newTestReplica(t, size)
	model := make([]byte, size)
	snaps := map[string][]byte{}
	var order []string
	rng := rand.New(rand.NewPCG(7, 7))
	seq := 0
	for i := 0; i < 1500; i++ {
		switch op := rng.IntN(100); {
		case op < 50: // write, often unaligned
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
		case op < 60:
			off := rng.Int64N(size)
			n := min(size-off, rng.Int64N(6*BlockSize))
			if rng.IntN(2) == 0 {
				require.NoError(t, r.Trim(off, n))
				b0, b1 := (off+BlockSize-1)/BlockSize, (off+n)/BlockSize
				if b0 < b1 {
					clear(model[b0*BlockSize : b1*BlockSize])
				}
			} else {
				require.NoError(t, r.WriteZeroes(off, n))
				clear(model[off : off+n])
			}
		case op < 70:
			off := rng.Int64N(size)
			n := min(size-off, 1+rng.Int64N(5*BlockSize))
			got := make([]byte, n)
			_, err := r.ReadAt(got, off)
			require.NoError(t, err)
			requireSame(t, model[off:off+n], got, fmt.Sprintf("op %d read [%d,+%d)", i, off, n))
		case op < 78:
			seq++
			name := fmt.Sprintf("s%d", seq)
			require.NoError(t, r.Snapshot(name, map[string]string{"i": fmt.Sprint(i)}))
			snaps[name] = bytes.Clone(model)
			order = append(order, name)
		case op < 84 && len(order) > 0:
			k := rng.IntN(len(order))
			name := order[k]
			require.NoError(t, r.RemoveSnapshot(name))
			delete(snaps, name)
			order = append(order[:k], order[k+1:]...)
		case op < 86 && len(order) > 0:
			k := rng.IntN(len(order))
			name := order[k]
			require.NoError(t, r.Revert(name))
			copy(model, snaps[name])
			for _, n := range order[k+1:] {
				delete(snaps, n)
			}
			order = order[:k+1]
		case op < 90 && len(order) > 0:
			name := order[rng.IntN(len(order))]
			sr, err := r.OpenSnapshot(name)
			require.NoError(t, err)
			requireSame(t, snaps[name], readAll(t, sr, size), "snapshot "+name)
			require.NoError(t, sr.Close())
		case op < 93:
			r = reopen(t, r)
		case op < 96 && len(order) > 1:
			from := order[rng.IntN(len(order))]
			ext, err := r.Diff(from, "")
			require.NoError(t, err)
			// every byte that differs between from and head is covered
			checkDiffCovers(t, snaps[from], model, ext)
		default:
			require.NoError(t, r.Flush())
		}
	}
	requireSame(t, model, readAll(t, r, size), "final")
	r = reopen(t, r)
	requireSame(t, model, readAll(t, r, size), "final after reopen")
	var names []string
	for _, s := range r.Snapshots() {
		names = append(names, s.Name)
		sr, err := r.OpenSnapshot(s.Name)
		require.NoError(t, err)
		requireSame(t, snaps[s.Name], readAll(t, sr, size), "snapshot "+s.Name+" after reopen")
		sr.Close()
	}
	require.Equal(t, order, names)
}

func checkDiffCovers(t testing.TB, a, b []byte, ext []Extent) {
	t.Helper()
	covered := make([]bool, len(a))
	for _, e := range ext {
		require.Zero(t, e.Offset%BlockSize)
		require.Zero(t, e.Length%BlockSize)
		for k := e.Offset; k < e.End(); k++ {
			covered[k] = true
		}
	}
	for i := range a {
		if a[i] != b[i] && !covered[i] {
			t.Fatalf("byte %d differs but is not in diff %v", i, ext)
		}
	}
}

func TestDiffExact(t *testing.T) {
	r := newTestReplica(t, 64*BlockSize)
	w := func(b int64) {
		_, err := r.WriteAt(bytes.Repeat([]byte{1}, BlockSize), b*BlockSize)
		require.NoError(t, err)
	}
	w(1)
	w(2)
	require.NoError(t, r.Snapshot("a", nil))
	w(10)
	require.NoError(t, r.Snapshot("b", nil))
	w(20)
	w(21)
	ext := func(from, to string) []Extent {
		e, err := r.Diff(from, to)
		require.NoError(t, err)
		return e
	}
	B := int64(BlockSize)
	require.Equal(t, []Extent{{B, 2 * B}}, ext("", "a"))
	require.Equal(t, []Extent{{10 * B, B}}, ext("a", "b"))
	require.Equal(t, []Extent{{10 * B, B}, {20 * B, 2 * B}}, ext("a", ""))
	require.Equal(t, []Extent{{B, 2 * B}, {10 * B, B}, {20 * B, 2 * B}}, ext("", ""))
	require.Equal(t, []Extent{}, ext("b", "b"))
	_, err := r.Diff("b", "a")
	require.ErrorIs(t, err, ErrInvalid)
	_, err = r.Diff("nope", "")
	require.ErrorIs(t, err, ErrNotFound)
	// removing b keeps a..head diff identical
	require.NoError(t, r.RemoveSnapshot("b"))
	require.Equal(t, []Extent{{10 * B, B}, {20 * B, 2 * B}}, ext("a", ""))
}

// TestConcurrentPartialWrites: many goroutines write disjoint byte ranges
// inside the same blocks, whose old data lives in a snapshot layer, so
// every write needs read-modify-write. Nothing may be lost.
func TestConcurrentPartialWrites(t *testing.T) {
	const blocks = 8
	r := newTestReplica(t, blocks*BlockSize)
	base := bytes.Repeat([]byte{0xAA}, blocks*BlockSize)
	_, err := r.WriteAt(base, 0)
	require.NoError(t, err)
	require.NoError(t, r.Snapshot("base", nil))
	const writers = 16
	const piece = BlockSize / writers / 2 // leave gaps with old data
	var wg sync.WaitGroup
	for g := 0; g < writers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := 0; b < blocks; b++ {
				off := int64(b*BlockSize + g*2*piece)
				_, err := r.WriteAt(bytes.Repeat([]byte{byte(g + 1)}, piece), off)
				if err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	want := bytes.Clone(base)
	for g := 0; g < writers; g++ {
		for b := 0; b < blocks; b++ {
			off := b*BlockSize + g*2*piece
			copy(want[off:off+piece], bytes.Repeat([]byte{byte(g + 1)}, piece))
		}
	}
	requireSame(t, want, readAll(t, r, blocks*BlockSize), "after concurrent writes")
	r = reopen(t, r)
	requireSame(t, want, readAll(t, r, blocks*BlockSize), "after reopen")
}

func TestBadInputLocal(t *testing.T) {
	r := newTestReplica(t, 16*BlockSize)
	size := r.Size()
	_, err := r.WriteAt(make([]byte, 10), size-5)
	require.ErrorIs(t, err, ErrOutOfRange)
	_, err = r.ReadAt(make([]byte, 10), -1)
	require.ErrorIs(t, err, ErrOutOfRange)
	require.ErrorIs(t, r.Trim(0, size+1), ErrOutOfRange)
	require.ErrorIs(t, r.WriteZeroes(-5, 1), ErrOutOfRange)
	require.ErrorIs(t, r.Snapshot("", nil), ErrInvalid)
	require.ErrorIs(t, r.Snapshot("a/b", nil), ErrInvalid)
	require.NoError(t, r.Snapshot("a", nil))
	require.ErrorIs(t, r.Snapshot("a", nil), ErrExists)
	require.ErrorIs(t, r.Revert("zz"), ErrNotFound)
	require.ErrorIs(t, r.RemoveSnapshot("zz"), ErrNotFound)
	_, err = r.OpenSnapshot("zz")
	require.ErrorIs(t, err, ErrNotFound)
	require.ErrorIs(t, r.WriteLayer("a", make([]byte, BlockSize), 0), ErrReadOnly)
	_, err = Create(r.Dir(), BlockSize)
	require.Error(t, err) // locked / exists
	_, err = Create(t.TempDir(), 1000)
	require.ErrorIs(t, err, ErrInvalid)
	_, err = Open(r.Dir())
	require.ErrorContains(t, err, "in use")
	_, err = Open(t.TempDir())
	require.ErrorIs(t, err, ErrNotFound)
}

// TestOpenOrCreateSizes: an existing replica smaller than requested is
// grown, a larger one (grown since) keeps its size.
func TestOpenOrCreateSizes(t *testing.T) {
	dir := t.TempDir()
	r, err := OpenOrCreate(dir, 8*BlockSize)
	require.NoError(t, err)
	require.NoError(t, r.Close())
	r, err = OpenOrCreate(dir, 16*BlockSize)
	require.NoError(t, err)
	require.Equal(t, int64(16*BlockSize), r.Size())
	require.NoError(t, r.Close())
	r, err = OpenOrCreate(dir, 8*BlockSize)
	require.NoError(t, err)
	require.Equal(t, int64(16*BlockSize), r.Size())
	require.NoError(t, r.Close())
}

func TestGeneration(t *testing.T) {
	r := newTestReplica(t, 8*BlockSize)
	require.Zero(t, r.Generation())
	require.NoError(t, r.SetGeneration(5))
	require.NoError(t, r.SetGeneration(5))
	require.ErrorIs(t, r.SetGeneration(4), ErrStaleGeneration)
	r = reopen(t, r)
	require.EqualValues(t, 5, r.Generation())
	require.EqualValues(t, 5, r.Info().Generation)
}

// TestCorruptMetadata: a truncated, bit-flipped or unparsable metadata
// file, or a missing layer file, is refused with the file named.
func TestCorruptMetadata(t *testing.T) {
	mk := func(t *testing.T) (string, []byte) {
		r := newTestReplica(t, 8*BlockSize)
		_, err := r.WriteAt([]byte("hello"), 0)
		require.NoError(t, err)
		require.NoError(t, r.Snapshot("s1", nil))
		dir := r.Dir()
		require.NoError(t, r.Close())
		buf, err := os.ReadFile(filepath.Join(dir, metaName))
		require.NoError(t, err)
		return dir, buf
	}
	cases := map[string]func(dir string, buf []byte){
		"truncated": func(dir string, buf []byte) {
			os.WriteFile(filepath.Join(dir, metaName), buf[:len(buf)/2], 0o640)
		},
		"empty": func(dir string, buf []byte) {
			os.WriteFile(filepath.Join(dir, metaName), nil, 0o640)
		},
		"bitflip in both copies": func(dir string, buf []byte) {
			buf[100] ^= 0x10
			buf[len(buf)/2+100] ^= 0x10
			os.WriteFile(filepath.Join(dir, metaName), buf, 0o640)
		},
		"not two slots": func(dir string, buf []byte) {
			os.WriteFile(filepath.Join(dir, metaName), append(buf, 0), 0o640)
		},
		"missing layer": func(dir string, buf []byte) {
			m, _, _, err := parseMeta("x", buf)
			require.NoError(t, err)
			os.Remove(filepath.Join(dir, m.Layers[0].fileName()))
		},
	}
	for name, corrupt := range cases {
		t.Run(name, func(t *testing.T) {
			dir, buf := mk(t)
			corrupt(dir, buf)
			_, err := Open(dir)
			require.ErrorIs(t, err, ErrCorrupt)
			require.Contains(t, err.Error(), dir)
		})
	}
	// one damaged copy: the other serves, Scrub reports the damage and
	// the next commit repairs it
	for _, slot := range []int{0, 1} {
		t.Run(fmt.Sprintf("bitflip in copy %d", slot), func(t *testing.T) {
			dir, buf := mk(t)
			buf[slot*len(buf)/2+100] ^= 0x10
			require.NoError(t, os.WriteFile(filepath.Join(dir, metaName), buf, 0o640))
			r, err := Open(dir)
			require.NoError(t, err)
			defer r.Close()
			require.Equal(t, []string{"s1"}, snapNames(r))
			got := make([]byte, 5)
			_, err = r.ReadAt(got, 0)
			require.NoError(t, err)
			require.Equal(t, "hello", string(got))
			_, err = r.Scrub()
			require.ErrorIs(t, err, ErrCorrupt)
			require.Contains(t, err.Error(), fmt.Sprintf("slot %d", slot))
			require.NoError(t, r.SetGeneration(1))
			_, err = r.Scrub()
			require.NoError(t, err)
		})
	}
	// a file written by an earlier version (one frame) opens and is
	// converted to two copies by the next commit
	t.Run("single frame", func(t *testing.T) {
		dir, buf := mk(t)
		m, _, _, err := parseMeta("x", buf)
		require.NoError(t, err)
		m.SlotSize = 0
		require.NoError(t, os.WriteFile(filepath.Join(dir, metaName), m.encode(), 0o640))
		r, err := Open(dir)
		require.NoError(t, err)
		defer r.Close()
		require.Equal(t, []string{"s1"}, snapNames(r))
		require.NoError(t, r.SetGeneration(2))
		st, err := os.Stat(filepath.Join(dir, metaName))
		require.NoError(t, err)
		require.EqualValues(t, 2*metaSlotMin, st.Size())
		r = reopen(t, r)
		require.EqualValues(t, 2, r.Generation())
	})
}

func TestChecksumAndScrub(t *testing.T) {
	r := newTestReplica(t, 64*BlockSize)
	_, err := r.WriteAt(bytes.Repeat([]byte{7}, 3*BlockSize), 5*BlockSize)
	require.NoError(t, err)
	require.NoError(t, r.Snapshot("a", nil))
	_, err = r.WriteAt(bytes.Repeat([]byte{8}, BlockSize), 40*BlockSize)
	require.NoError(t, err)
	require.NoError(t, r.Snapshot("b", nil))

	rep, err := r.Scrub()
	require.NoError(t, err)
	require.Equal(t, []string{"a", "b"}, rep.Sealed)
	rep, err = r.Scrub()
	require.NoError(t, err)
	require.Equal(t, []string{"a", "b"}, rep.Verified)
	sum, err := r.Checksum("a")
	require.NoError(t, err)
	require.Equal(t, r.Snapshots()[0].Checksum, sum)

	// flip one byte of snapshot a's data behind the replica's back
	path := r.layers[0].path
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte{9}, 6*BlockSize+100)
	require.NoError(t, err)
	f.Close()
	rep, err = r.Scrub()
	require.ErrorIs(t, err, ErrCorrupt)
	require.Equal(t, []string{"a"}, rep.Corrupt)
	require.Equal(t, []string{"b"}, rep.Verified)
	// checksum persists across reopen
	r = reopen(t, r)
	require.NotEmpty(t, r.Snapshots()[1].Checksum)
}

func TestSnapshotReaderSurvivesRemove(t *testing.T) {
	const size = 32 * BlockSize
	r := newTestReplica(t, size)
	_, err := r.WriteAt(bytes.Repeat([]byte{1}, size), 0)
	require.NoError(t, err)
	require.NoError(t, r.Snapshot("a", nil))
	_, err = r.WriteAt(bytes.Repeat([]byte{2}, BlockSize), 0)
	require.NoError(t, err)
	require.NoError(t, r.Snapshot("b", nil))
	want := readAll(t, r, size)
	sr, err := r.OpenSnapshot("b")
	require.NoError(t, err)
	defer sr.Close()
	require.NoError(t, r.RemoveSnapshot("a"))
	require.NoError(t, r.RemoveSnapshot("b"))
	_, err = r.WriteAt(bytes.Repeat([]byte{3}, size), 0)
	require.NoError(t, err)
	requireSame(t, want, readAll(t, sr, size), "reader after removal")
	require.Empty(t, r.Snapshots())
}

func TestFaultHookKeepsMetadata(t *testing.T) {
	r := newTestReplica(t, 8*BlockSize)
	require.NoError(t, r.Snapshot("a", nil))
	testHook = func(p string) error {
		if p == "meta" {
			return fmt.Errorf("injected: %w", errNoSpaceSys)
		}
		return nil
	}
	defer func() { testHook = nil }()
	err := r.Snapshot("b", nil)
	require.ErrorIs(t, err, ErrNoSpace)
	require.ErrorIs(t, r.SetGeneration(3), ErrNoSpace)
	testHook = nil
	require.Len(t, r.Snapshots(), 1)
	r = reopen(t, r)
	require.Len(t, r.Snapshots(), 1)
	require.Zero(t, r.Generation())
	require.NoError(t, r.Snapshot("b", nil))
	r.spareRun.Wait() // at most one pre-created head file besides the chain
	ents, _ := os.ReadDir(r.Dir())
	n := 0
	for _, e := range ents {
		if filepath.Ext(e.Name()) == ".img" {
			n++
		}
	}
	require.Equal(t, 3+len(r.spares), n, "no orphan layer files")
}

var _ = errors.Is

// TestReadCached checks the server's inline read: cached data and holes
// read as ReadAt does, and data only on disk is never waited for.
func TestReadCached(t *testing.T) {
	r := newTestReplica(t, 1<<20)
	data := bytes.Repeat([]byte("cairn-rc"), 8192/8)
	_, err := r.WriteAt(data, 4096)
	require.NoError(t, err)

	got := make([]byte, 3*4096)
	require.NoError(t, r.ReadCached(got, 0))
	want := make([]byte, len(got))
	_, err = r.ReadAt(want, 0)
	require.NoError(t, err)
	require.Equal(t, want, got)
	require.Equal(t, data, got[4096:4096+len(data)])
	require.ErrorIs(t, r.ReadCached(got, 1<<20-4096), ErrOutOfRange)

	// Write back and drop the head's pages: the data is on disk only.
	// RWF_NOWAIT does not wait for the disk, but it does start the read,
	// and a fast disk can finish it before the kernel checks the page
	// again (CI saw that; so does `go test -count=30 -run TestReadCached`,
	// in about 1 run of 8, with mincore showing the pages evicted): then
	// the data comes back. Either way it is the data or errNotCached.
	require.NoError(t, r.Flush())
	head := r.layers[len(r.layers)-1]
	require.NoError(t, unix.Fadvise(head.fd, 0, 0, unix.FADV_DONTNEED))
	clear(got)
	if err := r.ReadCached(got, 4096); err != nil {
		require.ErrorIs(t, err, errNotCached)
	} else {
		require.Equal(t, data, got[:len(data)])
	}
	clear(got)
	_, err = r.ReadAt(got[:len(data)], 4096)
	require.NoError(t, err)
	require.Equal(t, data, got[:len(data)])
}
