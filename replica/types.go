package replica

import (
	"io"
	"time"

	"github.com/cairnstore/cairn/replica/wire"
)

// BlockSize is the allocation and index granularity of a replica (4 KiB).
// Any offset and length are accepted; partial blocks are read-modify-written.
const BlockSize = 4096

// MaxIO is the largest payload of one protocol frame. The Client splits
// larger reads and writes into several frames; the local Replica accepts any
// size.
const MaxIO = wire.MaxIO

// Extent is a byte range [Offset, Offset+Length) of the volume.
type Extent struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
}

// End returns Offset+Length.
func (e Extent) End() int64 { return e.Offset + e.Length }

// SnapshotInfo describes one snapshot layer of the chain.
type SnapshotInfo struct {
	// Name is unique within the replica. The engine uses the same name on
	// every replica of a volume; rebuild matches layers by name.
	Name string `json:"name"`
	// Labels are user labels given at creation.
	Labels map[string]string `json:"labels,omitempty"`
	// Created is the creation time (UTC, set by the replica that created
	// the layer, carried over by rebuild).
	Created time.Time `json:"created"`
	// Checksum is the hex SHA-256 layer checksum once computed by Checksum
	// or Scrub ("" before). Scrub verifies the layer against it.
	Checksum string `json:"checksum,omitempty"`
	// Incomplete is true while the layer is being received by a rebuild
	// (BeginLayer ... CommitLayer).
	Incomplete bool `json:"incomplete,omitempty"`
	// Size is the volume size when the snapshot was taken: a snapshot
	// taken before a Grow keeps the smaller size, and reads of the volume
	// past it find no data in this layer. Info always reports it; a
	// rebuild passes it on to the target.
	Size int64 `json:"size,omitempty"`
}

// Info is the replica's state as reported by Replica.Info and Client.Info.
type Info struct {
	// Size of the volume in bytes.
	Size int64 `json:"size"`
	// BlockSize is the index granularity (BlockSize).
	BlockSize int `json:"blockSize"`
	// Generation is the durable epoch set by the engine (SetGeneration).
	Generation uint64 `json:"generation"`
	// Snapshots lists the snapshot layers oldest first; the head (live,
	// writable layer) sits on top of the last one.
	Snapshots []SnapshotInfo `json:"snapshots"`
	// Rebuilding is true when some snapshot is Incomplete; such a replica
	// must not serve reads until the engine finished the rebuild.
	Rebuilding bool `json:"rebuilding,omitempty"`
	// SessionStart is the odd generation this replica process saw the
	// volume opened at after a clean close (an even generation), when it
	// has tracked every head change since (ChangedSince(SessionStart));
	// 0 when it has not (restarted since, reverted, rebuilt). The engine
	// resyncs only those regions after an unclean shutdown.
	SessionStart uint64 `json:"sessionStart,omitempty"`
}

// SnapshotReader reads the volume as it was when a snapshot was taken. It
// stays valid when the snapshot is removed or reverted past while open.
type SnapshotReader interface {
	io.ReaderAt
	io.Closer
	// Size is the volume size in bytes.
	Size() int64
	// Name is the snapshot name.
	Name() string
}

// ScrubReport is the result of Scrub.
type ScrubReport struct {
	// Verified lists snapshots whose data matched their stored checksum.
	Verified []string `json:"verified,omitempty"`
	// Sealed lists snapshots that had no checksum yet; Scrub computed and
	// stored one (later scrubs verify against it).
	Sealed []string `json:"sealed,omitempty"`
	// Corrupt lists snapshots whose data no longer matches their checksum.
	Corrupt []string `json:"corrupt,omitempty"`
}
