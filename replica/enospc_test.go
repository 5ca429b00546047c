package replica

import (
	"bytes"
	"os/exec"
	"syscall"
	"testing"

	"github.com/cairnstore/cairn/internal/testutil"
	"github.com/stretchr/testify/require"
)

var errNoSpaceSys = syscall.ENOSPC

// TestENOSPC fills a small tmpfs: writes fail with ErrNoSpace, the
// metadata stays intact, and writes succeed again once space is freed.
func TestENOSPC(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	const size = 16 << 20 // larger than the filesystem
	r, err := Create(dir+"/r", size)
	require.NoError(t, err)
	defer r.Close()
	_, err = r.WriteAt(bytes.Repeat([]byte{1}, 1<<20), 0)
	require.NoError(t, err)
	require.NoError(t, r.Snapshot("a", nil))
	var werr error
	chunk := bytes.Repeat([]byte{2}, 1<<20)
	for off := int64(1 << 20); off < size && werr == nil; off += 1 << 20 {
		_, werr = r.WriteAt(chunk, off)
	}
	require.ErrorIs(t, werr, ErrNoSpace)
	// metadata ops fail cleanly or succeed (a metadata commit overwrites
	// blocks replica.meta owns and the next head file is pre-created, so
	// a snapshot needs no free space); never corrupt
	if err := r.Snapshot("b", nil); err == nil {
		// the data is frozen in b now: dropping b frees it
		require.NoError(t, r.Revert("a"))
	}
	// free space: trim everything written in the head
	require.NoError(t, r.Trim(1<<20, size-(1<<20)))
	_, err = r.WriteAt(chunk, 2<<20)
	require.NoError(t, err)
	require.NoError(t, r.Flush())
	r = reopen(t, r)
	got := make([]byte, 1<<20)
	_, err = r.ReadAt(got, 0)
	require.NoError(t, err)
	require.Equal(t, bytes.Repeat([]byte{1}, 1<<20), got)
	_, err = r.ReadAt(got, 2<<20)
	require.NoError(t, err)
	require.Equal(t, chunk, got)
}
