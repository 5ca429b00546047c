package fuse

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/hanwen/go-fuse/v2/fs"
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

// Mount is a mounted volume file system.
type Mount struct {
	dir    string
	name   string
	server *fuse.Server
	log    logr.Logger
	file   *volumeFile
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
	root := &fs.Inode{}
	vf := &volumeFile{b: b, mtime: time.Now()}
	vf.async, _ = b.(engine.AsyncBackend)
	sec := time.Second
	server, err := fs.Mount(dir, root, &fs.Options{
		MountOptions: fuse.MountOptions{
			AllowOther: opts.AllowOther,
			FsName:     "cairn:" + name,
			Name:       "cairn",
			MaxWrite:   1 << 20,
			// A loop device with direct I/O sends its requests as async
			// direct I/O (CAP_ASYNC_DIO): background requests, so this is
			// the queue depth the volume sees (the NBD server's default).
			MaxBackground:     128,
			ExtraCapabilities: fuse.CAP_ASYNC_DIO,
			DirectMount:       true,
			DisableXAttrs:     true,
			DisableSplice:     true,
		},
		EntryTimeout: &sec,
		AttrTimeout:  &sec,
		OnAdd: func(ctx context.Context) {
			ch := root.NewPersistentInode(ctx, vf, fs.StableAttr{Mode: syscall.S_IFREG, Ino: 2})
			root.AddChild(name, ch, true)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("fuse: mount %s: %w", dir, err)
	}
	if err := server.WaitMount(); err != nil {
		_ = server.Unmount()
		return nil, fmt.Errorf("fuse: mount %s: %w", dir, err)
	}
	m := &Mount{dir: dir, name: name, server: server, log: opts.Log, file: vf}
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
	if errno := m.file.NotifyContent(-1, 0); errno != 0 {
		return fmt.Errorf("fuse: invalidate attributes of %s: %w", m.Path(), errno)
	}
	return nil
}

// Wait blocks until the file system is unmounted.
func (m *Mount) Wait() { m.server.Wait() }

// Unmount unmounts the file system, retrying while it is busy, and falls
// back to a lazy unmount so the mount point never stays behind.
func (m *Mount) Unmount() error {
	var err error
	for i := 0; i < 20; i++ {
		if err = m.server.Unmount(); err == nil {
			m.server.Wait()
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	if lerr := unix.Unmount(m.dir, unix.MNT_DETACH); lerr == nil {
		m.server.Wait()
		return nil
	}
	return fmt.Errorf("fuse: unmount %s: %w", m.dir, err)
}

// volumeFile is the one file of the file system.
type volumeFile struct {
	fs.Inode
	b engine.Backend
	// async is b when it takes requests without a goroutine per replica.
	async engine.AsyncBackend
	mtime time.Time
	opens atomic.Int64
}

var (
	_ fs.NodeOpener    = (*volumeFile)(nil)
	_ fs.NodeGetattrer = (*volumeFile)(nil)
	_ fs.NodeSetattrer = (*volumeFile)(nil)
	_ fs.NodeReader    = (*volumeFile)(nil)
	_ fs.NodeWriter    = (*volumeFile)(nil)
	_ fs.NodeFsyncer   = (*volumeFile)(nil)
	_ fs.NodeFlusher   = (*volumeFile)(nil)
	_ fs.NodeAllocater = (*volumeFile)(nil)
	_ fs.NodeReleaser  = (*volumeFile)(nil)
)

// ctxIO detaches backend I/O from the FUSE request context: an interrupted
// syscall must not abandon a write half-way across the replicas.
func ctxIO(context.Context) context.Context { return context.Background() }

func (f *volumeFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_TRUNC != 0 {
		return nil, 0, syscall.EPERM
	}
	f.opens.Add(1)
	// A non-nil handle makes go-fuse call Release, which keeps OpenCount.
	// Writes to different ranges need not wait for each other: the
	// backend orders overlapping ones.
	return &volumeHandle{}, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_PARALLEL_DIRECT_WRITES, 0
}

// volumeHandle is an open file; all I/O goes through the node's methods.
type volumeHandle struct{ _ byte }

func (f *volumeFile) Release(ctx context.Context, _ fs.FileHandle) syscall.Errno {
	f.opens.Add(-1)
	return 0
}

func (f *volumeFile) fill(out *fuse.Attr) {
	size := f.b.Size()
	out.Mode = syscall.S_IFREG | 0o600
	out.Size = uint64(size)
	out.Blocks = uint64(size+511) / 512
	out.Blksize = 4096
	out.Nlink = 1
	out.SetTimes(nil, &f.mtime, &f.mtime)
}

func (f *volumeFile) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.fill(&out.Attr)
	return 0
}

func (f *volumeFile) Setattr(ctx context.Context, _ fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if sz, ok := in.GetSize(); ok && int64(sz) != f.b.Size() {
		return syscall.EPERM
	}
	f.fill(&out.Attr)
	return 0
}

func (f *volumeFile) Read(ctx context.Context, _ fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	size := f.b.Size()
	if off >= size {
		return fuse.ReadResultData(nil), 0
	}
	if rem := size - off; int64(len(dest)) > rem {
		dest = dest[:rem]
	}
	if err := f.io(ctx, engine.IORead, dest, off); err != nil {
		return nil, errno(err)
	}
	return fuse.ReadResultData(dest), 0
}

func (f *volumeFile) Write(ctx context.Context, _ fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	size := f.b.Size()
	if off >= size {
		return 0, syscall.ENOSPC
	}
	if rem := size - off; int64(len(data)) > rem {
		data = data[:rem]
	}
	if err := f.io(ctx, engine.IOWrite, data, off); err != nil {
		return 0, errno(err)
	}
	return uint32(len(data)), 0
}

func (f *volumeFile) Fsync(ctx context.Context, _ fs.FileHandle, flags uint32) syscall.Errno {
	return errno(f.io(ctx, engine.IOFlush, nil, 0))
}

// waiter is the completion of one request submitted to an async backend.
type waiter struct {
	rq   engine.Request
	done chan error
}

var waiterPool = sync.Pool{New: func() any {
	w := &waiter{done: make(chan error, 1)}
	w.rq.Tag = w
	w.rq.Done = func(rq *engine.Request, err error) { rq.Tag.(*waiter).done <- err }
	return w
}}

// io runs a read, write or flush. On an async backend (the engine) the
// request is submitted and this goroutine, go-fuse's for the request,
// waits for it: no goroutine or context per replica as on the synchronous
// path.
func (f *volumeFile) io(ctx context.Context, op engine.IOOp, buf []byte, off int64) error {
	if f.async == nil {
		switch op {
		case engine.IORead:
			return f.b.ReadAt(ctxIO(ctx), buf, off)
		case engine.IOWrite:
			return f.b.WriteAt(ctxIO(ctx), buf, off)
		default:
			return f.b.Flush(ctxIO(ctx))
		}
	}
	w := waiterPool.Get().(*waiter)
	w.rq.Op, w.rq.Buf, w.rq.Off = op, buf, off
	f.async.Submit(&w.rq)
	err := <-w.done
	w.rq.Buf = nil
	waiterPool.Put(w)
	return err
}

// Flush is close(2); durability is fsync's job.
func (f *volumeFile) Flush(ctx context.Context, _ fs.FileHandle) syscall.Errno { return 0 }

func (f *volumeFile) Allocate(ctx context.Context, _ fs.FileHandle, off, size uint64, mode uint32) syscall.Errno {
	if err := engine.CheckRange(f.b.Size(), int64(off), int64(size)); err != nil {
		return syscall.EINVAL
	}
	switch {
	case mode&unix.FALLOC_FL_PUNCH_HOLE != 0:
		return errno(f.b.Trim(ctxIO(ctx), int64(off), int64(size)))
	case mode&unix.FALLOC_FL_ZERO_RANGE != 0:
		return errno(f.b.WriteZeroes(ctxIO(ctx), int64(off), int64(size)))
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
