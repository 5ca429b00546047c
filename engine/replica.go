package engine

import (
	"context"
	"time"
)

// Extent is a byte range [Offset, Offset+Length) of the volume.
type Extent struct {
	Offset int64
	Length int64
}

// SnapshotInfo describes one snapshot layer of a replica's chain.
type SnapshotInfo struct {
	Name       string
	Labels     map[string]string
	Created    time.Time
	Incomplete bool
	// Size is the volume size when the snapshot was taken (smaller than
	// the volume's for a snapshot taken before a Grow).
	Size int64
	// checksum is the source layer's checksum, passed on to a rebuild
	// target so that it verifies the layer it received.
	checksum string
}

// ReplicaInfo is what a replica reports about itself.
type ReplicaInfo struct {
	Size       int64
	Generation uint64
	// Snapshots are oldest first; the head sits on the last one.
	Snapshots []SnapshotInfo
	// Rebuilding is true while some layer is still being received; such a
	// replica must never serve reads.
	Rebuilding bool
	// SessionStart, when not 0, is the generation since which the replica
	// tracked every head change (see replica.Info.SessionStart).
	SessionStart uint64
}

// Replica is the engine's connection to one replica: the I/O path, the
// control operations, and both sides of a rebuild. The replica package's
// client implements it through an adapter (replicaclient.go); tests use an
// in-memory replica.
type Replica interface {
	ReadAt(ctx context.Context, p []byte, off int64) error
	WriteAt(ctx context.Context, p []byte, off int64) error
	Flush(ctx context.Context) error
	Trim(ctx context.Context, off, length int64) error
	WriteZeroes(ctx context.Context, off, length int64) error
	Ping(ctx context.Context) error

	Info(ctx context.Context) (ReplicaInfo, error)
	// SetGeneration durably stores the generation (never lower).
	SetGeneration(ctx context.Context, gen uint64) error
	// Grow raises the replica's volume size (never lower; the same size
	// is a no-op).
	Grow(ctx context.Context, size int64) error
	Snapshot(ctx context.Context, name string, labels map[string]string) error
	Revert(ctx context.Context, name string) error
	RemoveSnapshot(ctx context.Context, name string) error

	// Rebuild source: the allocated extents of one snapshot layer (only
	// what that layer itself holds) and reads of that layer's data.
	LayerExtents(ctx context.Context, layer string) ([]Extent, error)
	ReadLayer(ctx context.Context, layer string, p []byte, off int64) error

	// Rebuild target: keep the oldest committed layers named in keep (a
	// prefix of its chain shared with the source), replace the rest with
	// empty incomplete layers as listed in receive and an empty head that
	// takes live (block-aligned) writes at once; then receive each
	// incomplete layer's data and commit it.
	ResetForRebuild(ctx context.Context, keep []string, receive []SnapshotInfo) error
	WriteLayer(ctx context.Context, layer string, p []byte, off int64) error
	// WriteLayerExtents writes many block-aligned extents of a layer
	// being received; data holds their bytes back to back.
	WriteLayerExtents(ctx context.Context, layer string, extents []Extent, data []byte) error
	CommitLayer(ctx context.Context, layer string) error

	Close() error
}

// asyncReplica is implemented by replicas with a pipelined I/O path
// (replicaClient): I/O legs complete through their owner without a
// goroutine per request. Other replicas are driven through the Replica
// methods on a goroutine.
type asyncReplica interface {
	submit(l *ioLeg)
	setIOTimeout(d time.Duration)
}

// Dialer connects to a replica by address.
type Dialer func(ctx context.Context, addr string) (Replica, error)

// ReplicaMode is the role of a replica in the volume.
type ReplicaMode string

const (
	// ModeHealthy replicas take writes and serve reads.
	ModeHealthy ReplicaMode = "healthy"
	// ModeRebuilding replicas take writes only while they receive the
	// layers they lack.
	ModeRebuilding ReplicaMode = "rebuilding"
	// ModeResyncing replicas hold the volume but may differ from the
	// source in blocks written when the engine last stopped without a
	// clean shutdown; they take every write and are repaired from the
	// source (see resync.go), and are never read until then.
	ModeResyncing ReplicaMode = "resyncing"
	// ModeStale replicas are reachable but older than the volume; they are
	// never read and wait for a rebuild.
	ModeStale ReplicaMode = "stale"
	// ModeFailed replicas errored, timed out or were refused.
	ModeFailed ReplicaMode = "failed"
)
