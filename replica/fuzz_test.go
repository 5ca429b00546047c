package replica

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"

	"github.com/cairnstore/cairn/replica/wire"
	"github.com/stretchr/testify/require"
)

func frame(h wire.ReqHeader, payload []byte) []byte {
	b := make([]byte, wire.ReqHeaderSize)
	h.Payload = uint32(len(payload))
	h.Encode(b)
	return append(b, payload...)
}

// FuzzFrames feeds an arbitrary byte stream to the server's frame decoder
// and dispatches every well-formed frame to a real (small) replica: no
// input may panic, over-allocate or produce an oversized reply.
func FuzzFrames(f *testing.F) {
	ctl, _ := json.Marshal(ctlRequest{Name: "s1", Labels: map[string]string{"a": "b"}})
	f.Add(frame(wire.ReqHeader{Op: wire.OpPing, ID: 1}, nil))
	f.Add(frame(wire.ReqHeader{Op: wire.OpWrite, ID: 2, Offset: 100, Length: 5}, []byte("hello")))
	f.Add(append(frame(wire.ReqHeader{Op: wire.OpRead, ID: 3, Offset: 4090, Length: 10}, nil),
		frame(wire.ReqHeader{Op: wire.OpTrim, ID: 4, Length: 8192}, nil)...))
	f.Add(frame(wire.ReqHeader{Op: wire.OpSnapshot, ID: 5}, ctl))
	f.Add(frame(wire.ReqHeader{Op: wire.OpDiff, ID: 6, Length: 1 << 16}, []byte(`{"from":"s1"}`)))
	f.Add(frame(wire.ReqHeader{Op: wire.OpReadLayer, ID: 7, Length: 4096}, []byte{0}))
	f.Add(frame(wire.ReqHeader{Op: wire.OpWriteLayer, ID: 8, Length: 4096}, append([]byte{2, 's', '1'}, make([]byte, 4096)...)))
	f.Add(frame(wire.ReqHeader{Op: 200, ID: 9}, []byte("x")))
	ext := encodeExtents(nil, []Extent{{0, 4096}, {8192, 4096}})
	f.Add(frame(wire.ReqHeader{Op: wire.OpWriteLayerExtents, ID: 10, Length: 2}, append(append([]byte{2, 's', '1'}, ext...), make([]byte, 8192)...)))
	f.Add(frame(wire.ReqHeader{Op: wire.OpChangedSince, ID: 11, Length: 1 << 20}, []byte(`{"generation":1}`)))
	f.Add([]byte{1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})
	// One replica serves every input. It lives in the fuzz target's own
	// temp dir and is closed (waiting for background work such as the
	// spare head file) before that dir is removed; cleanups run LIFO.
	dir := f.TempDir()
	r, err := Create(dir+"/fz", 1<<16)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { r.Close() })
	fuzzServer, err := NewServer(r, "t", nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
		rd := bytes.NewReader(stream)
		hdr := make([]byte, wire.ReqHeaderSize)
		for {
			h, payload, _, err := readRequest(rd, hdr)
			if err != nil {
				return
			}
			if h.Payload > wire.MaxPayload || len(payload) != int(h.Payload) {
				t.Fatalf("decoder accepted payload %d", h.Payload)
			}
			resp := fuzzServer.handle(context.Background(), h, payload)
			if len(resp.payload) > wire.MaxPayload {
				t.Fatalf("reply of %d bytes", len(resp.payload))
			}
			if resp.h.ID != h.ID {
				t.Fatalf("reply id %d for request %d", resp.h.ID, h.ID)
			}
			if resp.release != nil {
				resp.release()
			}
		}
	})
}

// FuzzMetadata: the metadata loader never panics; whatever it accepts is
// a valid chain that round-trips.
func FuzzMetadata(f *testing.F) {
	m := &metaFile{Size: 1 << 20, BlockSize: BlockSize, Generation: 3, Layers: []layerRecord{
		{ID: "0123456789abcdef", SnapshotInfo: SnapshotInfo{Name: "a", Labels: map[string]string{"k": "v"}}},
		{ID: "fedcba9876543210"},
	}}
	f.Add(m.encode())
	f.Add((&metaFile{Size: BlockSize, BlockSize: BlockSize, Layers: []layerRecord{{ID: "0000000000000000"}}}).encode())
	f.Add([]byte("CAIRNRM1"))
	f.Add([]byte{})
	// the two-slot layout, second copy damaged
	two := make([]byte, 2*metaSlotMin)
	m.SlotSize = metaSlotMin
	copy(two, m.encode())
	copy(two[metaSlotMin:], m.encode())
	two[metaSlotMin+30] ^= 1
	f.Add(two)
	f.Fuzz(func(t *testing.T, buf []byte) {
		got, _, _, err := parseMeta("replica.meta", buf)
		if err != nil {
			require.ErrorIs(t, err, ErrCorrupt)
			require.Contains(t, err.Error(), "replica.meta")
			return
		}
		require.NoError(t, got.validate())
		again, err := decodeMeta("replica.meta", got.encode())
		require.NoError(t, err)
		require.Equal(t, got.Layers, again.Layers)
	})
}

// FuzzResponseHeader covers the client's decoder.
func FuzzResponseHeader(f *testing.F) {
	b := make([]byte, wire.RespHeaderSize)
	(&wire.RespHeader{Op: wire.OpRead, Status: 3, Payload: 10, ID: 99}).Encode(b)
	f.Add(b)
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := wire.DecodeRespHeader(b)
		if err == nil && h.Payload > wire.MaxPayload {
			t.Fatalf("accepted payload %d", h.Payload)
		}
		if _, err := decodeExtents(b); err == nil && len(b)%16 != 0 {
			t.Fatal("accepted bad extent list")
		}
	})
}
