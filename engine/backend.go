package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Backend is the block device a frontend serves: a fixed-size byte range
// with flush, trim and write-zeroes. Volume (the replicated engine) and
// FileBackend (a local file, for tests and benchmarks) implement it.
//
// Implementations must be safe for concurrent use; a Flush covers every
// write that completed before it was issued, on any goroutine.
type Backend interface {
	// Size is the size of the device in bytes; it never changes while a
	// frontend serves it.
	Size() int64
	ReadAt(ctx context.Context, p []byte, off int64) error
	WriteAt(ctx context.Context, p []byte, off int64) error
	// Flush makes every completed write durable.
	Flush(ctx context.Context) error
	// Trim discards a range; it reads back as zeroes afterwards.
	Trim(ctx context.Context, off, length int64) error
	// WriteZeroes writes zeroes to a range, deallocating it where possible.
	WriteZeroes(ctx context.Context, off, length int64) error
}

// CheckRange returns ErrOutOfRange unless [off, off+length) lies inside a
// device of the given size.
func CheckRange(size, off, length int64) error {
	if off < 0 || length < 0 || off > size || length > size-off {
		return fmt.Errorf("%w: offset %d length %d size %d", ErrOutOfRange, off, length, size)
	}
	return nil
}

// FileBackend is a Backend over a local file: the reference the frontends
// are tested against and the "raw file" peer in benchmarks.
type FileBackend struct {
	f    *os.File
	size int64
}

// OpenFileBackend opens (creating if needed) a sparse file of the given size.
func OpenFileBackend(path string, size int64) (*FileBackend, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if st.Size() != size {
		if err := f.Truncate(size); err != nil {
			f.Close()
			return nil, err
		}
	}
	return &FileBackend{f: f, size: size}, nil
}

// Close closes the file.
func (b *FileBackend) Close() error { return b.f.Close() }

// Size implements Backend.
func (b *FileBackend) Size() int64 { return b.size }

// ReadAt implements Backend.
func (b *FileBackend) ReadAt(_ context.Context, p []byte, off int64) error {
	if err := CheckRange(b.size, off, int64(len(p))); err != nil {
		return err
	}
	n, err := b.f.ReadAt(p, off)
	if errors.Is(err, io.EOF) {
		clear(p[n:])
		err = nil
	}
	return err
}

// WriteAt implements Backend.
func (b *FileBackend) WriteAt(_ context.Context, p []byte, off int64) error {
	if err := CheckRange(b.size, off, int64(len(p))); err != nil {
		return err
	}
	_, err := b.f.WriteAt(p, off)
	return err
}

// Flush implements Backend.
func (b *FileBackend) Flush(context.Context) error { return unix.Fdatasync(int(b.f.Fd())) }

// Trim implements Backend.
func (b *FileBackend) Trim(_ context.Context, off, length int64) error {
	if err := CheckRange(b.size, off, length); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	return unix.Fallocate(int(b.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
}

// WriteZeroes implements Backend.
func (b *FileBackend) WriteZeroes(ctx context.Context, off, length int64) error {
	return b.Trim(ctx, off, length)
}
