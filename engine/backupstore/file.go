package backupstore

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// File is a raw image used as a backup source or a restore sink. As a sink
// it punches holes for all-zero blocks, so restored images stay sparse.
type File struct {
	f       *os.File
	size    int64
	regular bool
	// direct, when set, is the same file opened with O_DIRECT: a sink
	// writes page-aligned data through it, so a restore neither copies
	// every byte into the page cache nor leaves gigabytes of dirty pages
	// (and other workloads' cache evicted) behind.
	direct *os.File
}

// OpenFileSource opens a raw image read-only as a backup source.
func OpenFileSource(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	size := st.Size()
	if st.Mode()&os.ModeDevice != 0 {
		if size, err = f.Seek(0, 2); err != nil {
			f.Close()
			return nil, err
		}
	}
	return &File{f: f, size: size, regular: st.Mode().IsRegular()}, nil
}

// CreateFileSink opens (creating if needed) a raw image of the given size
// for a restore. fresh reports whether it is an empty regular file (so it
// reads as zeros once sized and zero blocks can be skipped); a device
// never is.
func CreateFileSink(path string, size int64) (sink *File, fresh bool, err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, false, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, false, err
	}
	fresh = st.Mode().IsRegular() && st.Size() == 0
	if st.Mode().IsRegular() && st.Size() != size {
		if err := f.Truncate(size); err != nil {
			f.Close()
			return nil, false, err
		}
	}
	sink = &File{f: f, size: size, regular: st.Mode().IsRegular()}
	// Not every filesystem takes O_DIRECT (tmpfs does not): then buffered.
	if d, err := os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT, 0); err == nil {
		sink.direct = d
	}
	return sink, fresh, nil
}

func (f *File) Size() int64                             { return f.size }
func (f *File) ReadAt(p []byte, off int64) (int, error) { return f.f.ReadAt(p, off) }

// WriteAt writes p at off, bypassing the page cache when p, off and the
// length are all aligned to directAlign.
func (f *File) WriteAt(p []byte, off int64) (int, error) {
	if f.direct != nil && aligned(p, off) {
		n, err := f.direct.WriteAt(p, off)
		if err == nil || n > 0 {
			return n, err
		}
		// EINVAL: the device wants a larger alignment; fall back.
	}
	return f.f.WriteAt(p, off)
}

// directAlign is the alignment O_DIRECT needs on every device Cairn
// restores onto (logical blocks of 512 or 4096 bytes).
const directAlign = 4096

func aligned(p []byte, off int64) bool {
	return len(p) > 0 && len(p)%directAlign == 0 && off%directAlign == 0 &&
		uintptr(unsafe.Pointer(&p[0]))%directAlign == 0
}

// Trim punches a hole so the range reads as zeros; where the filesystem
// cannot, it writes zeros.
func (f *File) Trim(off, length int64) error {
	err := unix.Fallocate(int(f.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	if err == nil {
		return nil
	}
	zero := make([]byte, min(length, 1<<20))
	for length > 0 {
		n := min(length, int64(len(zero)))
		if _, err := f.f.WriteAt(zero[:n], off); err != nil {
			return fmt.Errorf("trim: %w", err)
		}
		off += n
		length -= n
	}
	return nil
}

// Preallocate reserves disk space for a range (fallocate), so the restore's
// writes do not have to fill holes one page at a time.
func (f *File) Preallocate(off, length int64) error {
	if !f.regular {
		return nil
	}
	return unix.Fallocate(int(f.f.Fd()), 0, off, length)
}

// Sync flushes the file to stable storage (data written directly still
// needs its allocation metadata synced).
func (f *File) Sync() error { return f.f.Sync() }

// Close closes the file.
func (f *File) Close() error {
	if f.direct != nil {
		f.direct.Close()
	}
	return f.f.Close()
}
