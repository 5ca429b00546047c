// Package fuse serves an engine.Backend as a single regular file through
// FUSE, for nodes whose kernel has no nbd module. The file DIR/NAME has the
// volume's size and is opened with direct I/O, so the kernel's page cache
// never holds volume data; fsync on it flushes every replica. Putting the
// file on a loop device (AttachLoop) gives a real block device that mkfs
// and mount accept:
//
//	app -> ext4 -> /dev/loopN -> DIR/NAME (FUSE, direct I/O) -> engine.Backend
//
// A loop device with direct I/O submits its requests as asynchronous
// direct I/O. The mount asks for CAP_ASYNC_DIO and opens the file with
// FOPEN_PARALLEL_DIRECT_WRITES, so the kernel keeps up to 128 of them in
// flight instead of one at a time per loop device, and writes to different
// ranges do not take the inode lock exclusively (the engine orders
// overlapping writes).
//
// The protocol server is this package's (server.go; go-fuse provides the
// wire structs only). One goroutine reads /dev/fuse without blocking until
// it is empty and only then waits in the Go poller: a burst of requests
// costs no thread wake-up per request. READ, WRITE and FSYNC go to the engine's
// Volume.Submit without a goroutine each, and their replies are written
// from the completion; a request is answered only when the backend has it,
// and fsync is still a Flush of every replica. Interrupted requests run to
// the end (a write must not stop half-way across the replicas).
//
// The serving process must not open the volume file through os.OpenFile:
// Go registers the descriptor with its poller, and the kernel then asks
// this server (FUSE_POLL) inside epoll_ctl, holding the lock of the epoll
// instance the server waits in (and keeping the thread's P, so a garbage
// collection stopping the world waits too): the process deadlocks. Open
// it with unix.Open and os.NewFile, which Go never polls (the tests'
// openServed). Other processes (losetup, mkfs, the node agent) are
// unaffected.
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
