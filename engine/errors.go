package engine

import "errors"

var (
	// ErrOutOfRange is returned for I/O that does not fit inside the volume.
	ErrOutOfRange = errors.New("engine: request out of range")
	// ErrNoHealthyReplica is returned when every replica has failed.
	ErrNoHealthyReplica = errors.New("engine: no healthy replica")
	// ErrClosed is returned for I/O after Close.
	ErrClosed = errors.New("engine: volume closed")
	// ErrReplicaRefused is returned when a replica cannot join the volume
	// (wrong size, unreachable, bad token).
	ErrReplicaRefused = errors.New("engine: replica refused")
	// ErrBusy is returned when an operation conflicts with one in progress
	// (for example a second rebuild of the same replica).
	ErrBusy = errors.New("engine: operation in progress")
	// ErrSlowReplica is the reason a replica was dropped by SlowPolicy.
	ErrSlowReplica = errors.New("engine: replica persistently slower than the others")
	// ErrNotFound is returned for an unknown replica address.
	ErrNotFound = errors.New("engine: not found")
)

var (
	// ErrSnapshotExists is returned when every replica already has a
	// snapshot of that name.
	ErrSnapshotExists = errors.New("engine: snapshot already exists")
	// ErrInvalid is returned for a malformed argument (bad snapshot name).
	ErrInvalid = errors.New("engine: invalid argument")
	// ErrShrink is returned by Grow for a size smaller than the volume's.
	ErrShrink = errors.New("engine: volume cannot shrink")
	// ErrAttached is returned for operations that need the volume detached
	// (revert) while a frontend client is connected.
	ErrAttached = errors.New("engine: volume is attached")
)

// requestError reports whether a replica's error is about the request
// (unknown or duplicate name, bad argument) rather than the replica's health.
func requestError(err error) bool {
	return errors.Is(err, ErrSnapshotExists) || errors.Is(err, ErrNotFound) || errors.Is(err, ErrInvalid) ||
		errors.Is(err, ErrOutOfRange)
}
