package csi

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	point, fsType, source string
}

// findMount returns the mount at path (the last one mounted there), if any.
func findMount(path string) (mountEntry, bool, error) {
	path = filepath.Clean(path)
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return mountEntry{}, false, err
	}
	defer f.Close()
	var found mountEntry
	ok := false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		if m, good := parseMountinfo(sc.Text()); good && m.point == path {
			found, ok = m, true
		}
	}
	return found, ok, sc.Err()
}

// parseMountinfo parses "id parent maj:min root point opts [optional...] -
// fstype source superopts".
func parseMountinfo(line string) (mountEntry, bool) {
	pre, post, ok := strings.Cut(line, " - ")
	f, g := strings.Fields(pre), strings.Fields(post)
	if !ok || len(f) < 5 || len(g) < 2 {
		return mountEntry{}, false
	}
	return mountEntry{point: unescapeOctal(f[4]), fsType: g[0], source: unescapeOctal(g[1])}, true
}

// unescapeOctal undoes the kernel's \NNN escapes of spaces and the like.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// isMounted reports whether something is mounted at path.
func isMounted(path string) (bool, error) {
	_, ok, err := findMount(path)
	return ok, err
}

// run runs a tool and returns its error with its output.
func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// fsTypeOf returns the filesystem blkid finds on dev, "" when none.
func fsTypeOf(ctx context.Context, dev string) (string, error) {
	out, err := exec.CommandContext(ctx, "blkid", "-p", "-s", "TYPE", "-o", "value", dev).Output()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 2 {
		return "", nil // blkid: nothing found
	}
	if err != nil {
		return "", fmt.Errorf("blkid %s: %w", dev, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// mkfs makes an ext4 or xfs filesystem on dev.
func mkfs(ctx context.Context, fsType, dev string) error {
	if fsType == "xfs" {
		return run(ctx, "mkfs.xfs", "-q", "-f", dev)
	}
	return run(ctx, "mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1", dev)
}

// mount mounts source at target with mount(8) and the given options.
func mount(ctx context.Context, source, target, fsType string, opts []string) error {
	args := []string{}
	if fsType != "" {
		args = append(args, "-t", fsType)
	}
	if len(opts) > 0 {
		args = append(args, "-o", strings.Join(opts, ","))
	}
	return run(ctx, "mount", append(args, source, target)...)
}

// bindMount bind-mounts source at target, read-only when asked.
func bindMount(ctx context.Context, source, target string, readOnly bool) error {
	if err := mount(ctx, source, target, "", []string{"bind"}); err != nil {
		return err
	}
	if !readOnly {
		return nil
	}
	if err := mount(ctx, "", target, "", []string{"remount", "bind", "ro"}); err != nil {
		_ = unmount(target)
		return err
	}
	return nil
}

// unmount unmounts every mount stacked at path; nothing mounted is fine.
func unmount(path string) error {
	for {
		mounted, err := isMounted(path)
		if err != nil || !mounted {
			return err
		}
		if err := unix.Unmount(path, 0); err != nil {
			return fmt.Errorf("unmount %s: %w", path, err)
		}
	}
}

// blockSize returns the size in bytes of the block device at path.
func blockSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var size uint64
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size))); errno != 0 {
		return 0, fmt.Errorf("size of %s: %w", path, errno)
	}
	return int64(size), nil
}

// isBlockDevice reports whether path is a block device node.
func isBlockDevice(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0
}
