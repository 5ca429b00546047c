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
	// ErrNotFound is returned for an unknown replica address.
	ErrNotFound = errors.New("engine: not found")
)
