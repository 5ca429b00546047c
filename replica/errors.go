package replica

import "errors"

// Sentinel errors. Functions wrap them with context (fmt.Errorf("...: %w")),
// so callers test with errors.Is. Over the network they travel as error
// codes and are re-created by the client, so errors.Is works on both sides.
var (
	// ErrOutOfRange: an I/O or extent request outside [0, Size).
	ErrOutOfRange = errors.New("replica: out of range")
	// ErrTooLarge: a single request or frame larger than the protocol allows.
	ErrTooLarge = errors.New("replica: request too large")
	// ErrInvalid: a malformed argument (negative length, bad name, ...).
	ErrInvalid = errors.New("replica: invalid argument")
	// ErrNotFound: no snapshot or layer with that name.
	ErrNotFound = errors.New("replica: not found")
	// ErrExists: a snapshot with that name already exists, or Create on a
	// directory that already holds a replica.
	ErrExists = errors.New("replica: already exists")
	// ErrCorrupt: metadata or layer data failed verification (CRC32C,
	// checksum, structure). The message names the file or layer.
	ErrCorrupt = errors.New("replica: corrupt")
	// ErrClosed: the replica, server or client was closed.
	ErrClosed = errors.New("replica: closed")
	// ErrSizeMismatch: the directory holds a replica of a different size.
	ErrSizeMismatch = errors.New("replica: size mismatch")
	// ErrShrink: Grow with a size smaller than the volume's.
	ErrShrink = errors.New("replica: volume cannot shrink")
	// ErrRebuilding: the operation is not allowed while the chain holds
	// layers that are still being received (see ResetForRebuild).
	ErrRebuilding = errors.New("replica: rebuild in progress")
	// ErrUnaligned: a partial-block write that would need read-modify-write
	// against lower layers that are still being received during a rebuild.
	// The engine must send block-aligned writes to a rebuilding replica.
	ErrUnaligned = errors.New("replica: unaligned write during rebuild")
	// ErrReadOnly: a write to a layer that is not being received.
	ErrReadOnly = errors.New("replica: layer is read-only")
	// ErrNoSpace: the data directory's filesystem is full (ENOSPC).
	ErrNoSpace = errors.New("replica: no space left on device")
	// ErrAuth: the peer failed the token challenge.
	ErrAuth = errors.New("replica: authentication failed")
	// ErrProtocol: a malformed frame or an unknown message.
	ErrProtocol = errors.New("replica: protocol error")
	// ErrUnknownOp: the server does not know the requested operation.
	ErrUnknownOp = errors.New("replica: unknown operation")
	// ErrStaleGeneration: SetGeneration with a value lower than the stored one.
	ErrStaleGeneration = errors.New("replica: generation would go backwards")
	// ErrUnreachable: a PullLayer could not connect to (or authenticate
	// with) its source replica.
	ErrUnreachable = errors.New("replica: source unreachable")
)
