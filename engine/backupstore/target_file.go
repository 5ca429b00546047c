package backupstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// tmpPrefix marks the file target's in-flight writes; List skips them and
// GC removes stale ones.
const tmpPrefix = ".tmp-"

// fileTarget stores objects as files under a root directory. Writes go to a
// temp file in the destination directory, are fsynced, renamed into place
// and the directory fsynced, so a crash leaves the old object or the new one.
type fileTarget struct {
	root string
}

func openFileTarget(root string) (Target, error) {
	root = filepath.Clean(root)
	st, err := os.Stat(root)
	if errors.Is(err, fs.ErrNotExist) {
		// The parent must exist: a typo should not silently create a tree.
		if pst, perr := os.Stat(filepath.Dir(root)); perr != nil || !pst.IsDir() {
			return nil, fmt.Errorf("%w: file://%s: parent directory does not exist", ErrBucketNotFound, root)
		}
		if err := os.Mkdir(root, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("backupstore: file://%s: %w", root, err)
		}
		return &fileTarget{root: root}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("backupstore: file://%s: %w", root, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("%w: file://%s is not a directory", ErrBadURL, root)
	}
	return &fileTarget{root: root}, nil
}

func (t *fileTarget) String() string { return "file://" + t.root }

func (t *fileTarget) path(key string) (string, error) {
	if key == "" || strings.HasPrefix(key, "/") || strings.Contains(key, "..") || strings.Contains(key, "\\") {
		return "", fmt.Errorf("%w: object key %q", ErrInvalidName, key)
	}
	return filepath.Join(t.root, filepath.FromSlash(key)), nil
}

func (t *fileTarget) Get(ctx context.Context, key string) ([]byte, error) {
	p, err := t.path(key)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	return b, err
}

func (t *fileTarget) GetInto(ctx context.Context, key string, buf []byte, limit int64) ([]byte, error) {
	f, err := t.open(key)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() > limit {
		return nil, tooLarge(key, st.Size(), limit)
	}
	n := int(st.Size())
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(f, buf); err != nil {
		return nil, fmt.Errorf("backupstore: get %s: %w", key, err)
	}
	return buf, nil
}

// open opens key's file for reading; a missing one is ErrNotFound.
func (t *fileTarget) open(key string) (*os.File, error) {
	p, err := t.path(key)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	return f, err
}

// GetRange reads n bytes at off of key with one ReadAt.
func (t *fileTarget) GetRange(ctx context.Context, key string, off, n int64, buf []byte) ([]byte, error) {
	f, err := t.open(key)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if int64(cap(buf)) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	got, err := f.ReadAt(buf, off)
	if int64(got) < n {
		if err == nil || errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: %s: %d of %d bytes at %d", errShortObject, key, got, n, off)
		}
		return nil, fmt.Errorf("backupstore: get %s: %w", key, err)
	}
	return buf, nil
}

func (t *fileTarget) Exists(ctx context.Context, key string) (bool, error) {
	p, err := t.path(key)
	if err != nil {
		return false, err
	}
	_, err = os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

func (t *fileTarget) Put(ctx context.Context, key string, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p, err := t.path(key)
	if err != nil {
		return err
	}
	if err := put(p, data); err != nil {
		if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
			err = fmt.Errorf("%w: %w", ErrTargetFull, err)
		}
		return fmt.Errorf("backupstore: put %s: %w", key, err)
	}
	return nil
}

// put writes data to p durably: a temporary file in p's directory,
// fsync, rename, fsync the directory. A failed write leaves no file.
func put(p string, data []byte) error {
	dir := filepath.Dir(p)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(dir, tmpPrefix+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, werr := f.Write(data)
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp, p)
	}
	if werr != nil {
		_ = os.Remove(tmp)
		return werr
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (t *fileTarget) Delete(ctx context.Context, key string) error {
	p, err := t.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

func (t *fileTarget) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	// Walk from the deepest directory the prefix names, then filter.
	start := t.root
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		start = filepath.Join(t.root, filepath.FromSlash(prefix[:i]))
	}
	err := filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if d.IsDir() || strings.HasPrefix(d.Name(), tmpPrefix) {
			return nil
		}
		rel, err := filepath.Rel(t.root, p)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if !strings.HasPrefix(key, prefix) {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		return fn(ObjectInfo{Key: key, Size: info.Size(), ModTime: info.ModTime()})
	})
	return err
}

// removeStaleTemps deletes in-flight files older than the cutoff left by
// crashed writers. Only the file target has them.
func (t *fileTarget) removeStaleTemps(olderThan func(fs.FileInfo) bool) (int, error) {
	n := 0
	err := filepath.WalkDir(t.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasPrefix(d.Name(), tmpPrefix) {
			return nil
		}
		if info, err := d.Info(); err == nil && olderThan(info) {
			if os.Remove(p) == nil {
				n++
			}
		}
		return nil
	})
	return n, err
}
