package wire

import "errors"

// Sentinel errors of the replica protocol (re-exported by package
// replica). Functions wrap them with context (fmt.Errorf("...: %w")), so
// callers test with errors.Is. Over the network they travel as status
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
	// ErrTimeout: a request on a connection with an I/O timeout (SetTimeout)
	// waited longer than it; the connection is closed.
	ErrTimeout = errors.New("replica: I/O timed out")
)

// Status codes carry sentinel errors across the wire; 0 is success.
var statusErrors = []error{
	1: ErrOutOfRange, 2: ErrTooLarge, 3: ErrInvalid, 4: ErrNotFound, 5: ErrExists,
	6: ErrCorrupt, 7: ErrClosed, 8: ErrSizeMismatch, 9: ErrRebuilding, 10: ErrUnaligned,
	11: ErrReadOnly, 12: ErrNoSpace, 13: ErrAuth, 14: ErrProtocol, 15: ErrUnknownOp,
	16: ErrStaleGeneration, 17: ErrUnreachable, 18: ErrShrink,
}

// StatusOther is the status of an error that is none of the sentinels.
const StatusOther = 255

// StatusOf returns the status code that carries err.
func StatusOf(err error) uint8 {
	for i, e := range statusErrors {
		if e != nil && errors.Is(err, e) {
			return uint8(i)
		}
	}
	return StatusOther
}

// RemoteError is an error returned by the server. It unwraps to the
// sentinel error of its status, so errors.Is(err, ErrOutOfRange) works
// on the client.
type RemoteError struct {
	Status  uint8
	Message string
}

func (e *RemoteError) Error() string { return e.Message }

func (e *RemoteError) Unwrap() error {
	if int(e.Status) < len(statusErrors) {
		return statusErrors[e.Status]
	}
	return nil
}
