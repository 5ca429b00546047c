package replica

import "github.com/cairnstore/cairn/replica/wire"

// Sentinel errors, defined with the protocol in package wire (see there
// for each one's meaning). Functions wrap them with context
// (fmt.Errorf("...: %w")), so callers test with errors.Is. Over the
// network they travel as status codes and are re-created by the client,
// so errors.Is works on both sides.
var (
	ErrOutOfRange      = wire.ErrOutOfRange
	ErrTooLarge        = wire.ErrTooLarge
	ErrInvalid         = wire.ErrInvalid
	ErrNotFound        = wire.ErrNotFound
	ErrExists          = wire.ErrExists
	ErrCorrupt         = wire.ErrCorrupt
	ErrClosed          = wire.ErrClosed
	ErrSizeMismatch    = wire.ErrSizeMismatch
	ErrShrink          = wire.ErrShrink
	ErrRebuilding      = wire.ErrRebuilding
	ErrUnaligned       = wire.ErrUnaligned
	ErrReadOnly        = wire.ErrReadOnly
	ErrNoSpace         = wire.ErrNoSpace
	ErrAuth            = wire.ErrAuth
	ErrProtocol        = wire.ErrProtocol
	ErrUnknownOp       = wire.ErrUnknownOp
	ErrStaleGeneration = wire.ErrStaleGeneration
	ErrUnreachable     = wire.ErrUnreachable
	ErrTimeout         = wire.ErrTimeout
)

// RemoteError is an error returned by the server; it unwraps to the
// sentinel error of its status.
type RemoteError = wire.RemoteError
