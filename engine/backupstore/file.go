package backupstore

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// File is a raw image used as a backup source or a restore sink. As a sink
// it punches holes for all-zero blocks, so restored images stay sparse.
type File struct {
	f       *os.File
	size    int64
	regular bool
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
// for a restore. fresh reports whether the file was new (so it reads as
// zeros and zero blocks can be skipped).
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
	fresh = st.Size() == 0
	if st.Mode().IsRegular() && st.Size() != size {
		if err := f.Truncate(size); err != nil {
			f.Close()
			return nil, false, err
		}
	}
	return &File{f: f, size: size, regular: st.Mode().IsRegular()}, fresh, nil
}

func (f *File) Size() int64                              { return f.size }
func (f *File) ReadAt(p []byte, off int64) (int, error)  { return f.f.ReadAt(p, off) }
func (f *File) WriteAt(p []byte, off int64) (int, error) { return f.f.WriteAt(p, off) }

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

// Sync flushes the file to stable storage.
func (f *File) Sync() error { return f.f.Sync() }

// Close closes the file.
func (f *File) Close() error { return f.f.Close() }
