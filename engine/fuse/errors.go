package fuse

import "errors"

// ErrNotBacked: a loop device is not (or no longer) backed by the file
// (RefreshLoopCapacity).
var ErrNotBacked = errors.New("fuse: loop device not backed by the file")
