package replica

import (
	"encoding/binary"
	"fmt"
)

// Payload codecs of the extent operations; the framing, opcodes, limits
// and status codes are in package wire (see its doc.go).

// encodeExtents appends the binary extent list (offset u64, length u64
// each) to b.
func encodeExtents(b []byte, ext []Extent) []byte {
	for _, e := range ext {
		b = binary.LittleEndian.AppendUint64(b, uint64(e.Offset))
		b = binary.LittleEndian.AppendUint64(b, uint64(e.Length))
	}
	return b
}

// decodeExtents parses a binary extent list.
func decodeExtents(b []byte) ([]Extent, error) {
	if len(b)%16 != 0 {
		return nil, fmt.Errorf("%w: extent list of %d bytes", ErrProtocol, len(b))
	}
	ext := make([]Extent, len(b)/16)
	for i := range ext {
		ext[i].Offset = int64(binary.LittleEndian.Uint64(b[16*i:]))
		ext[i].Length = int64(binary.LittleEndian.Uint64(b[16*i+8:]))
	}
	return ext, nil
}

// splitExtentsPayload parses the body of a WriteLayerExtents frame (after
// the layer prefix): n extents of 16 bytes followed by their data.
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
