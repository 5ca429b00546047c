package node

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cairnstore/cairn/engine/fuse"
)

// loopAttachment is a loop device the agent put on a volume's FUSE file,
// for the engine process pid that served the file then.
type loopAttachment struct {
	dev  string
	file string
	pid  int
	nbd  bool // an NBD device connected to the engine's socket instead
}

// loopTable records the agent's loop devices per volume.
type loopTable struct {
	mu sync.Mutex
	m  map[string]loopAttachment
}

func (t *loopTable) get(vol string) (loopAttachment, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	l, ok := t.m[vol]
	return l, ok
}

func (t *loopTable) set(vol string, l loopAttachment) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.m[vol] = l
}

func (t *loopTable) remove(vol string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.m, vol)
}

func (t *loopTable) volumes() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	for v := range t.m {
		out = append(out, v)
	}
	return out
}

// ensureLoop returns the loop device on vol's FUSE file served by the
// engine process pid, attaching one if needed. A device attached for an
// earlier engine process (whose mount died with it) is detached first; one
// an earlier agent attached to the file the engine still serves (the agent
// restarted, the engine kept running) is taken over, so the filesystem
// mounted on it stays.
func (a *Agent) ensureLoop(ctx context.Context, vol string, pid int) (string, error) {
	file := a.volumeFile(vol)
	if _, ok := a.loops.get(vol); !ok {
		for _, l := range loopsUnder(file) {
			if l.file == file && fuse.LoopServes(l.dev, file) {
				a.loops.set(vol, loopAttachment{dev: l.dev, file: file, pid: pid})
				return l.dev, nil
			}
		}
	}
	if l, ok := a.loops.get(vol); ok {
		if l.pid == pid && backingFile(l.dev) == file {
			return l.dev, nil
		}
		if err := a.detachVolumeLoop(ctx, vol); err != nil {
			return "", err
		}
	}
	dev, err := fuse.AttachLoop(ctx, file)
	if err != nil {
		return "", err
	}
	a.loops.set(vol, loopAttachment{dev: dev, file: file, pid: pid})
	return dev, nil
}

// detachVolumeLoop detaches every loop device backed by vol's FUSE file.
func (a *Agent) detachVolumeLoop(_ context.Context, vol string) error {
	file := a.volumeFile(vol)
	var errs []error
	for _, l := range loopsUnder(file) {
		if l.file == file {
			errs = append(errs, clearLoop(l.dev, file))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	a.loops.remove(vol)
	return nil
}

// loopDev is an attached loop device and its backing file.
type loopDev struct{ dev, file string }

// loopsUnder lists the attached loop devices whose backing file starts with
// prefix, from /sys/block (no stat of the file, which may sit on a dead
// FUSE mount).
func loopsUnder(prefix string) []loopDev {
	paths, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var out []loopDev
	for _, p := range paths {
		dev := "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(p)))
		if f := backingFile(dev); f != "" && strings.HasPrefix(f, prefix) {
			out = append(out, loopDev{dev: dev, file: f})
		}
	}
	return out
}

// backingFile returns the file behind a loop device ("" when detached),
// without the " (deleted)" suffix the kernel adds for unlinked files.
func backingFile(dev string) string {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")
}

// clearLoop detaches dev if it is still backed by file, checking and
// clearing through one open descriptor. It works when the file's FUSE mount
// is gone, where losetup -d cannot stat the file.
func clearLoop(dev, file string) error {
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer unix.Close(fd)
	if backingFile(dev) != file {
		return nil
	}
	if err := unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0); err != nil && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("detach %s: %w", dev, err)
	}
	return nil
}

// mountsUnder lists mount points equal to or below the directory prefix
// (longest first).
func mountsUnder(prefix string) []string {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		mp := unescapeMount(fields[1])
		if p := strings.TrimSuffix(prefix, "/"); mp == p || strings.HasPrefix(mp, p+"/") {
			out = append(out, mp)
		}
	}
	slices.SortFunc(out, func(a, b string) int { return len(b) - len(a) })
	return out
}

// unescapeMount undoes the octal escapes of /proc/mounts (space, tab, ...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &c); err == nil {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmount detaches a (possibly dead) FUSE mount lazily.
func unmount(mp string) error {
	if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", mp, err)
	}
	return nil
}
