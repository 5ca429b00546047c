package daemon

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/cairnstore/cairn/engine"
	"github.com/cairnstore/cairn/engine/control"
	"github.com/cairnstore/cairn/engine/fuse"
	"github.com/cairnstore/cairn/internal/testutil"
)

// TestFUSELoopGrowExt4Online grows a FUSE-served volume through the
// control API while ext4 is mounted on a loop device over it: after
// RefreshLoopCapacity the device has the new size, resize2fs grows the
// mounted file system, and data written before and after reads back.
func TestFUSELoopGrowExt4Online(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "mkfs.ext4")
	testutil.RequireTool(t, "resize2fs")
	testutil.RequireTool(t, "blockdev")
	testutil.RequireTool(t, "losetup")
	const size, grown = 64 << 20, 128 << 20
	rs := startReplicas(t, 2, size)
	mnt := filepath.Join(t.TempDir(), "fuse")
	o := Options{
		Volume: "vol1", Size: size, Replicas: replicaAddrs(rs), TokenFile: tokenFile(t),
		Frontend: "fuse", Mountpoint: mnt, Control: "unix:" + filepath.Join(sockDir(t), "ctl.sock"), IOTimeout: 5 * time.Second,
	}
	ready := make(chan struct{})
	o.Ready = func(*engine.Volume) { close(ready) }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, o) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("engine exited: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("engine not ready")
	}
	ctl := control.NewClient(o.Control, testToken)
	file := filepath.Join(mnt, "vol1")
	dev, err := fuse.AttachLoop(context.Background(), file)
	require.NoError(t, err)
	t.Cleanup(func() { _ = fuse.DetachLoop(context.Background(), dev, file) })
	sh(t, "mkfs.ext4", "-q", "-F", dev)
	fsDir := filepath.Join(t.TempDir(), "ext4")
	require.NoError(t, os.MkdirAll(fsDir, 0o755))
	sh(t, "mount", "-t", "ext4", dev, fsDir)
	t.Cleanup(func() { _ = unix.Unmount(fsDir, 0); _ = unix.Unmount(fsDir, unix.MNT_DETACH) })
	sums := map[string][32]byte{"before": writeTestFile(t, fsDir, "before", 20<<20)}

	// the kernel caches the file's attributes: the grow must invalidate them
	st, err := os.Stat(file)
	require.NoError(t, err)
	require.Equal(t, int64(size), st.Size())
	require.NoError(t, ctl.Grow(context.Background(), grown))
	st, err = os.Stat(file)
	require.NoError(t, err)
	require.Equal(t, int64(grown), st.Size(), "the volume file's size")
	require.Equal(t, int64(size), blockdevSize(t, dev), "a loop device keeps its size until refreshed")
	require.NoError(t, fuse.RefreshLoopCapacity(dev, file))
	require.Equal(t, int64(grown), blockdevSize(t, dev))
	require.ErrorIs(t, fuse.RefreshLoopCapacity(dev, filepath.Join(mnt, "..")), fuse.ErrNotBacked)

	if hasCapability(t, unix.CAP_SYS_RESOURCE) {
		sh(t, "resize2fs", dev)
	} else {
		// EXT4_IOC_RESIZE_FS needs CAP_SYS_RESOURCE (missing in some
		// containers): resize the unmounted file system instead
		t.Log("no CAP_SYS_RESOURCE: resize2fs offline")
		require.NoError(t, unix.Unmount(fsDir, 0))
		sh(t, "e2fsck", "-f", "-y", dev)
		sh(t, "resize2fs", dev)
		sh(t, "mount", "-t", "ext4", dev, fsDir)
	}
	var sfs unix.Statfs_t
	require.NoError(t, unix.Statfs(fsDir, &sfs))
	require.Greater(t, int64(sfs.Blocks)*sfs.Bsize, int64(size), "ext4 grew online")
	// more than the old size fits now
	sums["after"] = writeTestFile(t, fsDir, "after", 60<<20)
	require.NoError(t, unix.Unmount(fsDir, 0))
	sh(t, "fsck.ext4", "-n", "-f", dev)
	sh(t, "mount", "-t", "ext4", dev, fsDir)
	for name, want := range sums {
		got, err := os.ReadFile(filepath.Join(fsDir, name))
		require.NoError(t, err, name)
		require.Equal(t, want, sha256.Sum256(got), name)
	}
}

// hasCapability reports whether the process has capability c in its
// effective set.
func hasCapability(t *testing.T, c int) bool {
	t.Helper()
	status, err := os.ReadFile("/proc/self/status")
	require.NoError(t, err)
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			eff, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			require.NoError(t, err)
			return eff&(1<<c) != 0
		}
	}
	return false
}

func writeTestFile(t *testing.T, dir, name string, n int) [32]byte {
	t.Helper()
	data := make([]byte, n)
	_, _ = rand.Read(data)
	require.NoError(t, os.WriteFile(filepath.Join(dir, name), data, 0o644))
	f, err := os.Open(filepath.Join(dir, name))
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())
	return sha256.Sum256(data)
}

func blockdevSize(t *testing.T, dev string) int64 {
	t.Helper()
	out, err := exec.Command("blockdev", "--getsize64", dev).CombinedOutput()
	require.NoError(t, err, "blockdev: %s", out)
	n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	require.NoError(t, err)
	return n
}
