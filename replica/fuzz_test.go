package replica

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

func frame(h reqHeader, payload []byte) []byte {
	b := make([]byte, reqHeaderSize)
	h.Payload = uint32(len(payload))
	h.encode(b)
	return append(b, payload...)
}

// FuzzFrames feeds an arbitrary byte stream to the server's frame decoder
// and dispatches every well-formed frame to a real (small) replica: no
// input may panic, over-allocate or produce an oversized reply.
func FuzzFrames(f *testing.F) {
	ctl, _ := json.Marshal(ctlRequest{Name: "s1", Labels: map[string]string{"a": "b"}})
	f.Add(frame(reqHeader{Op: opPing, ID: 1}, nil))
	f.Add(frame(reqHeader{Op: opWrite, ID: 2, Offset: 100, Length: 5}, []byte("hello")))
	f.Add(append(frame(reqHeader{Op: opRead, ID: 3, Offset: 4090, Length: 10}, nil),
		frame(reqHeader{Op: opTrim, ID: 4, Length: 8192}, nil)...))
	f.Add(frame(reqHeader{Op: opSnapshot, ID: 5}, ctl))
	f.Add(frame(reqHeader{Op: opDiff, ID: 6, Length: 1 << 16}, []byte(`{"from":"s1"}`)))
	f.Add(frame(reqHeader{Op: opReadLayer, ID: 7, Length: 4096}, []byte{0}))
	f.Add(frame(reqHeader{Op: opWriteLayer, ID: 8, Length: 4096}, append([]byte{2, 's', '1'}, make([]byte, 4096)...)))
	f.Add(frame(reqHeader{Op: 200, ID: 9}, []byte("x")))
	ext := encodeExtents([]Extent{{0, 4096}, {8192, 4096}})
	f.Add(frame(reqHeader{Op: opWriteLayerExtents, ID: 10, Length: 2}, append(append([]byte{2, 's', '1'}, ext...), make([]byte, 8192)...)))
	f.Add(frame(reqHeader{Op: opChangedSince, ID: 11, Length: 1 << 20}, []byte(`{"generation":1}`)))
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
		hdr := make([]byte, reqHeaderSize)
		for {
			h, payload, _, err := readRequest(rd, hdr)
			if err != nil {
				return
			}
			if h.Payload > maxPayload || len(payload) != int(h.Payload) {
				t.Fatalf("decoder accepted payload %d", h.Payload)
			}
			resp := fuzzServer.handle(context.Background(), h, payload)
			if len(resp.payload) > maxPayload {
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
	b := make([]byte, respHeaderSize)
	(&respHeader{Op: opRead, Status: 3, Payload: 10, ID: 99}).encode(b)
	f.Add(b)
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := decodeRespHeader(b)
		if err == nil && h.Payload > maxPayload {
			t.Fatalf("accepted payload %d", h.Payload)
		}
		if _, err := decodeExtents(b); err == nil && len(b)%16 != 0 {
			t.Fatal("accepted bad extent list")
		}
	})
}
