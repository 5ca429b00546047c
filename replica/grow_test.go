package replica

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

const (
	growOld = 16 * BlockSize
	growNew = 40 * BlockSize
)

// growSetup writes a pattern over the whole old size, takes snapshot
// "pre" and grows the replica; it returns the volume's expected content.
func growSetup(t *testing.T, r *Replica) []byte {
	t.Helper()
	want := make([]byte, growNew)
	copy(want, bytes.Repeat([]byte{1}, growOld))
	_, err := r.WriteAt(want[:growOld], 0)
	require.NoError(t, err)
	require.NoError(t, r.Snapshot("pre", nil))
	require.NoError(t, r.Grow(growNew))
	return want
}

func TestGrowArguments(t *testing.T) {
	r := newTestReplica(t, growOld)
	require.ErrorIs(t, r.Grow(growOld-BlockSize), ErrShrink)
	require.ErrorIs(t, r.Grow(growOld+100), ErrInvalid)
	require.ErrorIs(t, r.Grow(0), ErrInvalid)
	require.NoError(t, r.Grow(growOld), "same size is a no-op")
	require.Equal(t, int64(growOld), r.Size())
}

// TestGrowWritePastOldEnd writes across and past the old end (unaligned,
// so the edge block is read-modify-written), trims past it, and reads it
// all back, also after a reopen.
func TestGrowWritePastOldEnd(t *testing.T) {
	r := newTestReplica(t, growOld)
	_, err := r.WriteAt([]byte{9}, growOld)
	require.ErrorIs(t, err, ErrOutOfRange, "before the grow")
	want := growSetup(t, r)
	require.Equal(t, int64(growNew), r.Size())
	requireSame(t, want, readAll(t, r, growNew), "after grow")

	p := bytes.Repeat([]byte{2}, 3*BlockSize)
	_, err = r.WriteAt(p, growOld-100)
	require.NoError(t, err)
	copy(want[growOld-100:], p)
	_, err = r.WriteAt([]byte{3, 3, 3}, growNew-3)
	require.NoError(t, err)
	copy(want[growNew-3:], []byte{3, 3, 3})
	require.NoError(t, r.Trim(growOld+BlockSize, BlockSize))
	clear(want[growOld+BlockSize : growOld+2*BlockSize])
	require.NoError(t, r.WriteZeroes(growOld-BlockSize, 2))
	clear(want[growOld-BlockSize : growOld-BlockSize+2])
	requireSame(t, want, readAll(t, r, growNew), "after writes past the old end")
	_, err = r.WriteAt([]byte{1}, growNew)
	require.ErrorIs(t, err, ErrOutOfRange)

	r = reopen(t, r)
	require.Equal(t, int64(growNew), r.Size())
	requireSame(t, want, readAll(t, r, growNew), "after reopen")
}

// TestGrowSnapshots checks snapshots taken before and after a grow: each
// keeps its size and content, Diff covers the new range, a stored
// checksum still verifies, and a revert past the grow keeps the size.
func TestGrowSnapshots(t *testing.T) {
	r := newTestReplica(t, growOld)
	_, err := r.WriteAt(bytes.Repeat([]byte{1}, growOld), 0)
	require.NoError(t, err)
	require.NoError(t, r.Snapshot("pre", nil))
	preSum, err := r.Checksum("pre")
	require.NoError(t, err)
	require.NoError(t, r.Grow(growNew))
	_, err = r.WriteAt(bytes.Repeat([]byte{4}, BlockSize), growNew-BlockSize)
	require.NoError(t, err)
	require.NoError(t, r.Snapshot("post", nil))

	check := func(r *Replica) {
		t.Helper()
		s := r.Snapshots()
		require.Equal(t, int64(growOld), s[0].Size)
		require.Equal(t, int64(growNew), s[1].Size)
		pre, err := r.OpenSnapshot("pre")
		require.NoError(t, err)
		defer pre.Close()
		require.Equal(t, int64(growOld), pre.Size())
		requireSame(t, bytes.Repeat([]byte{1}, growOld), readAll(t, pre, growOld), "pre")
		post, err := r.OpenSnapshot("post")
		require.NoError(t, err)
		defer post.Close()
		got := readAll(t, post, growNew)
		requireSame(t, bytes.Repeat([]byte{4}, BlockSize), got[growNew-BlockSize:], "post, new range")
		require.Equal(t, make([]byte, growNew-growOld-BlockSize), got[growOld:growNew-BlockSize])
		d, err := r.Diff("pre", "post")
		require.NoError(t, err)
		require.Equal(t, []Extent{{Offset: growNew - BlockSize, Length: BlockSize}}, d)
		d, err = r.Diff("", "pre")
		require.NoError(t, err)
		require.Equal(t, []Extent{{Offset: 0, Length: growOld}}, d)
		rep, err := r.Scrub()
		require.NoError(t, err)
		require.Contains(t, rep.Verified, "pre")
		sum, err := r.Checksum("pre")
		require.NoError(t, err)
		require.Equal(t, preSum, sum)
	}
	check(r)
	r = reopen(t, r)
	check(r)

	require.NoError(t, r.Revert("pre"))
	require.Equal(t, int64(growNew), r.Size(), "a revert does not shrink")
	want := make([]byte, growNew)
	copy(want, bytes.Repeat([]byte{1}, growOld))
	requireSame(t, want, readAll(t, r, growNew), "reverted to pre")
}

// TestGrowChangedSince: a write past the old end after the grow is
// tracked, so a replica that missed it can catch up.
func TestGrowChangedSince(t *testing.T) {
	r := newTestReplica(t, growOld)
	require.NoError(t, r.SetGeneration(1))
	require.NoError(t, r.Grow(growNew))
	_, err := r.WriteAt([]byte{5}, growNew-1)
	require.NoError(t, err)
	ext, err := r.ChangedSince(1, 0, growNew)
	require.NoError(t, err)
	require.Equal(t, []Extent{{Offset: 128 << 10, Length: growNew - 128<<10}}, ext, "the 64 KiB region, clipped")
}

// TestGrowRemote grows over the protocol (shrink refused with the
// sentinel), then rebuilds a replica grown from the old size from it.
func TestGrowRemote(t *testing.T) {
	ctx := context.Background()
	src := newTestReplica(t, growOld)
	want := growSetup(t, src)
	c := dialTest(t, startServer(t, src))
	require.ErrorIs(t, c.Grow(ctx, growOld), ErrShrink)
	require.NoError(t, c.Grow(ctx, growNew))
	p := bytes.Repeat([]byte{7}, 2*BlockSize)
	_, err := c.WriteAt(ctx, p, growNew-2*BlockSize)
	require.NoError(t, err)
	copy(want[growNew-2*BlockSize:], p)

	dst := newTestReplica(t, growOld)
	dc := dialTest(t, startServer(t, dst))
	require.NoError(t, dc.Grow(ctx, growNew))
	rebuild(t, c, dc, func() {})
	requireSame(t, want, readAll(t, dst, growNew), "rebuilt replica")
	require.Equal(t, int64(growOld), dst.Snapshots()[0].Size, "received snapshot keeps its size")
}

// TestGrowMetaFailure: a failed metadata commit leaves the old size in
// use and on disk; the grow can be retried.
func TestGrowMetaFailure(t *testing.T) {
	r := newTestReplica(t, growOld)
	testHook = func(p string) error {
		if p == "meta" {
			return fmt.Errorf("injected: %w", errNoSpaceSys)
		}
		return nil
	}
	err := r.Grow(growNew)
	testHook = nil
	require.ErrorIs(t, err, ErrNoSpace)
	require.Equal(t, int64(growOld), r.Size())
	_, err = r.WriteAt([]byte{1}, growOld)
	require.ErrorIs(t, err, ErrOutOfRange)
	r = reopen(t, r)
	require.Equal(t, int64(growOld), r.Size())
	require.NoError(t, r.Grow(growNew))
	_, err = r.WriteAt([]byte{1}, growOld)
	require.NoError(t, err)
}

const growCrashPrefix = "grow:"

// growCrashChild grows the replica in dir and exits (as if killed) at the
// nth call of fault point point: "meta" is before the commit, "grow" n=1
// after it, n=2 after the first layer file was extended.
func growCrashChild(arg string) {
	parts := strings.Split(arg, ",")
	dir, point := parts[0], parts[1]
	n, _ := strconv.Atoi(parts[2])
	r, err := Open(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		os.Exit(2)
	}
	calls := 0
	testHook = func(p string) error {
		if p == point {
			if calls++; calls == n {
				os.Exit(9)
			}
		}
		return nil
	}
	err = r.Grow(growNew)
	fmt.Fprintln(os.Stderr, "child grow returned:", err)
	os.Exit(3)
}

// TestGrowCrash kills a process during Grow at each fault point: the
// replica reopens with either the old or the new size, never broken, and
// with its data and snapshot intact.
func TestGrowCrash(t *testing.T) {
	for _, tc := range []struct {
		point string
		n     int
		size  int64
	}{
		{"meta", 1, growOld},
		{"grow", 1, growNew},
		{"grow", 2, growNew},
	} {
		t.Run(fmt.Sprintf("%s-%d", tc.point, tc.n), func(t *testing.T) {
			r := newTestReplica(t, growOld)
			data := bytes.Repeat([]byte{6}, growOld)
			_, err := r.WriteAt(data, 0)
			require.NoError(t, err)
			require.NoError(t, r.Snapshot("s", nil))
			dir := r.Dir()
			require.NoError(t, r.Close())

			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s%s,%s,%d", crashEnv, growCrashPrefix, dir, tc.point, tc.n))
			out, err := cmd.CombinedOutput()
			ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
			require.True(t, ok && ws.ExitStatus() == 9, "child: %v: %s", err, out)

			r, err = Open(dir)
			require.NoError(t, err)
			t.Cleanup(func() { r.Close() })
			require.Equal(t, tc.size, r.Size())
			want := make([]byte, tc.size)
			copy(want, data)
			requireSame(t, want, readAll(t, r, tc.size), "after crash")
			require.Equal(t, int64(growOld), r.Snapshots()[0].Size)
			require.NoError(t, r.Grow(growNew))
			_, err = r.WriteAt([]byte{8}, growNew-1)
			require.NoError(t, err)
			r = reopen(t, r)
			require.Equal(t, int64(growNew), r.Size())
		})
	}
}
