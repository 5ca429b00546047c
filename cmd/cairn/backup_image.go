package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/cairnstore/cairn/engine/backupstore"
)

// imageRestore is one `backup restore --file` request.
type imageRestore struct {
	volume, backup, since, path string
	progress                    func(backupstore.Progress)
}

// restoreImage restores a backup into a raw image. A regular file (or a new
// one) is produced under a temporary name and renamed over path only after
// the restore succeeded and was synced; a block device is written in place.
func restoreImage(ctx context.Context, s *backupstore.Store, o imageRestore) (backupstore.RestoreResult, error) {
	info, err := s.Resolve(ctx, o.volume, o.backup)
	if err != nil {
		return backupstore.RestoreResult{}, err
	}
	st, err := os.Stat(o.path)
	switch {
	case err == nil && st.Mode()&os.ModeDevice != 0:
		return restoreDevice(ctx, s, o, info)
	case err == nil && !st.Mode().IsRegular():
		return backupstore.RestoreResult{}, fmt.Errorf("restore into %s: not a regular file or block device", o.path)
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return backupstore.RestoreResult{}, fmt.Errorf("restore into %s: %w", o.path, err)
	case err != nil && o.since != "":
		return backupstore.RestoreResult{}, fmt.Errorf("restore into %s: --since %s needs the image that holds that backup: %w", o.path, o.since, err)
	}
	return restoreViaTemp(ctx, s, o, info)
}

// restoreViaTemp restores into a temporary file beside o.path (a copy of
// o.path for an incremental restore), syncs it, renames it over o.path and
// syncs the directory. On any failure the temporary file is removed and
// o.path is untouched.
func restoreViaTemp(ctx context.Context, s *backupstore.Store, o imageRestore, info backupstore.BackupInfo) (res backupstore.RestoreResult, err error) {
	dir := filepath.Dir(o.path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(o.path)+".restore-*")
	if err != nil {
		return res, fmt.Errorf("restore into %s: %w", o.path, err)
	}
	tmpPath := tmp.Name()
	defer func() {
		if err != nil {
			_ = os.Remove(tmpPath)
		}
	}()
	if o.since != "" {
		err = copyImage(tmp, o.path)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return res, fmt.Errorf("restore into %s: copy the image for --since: %w", o.path, err)
	}
	if res, err = restoreInto(ctx, s, o, info, tmpPath, o.since == ""); err != nil {
		return res, err
	}
	if err = os.Rename(tmpPath, o.path); err != nil {
		return res, fmt.Errorf("restore into %s: %w", o.path, err)
	}
	if err = syncDir(dir); err != nil {
		return res, fmt.Errorf("restore into %s: sync directory: %w", o.path, err)
	}
	return res, nil
}

// restoreDevice restores into an existing block device in place: a device
// cannot be replaced by rename, so a failure leaves it partly overwritten
// and the error says so.
func restoreDevice(ctx context.Context, s *backupstore.Store, o imageRestore, info backupstore.BackupInfo) (backupstore.RestoreResult, error) {
	res, err := restoreInto(ctx, s, o, info, o.path, false)
	if err != nil {
		return res, fmt.Errorf("block device %s was written in place and is now partly overwritten; it holds no usable image: %w", o.path, err)
	}
	return res, nil
}

// restoreInto runs the restore into the file or device at path and syncs
// it. zeroed says path reads as zeros (a new file), so zero blocks are
// skipped.
func restoreInto(ctx context.Context, s *backupstore.Store, o imageRestore, info backupstore.BackupInfo, path string, zeroed bool) (res backupstore.RestoreResult, err error) {
	sink, _, err := backupstore.CreateFileSink(path, info.Size)
	if err != nil {
		return res, fmt.Errorf("restore into %s: %w", o.path, err)
	}
	defer func() {
		if cerr := sink.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("restore into %s: %w", o.path, cerr)
		}
	}()
	res, err = s.Restore(ctx, backupstore.RestoreOptions{Volume: o.volume, Backup: info.ID, Sink: sink,
		SinkZeroed: zeroed, Since: o.since, Progress: o.progress})
	if err != nil {
		return res, err
	}
	if err := sink.Sync(); err != nil {
		return res, fmt.Errorf("restore into %s: sync: %w", o.path, err)
	}
	return res, nil
}

// copyImage copies the image at path into dst (copy_file_range where the
// filesystem offers it).
func copyImage(dst *os.File, path string) error {
	src, err := os.Open(path)
	if err != nil {
		return err
	}
	defer src.Close()
	_, err = io.Copy(dst, src)
	return err
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
