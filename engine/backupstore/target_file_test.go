package backupstore

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cairnstore/cairn/internal/testutil"
)

// TestFileTargetFull: a put that does not fit in the file system fails
// with ErrTargetFull and leaves no file (not even its temporary one);
// what fits still goes in.
func TestFileTargetFull(t *testing.T) {
	if os.Geteuid() != 0 {
		if testutil.OnCI() {
			t.Fatal("needs root (mounts a small tmpfs)")
		}
		t.Skip("needs root (mounts a small tmpfs)")
	}
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", dir).CombinedOutput()
	require.NoError(t, err, "%s", out)
	t.Cleanup(func() { _ = exec.Command("umount", dir).Run() })
	ctx := context.Background()
	tg, err := OpenTarget(ctx, "file://"+dir, TargetOptions{})
	require.NoError(t, err)
	require.NoError(t, tg.Put(ctx, "blocks/aa/small", make([]byte, 4096)))
	err = tg.Put(ctx, "blocks/bb/big", make([]byte, 1<<20))
	require.ErrorIs(t, err, ErrTargetFull)
	require.Contains(t, err.Error(), "blocks/bb/big")
	var keys []string
	require.NoError(t, tg.List(ctx, "", func(o ObjectInfo) error { keys = append(keys, o.Key); return nil }))
	require.Equal(t, []string{"blocks/aa/small"}, keys)
	entries, err := os.ReadDir(dir + "/blocks/bb")
	require.NoError(t, err)
	for _, e := range entries {
		require.False(t, strings.HasPrefix(e.Name(), tmpPrefix), "temporary file %s left", e.Name())
	}
}
