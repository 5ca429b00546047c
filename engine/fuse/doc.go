// Package fuse serves an engine.Backend as a single regular file through
// FUSE (go-fuse), for nodes whose kernel has no nbd module. The file
// DIR/NAME has the volume's size and is opened with direct I/O, so the
// kernel's page cache never holds volume data; fsync on it flushes every
// replica. Putting the file on a loop device (AttachLoop) gives a real block
// device that mkfs and mount accept:
//
//	app -> ext4 -> /dev/loopN -> DIR/NAME (FUSE, direct I/O) -> engine.Backend
//
// Mapping of file operations:
//
//	read/write          -> ReadAt/WriteAt (no I/O past the end of the volume)
//	fsync, fdatasync    -> Flush
//	fallocate PUNCH_HOLE -> Trim, ZERO_RANGE -> WriteZeroes, plain -> no-op
//	truncate            -> refused unless to the current size
//
// The file's size is the backend's: after the engine grows the volume,
// Mount.NotifySize drops the kernel's cached attributes so stat sees the
// new size at once, and RefreshLoopCapacity makes a loop device on the file
// take it (LOOP_SET_CAPACITY), after which the file system on it can be
// grown online.
package fuse
