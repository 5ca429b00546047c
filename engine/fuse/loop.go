package fuse

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// AttachLoop puts file on a free loop device and returns the device path.
// It asks for direct I/O on the loop device (no second page cache) and falls
// back to buffered loop I/O where the kernel refuses it.
func AttachLoop(ctx context.Context, file string) (string, error) {
	out, err := losetup(ctx, "--find", "--show", "--direct-io=on", file)
	if err != nil {
		out, err = losetup(ctx, "--find", "--show", file)
		if err != nil {
			return "", err
		}
	}
	dev := strings.TrimSpace(out)
	if !strings.HasPrefix(dev, "/dev/loop") {
		return "", fmt.Errorf("fuse: losetup printed %q", out)
	}
	return dev, nil
}

// DetachLoop detaches dev if, and only if, it is still backed by file.
// Checking the backing file on an open descriptor of the device, then
// clearing it through that same descriptor, means a device number that was
// released and handed to someone else in the meantime is never torn down
// (a node agent or a test detaching "its" /dev/loopN after another user got
// it would pull the disk from under a mounted file system). A device that is
// no longer attached is not an error. While something else still holds the
// device open the kernel defers the detach to the last close.
func DetachLoop(ctx context.Context, dev, file string) error {
	for attempt := 1; ; attempt++ {
		err := detachLoopOnce(dev, file)
		if !errors.Is(err, unix.EBUSY) && !errors.Is(err, unix.EAGAIN) || attempt == 50 {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("fuse: detach %s: %w (last error: %v)", dev, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func detachLoopOnce(dev, file string) error {
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("fuse: open %s: %w", dev, err)
	}
	defer unix.Close(fd)
	info, err := unix.IoctlLoopGetStatus64(fd)
	if errors.Is(err, unix.ENXIO) {
		return nil // not attached
	}
	if err != nil {
		return fmt.Errorf("fuse: status of %s: %w", dev, err)
	}
	if !backedBy(info, file) {
		return nil // already detached and reused for another file
	}
	if err := unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0); err != nil && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("fuse: detach %s: %w", dev, err)
	}
	return nil
}

// backedBy reports whether the loop device described by info is backed by
// file: same inode when the file can still be stat'ed, otherwise the name
// the kernel kept (truncated to 63 bytes).
func backedBy(info *unix.LoopInfo64, file string) bool {
	var st unix.Stat_t
	if unix.Stat(file, &st) == nil {
		return info.Device == st.Dev && info.Inode == st.Ino
	}
	name := string(bytes.TrimRight(info.File_name[:], "\x00"))
	return name != "" && strings.HasPrefix(file, name)
}

// RefreshLoopCapacity makes loop device dev, backed by the volume file
// file, take the file's current size (LOOP_SET_CAPACITY, `losetup -c`):
// the node agent calls it after growing a FUSE-served volume, after which
// `blockdev --getsize64 dev` reports the new size and a file system on it
// can be grown online (resize2fs). It stats file first, which makes the
// kernel fetch the size from the engine (the engine invalidates its cached
// attributes on a grow). Like DetachLoop it acts only on a device still
// backed by file; otherwise it fails with ErrNotBacked.
func RefreshLoopCapacity(dev, file string) error {
	if _, err := os.Stat(file); err != nil {
		return fmt.Errorf("fuse: refresh %s: %w", dev, err)
	}
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("fuse: open %s: %w", dev, err)
	}
	defer unix.Close(fd)
	info, err := unix.IoctlLoopGetStatus64(fd)
	if err != nil {
		return fmt.Errorf("fuse: status of %s: %w", dev, err)
	}
	if !backedBy(info, file) {
		return fmt.Errorf("%w: %s is not backed by %s", ErrNotBacked, dev, file)
	}
	if err := unix.IoctlSetInt(fd, unix.LOOP_SET_CAPACITY, 0); err != nil {
		return fmt.Errorf("fuse: set capacity of %s: %w", dev, err)
	}
	return nil
}

// LoopDevicesFor lists the loop devices backed by file.
func LoopDevicesFor(ctx context.Context, file string) ([]string, error) {
	out, err := losetup(ctx, "--noheadings", "--output", "NAME", "-j", file)
	if err != nil {
		return nil, err
	}
	return strings.Fields(out), nil
}

func losetup(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "losetup", args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("fuse: losetup %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// LoopServes reports whether loop device dev is attached to file as the
// file is now (same device and inode): a device left attached to a file
// its FUSE server still serves, which a restarted node agent may take over.
// A file that cannot be stat'ed (a dead FUSE mount) serves no device.
func LoopServes(dev, file string) bool {
	var st unix.Stat_t
	if unix.Stat(file, &st) != nil {
		return false
	}
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	info, err := unix.IoctlLoopGetStatus64(fd)
	return err == nil && info.Device == st.Dev && info.Inode == st.Ino
}
