package daemon

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
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

func sh(t *testing.T, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	require.NoError(t, err, "%s %s: %s", name, strings.Join(args, " "), out)
}

// TestFUSELoopExt4SnapshotRevert runs the engine with the FUSE frontend on
// two replicas, puts ext4 on a loop device over the volume file, and checks
// fsync/remount, then snapshot while mounted and revert after unmount.
func TestFUSELoopExt4SnapshotRevert(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "mkfs.ext4")
	testutil.RequireTool(t, "losetup")
	const size = 128 << 20
	rs := startReplicas(t, 2, size)
	sd := sockDir(t)
	mnt := filepath.Join(t.TempDir(), "fuse")
	o := Options{
		Volume: "vol1", Size: size, Replicas: replicaAddrs(rs), TokenFile: tokenFile(t),
		Frontend: "fuse", Mountpoint: mnt, Control: "unix:" + filepath.Join(sd, "ctl.sock"), IOTimeout: 5 * time.Second,
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

	attach := func() string {
		dev, err := fuse.AttachLoop(context.Background(), file)
		require.NoError(t, err)
		t.Cleanup(func() { _ = fuse.DetachLoop(context.Background(), dev, file) })
		return dev
	}
	fsDir := filepath.Join(t.TempDir(), "ext4")
	require.NoError(t, os.MkdirAll(fsDir, 0o755))
	mount := func(dev string) {
		sh(t, "mount", "-t", "ext4", dev, fsDir)
		t.Cleanup(func() { _ = unix.Unmount(fsDir, 0); _ = unix.Unmount(fsDir, unix.MNT_DETACH) })
	}
	writeFile := func(name string, n int) [32]byte {
		data := make([]byte, n)
		_, _ = rand.Read(data)
		f, err := os.Create(filepath.Join(fsDir, name))
		require.NoError(t, err)
		_, err = f.Write(data)
		require.NoError(t, err)
		require.NoError(t, f.Sync())
		require.NoError(t, f.Close())
		return sha256.Sum256(data)
	}
	check := func(sums map[string][32]byte) {
		for name, want := range sums {
			got, err := os.ReadFile(filepath.Join(fsDir, name))
			require.NoError(t, err, name)
			require.Equal(t, want, sha256.Sum256(got), name)
		}
	}

	dev := attach()
	sh(t, "mkfs.ext4", "-q", "-F", dev)
	mount(dev)
	v1 := map[string][32]byte{}
	for i, n := range []int{1, 5000, 1 << 20, 7 << 20} {
		v1[string(rune('a'+i))] = writeFile(string(rune('a'+i)), n)
	}
	require.NoError(t, unix.Unmount(fsDir, 0))
	sh(t, "fsck.ext4", "-n", "-f", dev)
	mount(dev)
	check(v1)

	// Snapshot while mounted (after sync), then change the file system.
	unix.Sync()
	require.NoError(t, ctl.Snapshot(context.Background(), "s1", map[string]string{"test": "fuse"}))
	v2 := map[string][32]byte{"a": writeFile("a", 3000), "new": writeFile("new", 2<<20)}
	require.NoError(t, unix.Unmount(fsDir, 0))
	mount(dev)
	check(v2)
	require.NoError(t, unix.Unmount(fsDir, 0))

	// Revert needs the volume detached.
	require.ErrorIs(t, ctl.Revert(context.Background(), "s1"), engine.ErrAttached)
	require.NoError(t, fuse.DetachLoop(context.Background(), dev, file))
	require.NoError(t, ctl.Revert(context.Background(), "s1"))

	dev = attach()
	mount(dev)
	check(v1)
	_, err := os.Stat(filepath.Join(fsDir, "new"))
	require.True(t, os.IsNotExist(err), "file written after the snapshot survived the revert")
	st, err := ctl.Status(context.Background())
	require.NoError(t, err)
	require.Equal(t, engine.Healthy, st.Robustness)
}
