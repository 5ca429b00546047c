package replica

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Wire protocol. See doc.go for the description and diagram.

const (
	protoMagic   = "CAIRNRP1"
	protoVersion = 1
	nonceSize    = 32
	macSize      = 32

	reqHeaderSize  = 32
	respHeaderSize = 16
	// maxPayload bounds every frame's payload: I/O data plus a layer name.
	maxPayload = MaxIO + 256
	// maxControlPayload bounds JSON control payloads in requests.
	maxControlPayload = 1 << 20
	// maxInflight bounds concurrent requests per connection on the server.
	maxInflight = 128
)

// Operation codes.
const (
	opRead        uint8 = 1
	opWrite       uint8 = 2
	opFlush       uint8 = 3
	opTrim        uint8 = 4
	opWriteZeroes uint8 = 5
	opPing        uint8 = 6

	opInfo           uint8 = 16
	opSetGeneration  uint8 = 17
	opSnapshot       uint8 = 18
	opRevert         uint8 = 19
	opRemoveSnapshot uint8 = 20
	opDiff           uint8 = 21
	opChecksum       uint8 = 22
	opScrub          uint8 = 23
	opChangedSince   uint8 = 24
	// opGrow: offset = new volume size.
	opGrow uint8 = 25

	opLayerExtents    uint8 = 32
	opReadLayer       uint8 = 33
	opResetForRebuild uint8 = 34
	opWriteLayer      uint8 = 35
	opCommitLayer     uint8 = 36
	// opWriteLayerExtents: length = extent count; payload = name prefix |
	// count x (offset u64, length u64) | data of all extents back to back.
	opWriteLayerExtents uint8 = 37
	// opPullLayer: JSON {name, source}, offset/length = range. The server
	// copies the layer's allocated extents in the range from the replica
	// at source (authenticating with its own token) into its incomplete
	// layer of that name; the reply is {"bytes": n}.
	opPullLayer uint8 = 38
)

// reqHeader is the fixed request header:
//
//	op u8 | flags u8 (0) | reserved u16 (0) | payload length u32 |
//	id u64 | offset u64 | length u64
type reqHeader struct {
	Op      uint8
	Payload uint32
	ID      uint64
	Offset  uint64
	Length  uint64
}

func (h *reqHeader) encode(b []byte) {
	b[0] = h.Op
	b[1], b[2], b[3] = 0, 0, 0
	binary.LittleEndian.PutUint32(b[4:], h.Payload)
	binary.LittleEndian.PutUint64(b[8:], h.ID)
	binary.LittleEndian.PutUint64(b[16:], h.Offset)
	binary.LittleEndian.PutUint64(b[24:], h.Length)
}

// decodeReqHeader parses and validates a request header. An error means
// the stream cannot be trusted any more: the server closes the connection.
func decodeReqHeader(b []byte) (reqHeader, error) {
	if len(b) < reqHeaderSize {
		return reqHeader{}, fmt.Errorf("%w: short header", ErrProtocol)
	}
	h := reqHeader{
		Op:      b[0],
		Payload: binary.LittleEndian.Uint32(b[4:]),
		ID:      binary.LittleEndian.Uint64(b[8:]),
		Offset:  binary.LittleEndian.Uint64(b[16:]),
		Length:  binary.LittleEndian.Uint64(b[24:]),
	}
	if b[1] != 0 || b[2] != 0 || b[3] != 0 {
		return h, fmt.Errorf("%w: non-zero flags/reserved bytes", ErrProtocol)
	}
	if h.Payload > maxPayload {
		return h, fmt.Errorf("%w: payload of %d bytes exceeds %d", ErrProtocol, h.Payload, maxPayload)
	}
	return h, nil
}

// respHeader is the fixed response header:
//
//	op u8 | status u8 | reserved u16 (0) | payload length u32 | id u64
type respHeader struct {
	Op      uint8
	Status  uint8
	Payload uint32
	ID      uint64
}

func (h *respHeader) encode(b []byte) {
	b[0] = h.Op
	b[1] = h.Status
	b[2], b[3] = 0, 0
	binary.LittleEndian.PutUint32(b[4:], h.Payload)
	binary.LittleEndian.PutUint64(b[8:], h.ID)
}

func decodeRespHeader(b []byte) (respHeader, error) {
	if len(b) < respHeaderSize {
		return respHeader{}, fmt.Errorf("%w: short header", ErrProtocol)
	}
	h := respHeader{Op: b[0], Status: b[1], Payload: binary.LittleEndian.Uint32(b[4:]), ID: binary.LittleEndian.Uint64(b[8:])}
	if b[2] != 0 || b[3] != 0 {
		return h, fmt.Errorf("%w: non-zero reserved bytes", ErrProtocol)
	}
	if h.Payload > maxPayload {
		return h, fmt.Errorf("%w: payload of %d bytes exceeds %d", ErrProtocol, h.Payload, maxPayload)
	}
	return h, nil
}

// Status codes carry sentinel errors across the wire.
var statusErrors = []error{
	1: ErrOutOfRange, 2: ErrTooLarge, 3: ErrInvalid, 4: ErrNotFound, 5: ErrExists,
	6: ErrCorrupt, 7: ErrClosed, 8: ErrSizeMismatch, 9: ErrRebuilding, 10: ErrUnaligned,
	11: ErrReadOnly, 12: ErrNoSpace, 13: ErrAuth, 14: ErrProtocol, 15: ErrUnknownOp,
	16: ErrStaleGeneration, 17: ErrUnreachable, 18: ErrShrink,
}

const statusOther = 255

func statusOf(err error) uint8 {
	for i, e := range statusErrors {
		if e != nil && errors.Is(err, e) {
			return uint8(i)
		}
	}
	return statusOther
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

// layerPayload prefixes data with a length-prefixed layer name:
// name length u8 | name | data.
func layerPayload(name string) []byte {
	b := make([]byte, 1+len(name))
	b[0] = uint8(len(name))
	copy(b[1:], name)
	return b
}

func splitLayerPayload(p []byte) (string, []byte, error) {
	if len(p) < 1 || len(p) < 1+int(p[0]) {
		return "", nil, fmt.Errorf("%w: bad layer name prefix", ErrInvalid)
	}
	n := int(p[0])
	return string(p[1 : 1+n]), p[1+n:], nil
}

// splitExtentsPayload parses the body of a WriteLayerExtents frame (after
// the name prefix): n extents of 16 bytes followed by their data.
func splitExtentsPayload(p []byte, n uint64) ([]Extent, []byte, error) {
	if n > uint64(len(p))/16 {
		return nil, nil, fmt.Errorf("%w: %d extents do not fit a payload of %d bytes", ErrInvalid, n, len(p))
	}
	ext, err := decodeExtents(p[:16*n])
	if err != nil {
		return nil, nil, err
	}
	for _, e := range ext {
		if e.Offset < 0 || e.Length < 0 {
			return nil, nil, fmt.Errorf("%w: extent [%d, +%d)", ErrOutOfRange, e.Offset, e.Length)
		}
	}
	return ext, p[16*n:], nil
}

// readFull reads exactly len(b) bytes.
func readFull(r io.Reader, b []byte) error {
	_, err := io.ReadFull(r, b)
	return err
}
