package fuse

import (
	"bytes"
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
	"github.com/cairnstore/cairn/internal/testutil"
)

// MountForTest mounts b at a temporary directory and unmounts it at cleanup.
func mountForTest(t *testing.T, b engine.Backend) *Mount {
	t.Helper()
	testutil.RequireRoot(t)
	m, err := MountVolume(filepath.Join(t.TempDir(), "fuse"), "vol1", b, Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = m.Unmount() })
	return m
}

// openServed opens a file that this process's own FUSE server serves,
// without os.OpenFile: that registers the descriptor with Go's poller, and
// the kernel then asks the server (FUSE_POLL) inside epoll_ctl, which the
// runtime makes without leaving its P. A garbage collection stopping the
// world at that moment waits for that P while the server goroutine that
// would answer waits for the world: the test hung in D state.
func openServed(t *testing.T, path string) *os.File {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	return os.NewFile(uintptr(fd), path) // blocking descriptor: never polled
}

func TestFileOperations(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	b, err := engine.OpenFileBackend(raw, 16<<20)
	require.NoError(t, err)
	t.Cleanup(func() { b.Close() })
	m := mountForTest(t, b)

	st, err := os.Stat(m.Path())
	require.NoError(t, err)
	require.Equal(t, int64(16<<20), st.Size())

	f := openServed(t, m.Path())
	defer f.Close()
	data := make([]byte, 1<<20+333)
	_, _ = rand.Read(data)
	_, err = f.WriteAt(data, 4097)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	got := make([]byte, len(data))
	_, err = f.ReadAt(got, 4097)
	require.NoError(t, err)
	require.True(t, bytes.Equal(data, got))
	// Punch a hole through FUSE: reads back zeroes.
	require.NoError(t, unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 8192, 8192))
	_, err = f.ReadAt(got[:8192], 8192)
	require.NoError(t, err)
	require.Equal(t, make([]byte, 8192), got[:8192])
	// Writes past the end fail; truncation is refused.
	_, err = f.WriteAt([]byte("x"), 16<<20)
	require.Error(t, err)
	require.Error(t, f.Truncate(1<<20))
	require.EqualValues(t, 1, m.OpenCount())
	require.NoError(t, f.Close())
	require.Eventually(t, func() bool { return m.OpenCount() == 0 }, 5*time.Second, 10*time.Millisecond)
}

func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	require.NoError(t, err, "%s %s: %s", name, strings.Join(args, " "), out)
	return string(out)
}

// AttachForTest puts the volume file on a loop device, detached at cleanup.
func attachForTest(t *testing.T, file string) string {
	t.Helper()
	testutil.RequireTool(t, "losetup")
	dev, err := AttachLoop(context.Background(), file)
	require.NoError(t, err)
	t.Cleanup(func() { _ = DetachLoop(context.Background(), dev, file) })
	return dev
}

// mountExt4 mounts dev at a temporary directory, unmounted at cleanup.
func mountExt4(t *testing.T, dev, dir string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(dir, 0o755))
	sh(t, "mount", "-t", "ext4", dev, dir)
	t.Cleanup(func() { _ = unix.Unmount(dir, 0); _ = unix.Unmount(dir, unix.MNT_DETACH) })
}

func TestLoopExt4RoundTrip(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "mkfs.ext4")
	dir := t.TempDir()
	b, err := engine.OpenFileBackend(filepath.Join(dir, "disk.raw"), 128<<20)
	require.NoError(t, err)
	t.Cleanup(func() { b.Close() })
	m := mountForTest(t, b)
	dev := attachForTest(t, m.Path())
	sh(t, "mkfs.ext4", "-q", "-F", dev)

	mnt := filepath.Join(dir, "mnt")
	mountExt4(t, dev, mnt)
	sums := map[string][32]byte{}
	for i, n := range []int{1, 4096, 100_000, 3 << 20} {
		data := make([]byte, n)
		_, _ = rand.Read(data)
		name := filepath.Join(mnt, "f"+string(rune('a'+i)))
		f, err := os.Create(name)
		require.NoError(t, err)
		_, err = f.Write(data)
		require.NoError(t, err)
		require.NoError(t, f.Sync())
		require.NoError(t, f.Close())
		sums[name] = sha256.Sum256(data)
	}
	require.NoError(t, unix.Unmount(mnt, 0))
	sh(t, "fsck.ext4", "-n", "-f", dev)
	sh(t, "mount", "-t", "ext4", dev, mnt)
	for name, want := range sums {
		got, err := os.ReadFile(name)
		require.NoError(t, err)
		require.Equal(t, want, sha256.Sum256(got), name)
	}
}

// TestDetachLoopSparesReusedDevice detaches a device whose number has since
// been given to another file: the other file's device must stay attached.
func TestDetachLoopSparesReusedDevice(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "losetup")
	ctx := context.Background()
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	for _, f := range []string{a, b} {
		require.NoError(t, os.WriteFile(f, make([]byte, 1<<20), 0o600))
	}
	devA, err := AttachLoop(ctx, a)
	require.NoError(t, err)
	require.NoError(t, DetachLoop(ctx, devA, a))
	devs, err := LoopDevicesFor(ctx, a)
	require.NoError(t, err)
	require.Empty(t, devs, "a is still attached")
	require.NoError(t, DetachLoop(ctx, devA, a), "detaching a detached device is not an error")

	devB, err := AttachLoop(ctx, b)
	require.NoError(t, err)
	t.Cleanup(func() { _ = DetachLoop(ctx, devB, b) })
	// A stale detach of a's old device (possibly devB now) leaves b alone.
	require.NoError(t, DetachLoop(ctx, devA, a))
	require.NoError(t, DetachLoop(ctx, devB, a))
	devs, err = LoopDevicesFor(ctx, b)
	require.NoError(t, err)
	require.Equal(t, []string{devB}, devs)
	require.NoError(t, DetachLoop(ctx, devB, b))
	devs, err = LoopDevicesFor(ctx, b)
	require.NoError(t, err)
	require.Empty(t, devs)
}
