package fuse

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/cairnstore/cairn/engine"
)

// Options configure a mount.
type Options struct {
	// AllowOther lets users other than the mounting one open the file.
	AllowOther bool
	// Log receives mount-level events.
	Log logr.Logger
}

// attrTimeout is how long the kernel caches names and attributes.
const attrTimeout = time.Second

// Mount is a mounted volume file system.
type Mount struct {
	dir  string
	name string
	srv  *server
	log  logr.Logger
	file *volumeFile
}

// OpenCount is the number of open handles of the volume file (a loop
// device holds one while attached).
func (m *Mount) OpenCount() int64 { return m.file.opens.Load() }

// MountVolume mounts a file system at dir holding one file, name, backed by b.
func MountVolume(dir, name string, b engine.Backend, opts Options) (*Mount, error) {
	if name == "" || filepath.Base(name) != name || name == "." || name == ".." {
		return nil, fmt.Errorf("fuse: invalid volume file name %q", name)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	vf := &volumeFile{b: b, mtime: time.Now()}
	vf.async, _ = b.(engine.AsyncBackend)
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("fuse: open /dev/fuse: %w", err)
	}
	data := fmt.Sprintf("fd=%d,rootmode=40000,user_id=%d,group_id=%d", fd, os.Getuid(), os.Getgid())
	if opts.AllowOther {
		data += ",allow_other"
	}
	if err := unix.Mount("cairn:"+name, dir, "fuse.cairn", unix.MS_NOSUID|unix.MS_NODEV, data); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("fuse: mount %s: %w", dir, err)
	}
	srv, err := newServer(fd, vf, name)
	if err != nil {
		_ = unix.Unmount(dir, unix.MNT_DETACH)
		return nil, err
	}
	if err := srv.handshake(); err != nil {
		_ = unix.Unmount(dir, unix.MNT_DETACH)
		srv.close()
		return nil, fmt.Errorf("fuse: mount %s: %w", dir, err)
	}
	go srv.serve()
	m := &Mount{dir: dir, name: name, srv: srv, log: opts.Log, file: vf}
	m.log.Info("Volume file mounted", "path", m.Path())
	return m, nil
}

// Path is the volume file's path.
func (m *Mount) Path() string { return filepath.Join(m.dir, m.name) }

// NotifySize makes the kernel drop its cached attributes of the volume
// file, so the next stat (and a loop device's capacity refresh after it,
// RefreshLoopCapacity) sees the backend's current size: after a grow the
// size is otherwise stale for up to the attribute timeout.
func (m *Mount) NotifySize() error {
	out := fuse.NotifyInvalInodeOut{Ino: fileIno, Off: -1}
	if err := m.srv.notify(notifyInvalInode, bytesOf(&out)); err != nil {
		return fmt.Errorf("fuse: invalidate attributes of %s: %w", m.Path(), err)
	}
	return nil
}

// Wait blocks until the file system is unmounted.
func (m *Mount) Wait() { <-m.srv.done }

// Unmount unmounts the file system, retrying while it is busy, and falls
// back to a lazy unmount so the mount point never stays behind.
func (m *Mount) Unmount() error {
	select {
	case <-m.srv.done:
		return nil
	default:
	}
	var err error
	for i := 0; i < 20; i++ {
		if err = unix.Unmount(m.dir, 0); err == nil || errors.Is(err, unix.EINVAL) {
			m.Wait()
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	if lerr := unix.Unmount(m.dir, unix.MNT_DETACH); lerr == nil {
		m.Wait()
		return nil
	}
	return fmt.Errorf("fuse: unmount %s: %w", m.dir, err)
}

// volumeFile is the one file of the file system.
type volumeFile struct {
	b engine.Backend
	// async is b when it takes requests without a goroutine per replica.
	async engine.AsyncBackend
	mtime time.Time
	opens atomic.Int64
}

func (f *volumeFile) fill(out *fuse.Attr) {
	size := f.b.Size()
	out.Ino = fileIno
	out.Mode = syscall.S_IFREG | 0o600
	out.Size = uint64(size)
	out.Blocks = uint64(size+511) / 512
	out.Blksize = 4096
	out.Nlink = 1
	out.SetTimes(nil, &f.mtime, &f.mtime)
}

// submit hands a read, write or flush to the backend: straight to an async
// backend (the engine), else on a goroutine of its own.
func (f *volumeFile) submit(rq *engine.Request) {
	if f.async != nil {
		f.async.Submit(rq)
		return
	}
	go func() {
		// Not the request's context: an interrupted syscall must not
		// abandon a write half-way across the replicas.
		ctx := context.Background()
		var err error
		switch rq.Op {
		case engine.IORead:
			err = f.b.ReadAt(ctx, rq.Buf, rq.Off)
		case engine.IOWrite:
			err = f.b.WriteAt(ctx, rq.Buf, rq.Off)
		default:
			err = f.b.Flush(ctx)
		}
		rq.Done(rq, err)
	}()
}

// allocate is fallocate(2) on the volume file.
func (f *volumeFile) allocate(off, size uint64, mode uint32) syscall.Errno {
	if err := engine.CheckRange(f.b.Size(), int64(off), int64(size)); err != nil {
		return syscall.EINVAL
	}
	ctx := context.Background()
	switch {
	case mode&unix.FALLOC_FL_PUNCH_HOLE != 0:
		return errno(f.b.Trim(ctx, int64(off), int64(size)))
	case mode&unix.FALLOC_FL_ZERO_RANGE != 0:
		return errno(f.b.WriteZeroes(ctx, int64(off), int64(size)))
	case mode&^uint32(unix.FALLOC_FL_KEEP_SIZE) == 0:
		// Plain allocation: the volume is always fully addressable.
		return 0
	default:
		return syscall.EOPNOTSUPP
	}
}

func errno(err error) syscall.Errno {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, engine.ErrOutOfRange):
		return syscall.EINVAL
	default:
		return syscall.EIO
	}
}
