package wire

import (
	"encoding/binary"
	"fmt"
	"time"
)

// Protocol constants (see doc.go).
const (
	Magic     = "CAIRNRP1"
	Version   = 2
	NonceSize = 32
	MACSize   = 32

	ReqHeaderSize  = 32
	RespHeaderSize = 16

	// MaxIO is the largest data payload of one frame; clients split larger
	// reads and writes into several frames.
	MaxIO = 4 << 20
	// MaxPayload bounds every frame's payload: I/O data plus a layer name.
	MaxPayload = MaxIO + 256
	// MaxControlPayload bounds JSON control payloads in requests.
	MaxControlPayload = 1 << 20
	// MaxInflight bounds the requests a server handles at once per
	// connection.
	MaxInflight = 128
	// ExtentWindow bounds the range of one extent query (LayerExtents,
	// Diff, ChangedSince) so its reply always fits a frame.
	ExtentWindow = 1 << 30
	// HandshakeTimeout bounds the authentication exchange.
	HandshakeTimeout = 10 * time.Second
)

// Operation codes.
const (
	OpRead        uint8 = 1
	OpWrite       uint8 = 2
	OpFlush       uint8 = 3
	OpTrim        uint8 = 4
	OpWriteZeroes uint8 = 5
	OpPing        uint8 = 6

	OpInfo           uint8 = 16
	OpSetGeneration  uint8 = 17
	OpSnapshot       uint8 = 18
	OpRevert         uint8 = 19
	OpRemoveSnapshot uint8 = 20
	OpDiff           uint8 = 21
	OpChecksum       uint8 = 22
	OpScrub          uint8 = 23
	OpChangedSince   uint8 = 24
	// OpGrow: offset = new volume size.
	OpGrow uint8 = 25

	OpLayerExtents    uint8 = 32
	OpReadLayer       uint8 = 33
	OpResetForRebuild uint8 = 34
	OpWriteLayer      uint8 = 35
	OpCommitLayer     uint8 = 36
	// OpWriteLayerExtents: length = extent count; payload = name prefix |
	// count x (offset u64, length u64) | data of all extents back to back.
	OpWriteLayerExtents uint8 = 37
	// OpPullLayer: JSON {name, source}, offset/length = range. The server
	// copies the layer's allocated extents in the range from the replica
	// at source (authenticating with its own token) into its incomplete
	// layer of that name; the reply is {"bytes": n}.
	OpPullLayer uint8 = 38
)

// ReadsInto reports whether op's reply payload is data read into the
// request's buffer (Read, ReadLayer).
func ReadsInto(op uint8) bool { return op == OpRead || op == OpReadLayer }

// IsControl reports whether op carries a JSON control payload.
func IsControl(op uint8) bool {
	return op >= OpInfo && op != OpReadLayer && op != OpWriteLayer && op != OpWriteLayerExtents
}

// ReqHeader is the fixed request header:
//
//	op u8 | flags u8 (0) | reserved u16 (0) | payload length u32 |
//	id u64 | offset u64 | length u64
type ReqHeader struct {
	Op      uint8
	Payload uint32
	ID      uint64
	Offset  uint64
	Length  uint64
}

// Encode writes h into b[:ReqHeaderSize].
func (h *ReqHeader) Encode(b []byte) {
	b[0] = h.Op
	b[1], b[2], b[3] = 0, 0, 0
	binary.LittleEndian.PutUint32(b[4:], h.Payload)
	binary.LittleEndian.PutUint64(b[8:], h.ID)
	binary.LittleEndian.PutUint64(b[16:], h.Offset)
	binary.LittleEndian.PutUint64(b[24:], h.Length)
}

// DecodeReqHeader parses and validates a request header. An error means
// the stream cannot be trusted any more: the server closes the connection.
func DecodeReqHeader(b []byte) (ReqHeader, error) {
	if len(b) < ReqHeaderSize {
		return ReqHeader{}, fmt.Errorf("%w: short header", ErrProtocol)
	}
	h := ReqHeader{
		Op:      b[0],
		Payload: binary.LittleEndian.Uint32(b[4:]),
		ID:      binary.LittleEndian.Uint64(b[8:]),
		Offset:  binary.LittleEndian.Uint64(b[16:]),
		Length:  binary.LittleEndian.Uint64(b[24:]),
	}
	if b[1] != 0 || b[2] != 0 || b[3] != 0 {
		return h, fmt.Errorf("%w: non-zero flags/reserved bytes", ErrProtocol)
	}
	if h.Payload > MaxPayload {
		return h, fmt.Errorf("%w: payload of %d bytes exceeds %d", ErrProtocol, h.Payload, MaxPayload)
	}
	return h, nil
}

// RespHeader is the fixed response header:
//
//	op u8 | status u8 | reserved u16 (0) | payload length u32 | id u64
type RespHeader struct {
	Op      uint8
	Status  uint8
	Payload uint32
	ID      uint64
}

// Encode writes h into b[:RespHeaderSize].
func (h *RespHeader) Encode(b []byte) {
	b[0] = h.Op
	b[1] = h.Status
	b[2], b[3] = 0, 0
	binary.LittleEndian.PutUint32(b[4:], h.Payload)
	binary.LittleEndian.PutUint64(b[8:], h.ID)
}

// DecodeRespHeader parses and validates a response header.
func DecodeRespHeader(b []byte) (RespHeader, error) {
	if len(b) < RespHeaderSize {
		return RespHeader{}, fmt.Errorf("%w: short header", ErrProtocol)
	}
	h := RespHeader{Op: b[0], Status: b[1], Payload: binary.LittleEndian.Uint32(b[4:]), ID: binary.LittleEndian.Uint64(b[8:])}
	if b[2] != 0 || b[3] != 0 {
		return h, fmt.Errorf("%w: non-zero reserved bytes", ErrProtocol)
	}
	if h.Payload > MaxPayload {
		return h, fmt.Errorf("%w: payload of %d bytes exceeds %d", ErrProtocol, h.Payload, MaxPayload)
	}
	return h, nil
}

// LayerPrefix returns the payload prefix naming a layer:
// name length u8 | name. Callers check that name is at most 255 bytes.
func LayerPrefix(name string) []byte {
	b := make([]byte, 1+len(name))
	b[0] = uint8(len(name))
	copy(b[1:], name)
	return b
}

// SplitLayerPayload splits a payload that starts with a layer prefix.
func SplitLayerPayload(p []byte) (string, []byte, error) {
	if len(p) < 1 || len(p) < 1+int(p[0]) {
		return "", nil, fmt.Errorf("%w: bad layer name prefix", ErrInvalid)
	}
	n := int(p[0])
	return string(p[1 : 1+n]), p[1+n:], nil
}
