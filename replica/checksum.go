package replica

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
)

// layerChecksum hashes a layer file: SHA-256 over, for every allocated
// block in ascending order, the block number (8 bytes, big endian)
// followed by the block's 4 KiB. Two layers with the same allocated blocks
// and the same data hash equal regardless of the filesystem they live on,
// so replicas (and a rebuilt copy) can be compared layer by layer.
func layerChecksum(f *os.File, size int64) (string, error) {
	ext, err := dataExtents(int(f.Fd()), 0, size)
	if err != nil {
		return "", ioErr("seek data", err)
	}
	h := sha256.New()
	buf := make([]byte, 1<<20)
	var num [8]byte
	for _, e := range ext {
		for off := e.Offset; off < e.End(); {
			n := min(e.End()-off, int64(len(buf)))
			if _, err := f.ReadAt(buf[:n], off); err != nil {
				return "", ioErr("read", err)
			}
			for k := int64(0); k < n; k += BlockSize {
				binary.BigEndian.PutUint64(num[:], uint64(off+k)/BlockSize)
				h.Write(num[:])
				h.Write(buf[k : k+BlockSize])
			}
			off += n
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Checksum computes the checksum of one layer: a snapshot by name, or the
// head for "" (meaningful only while writes are paused). A snapshot's
// checksum is stored in the metadata; Scrub later verifies against it.
// The computation runs without blocking I/O or other control operations.
func (r *Replica) Checksum(layerName string) (string, error) {
	r.opMu.Lock()
	if err := r.checkOpen(); err != nil {
		r.opMu.Unlock()
		return "", err
	}
	pos, err := r.position(layerName)
	if err != nil {
		r.opMu.Unlock()
		return "", err
	}
	l := r.layers[pos-1]
	if l.rec.Incomplete {
		r.opMu.Unlock()
		return "", fmt.Errorf("%w: snapshot %q is still being received", ErrRebuilding, layerName)
	}
	id, gen, size := l.rec.ID, l.gen, r.size
	f, err := os.Open(l.path)
	if err == nil {
		r.pin(id)
		defer r.unpin(id)
	}
	r.opMu.Unlock()
	if err != nil {
		return "", err
	}
	defer f.Close()
	sum, err := layerChecksum(f, size)
	if err != nil || layerName == "" {
		return sum, err
	}
	r.opMu.Lock()
	defer r.opMu.Unlock()
	if err := r.storeChecksum(layerName, id, gen, sum); err != nil {
		return "", err
	}
	return sum, nil
}

// storeChecksum records sum for the snapshot if it is still the same layer
// with the same content and has no checksum yet. Callers hold opMu.
func (r *Replica) storeChecksum(name, id string, gen uint64, sum string) error {
	pos, ok := r.names[name]
	if r.closed || !ok || r.layers[pos-1].rec.ID != id || r.layers[pos-1].gen != gen || r.meta.Layers[pos-1].Checksum != "" {
		return nil
	}
	m := r.meta.clone()
	m.Layers[pos-1].Checksum = sum
	if err := r.writeMeta(m); err != nil {
		return err
	}
	r.mu.Lock()
	r.setChain(m, r.layers)
	r.mu.Unlock()
	return nil
}

// Scrub re-reads the metadata file (verifying its CRC32C) and every
// complete snapshot layer. A snapshot with a stored checksum is verified
// against it; one without gets its checksum computed and stored (sealed).
// Silent corruption of snapshot data is reported in ScrubReport.Corrupt
// and as an ErrCorrupt error naming the layers. The head is mutable and
// not covered; it is verified once it becomes a snapshot.
func (r *Replica) Scrub() (ScrubReport, error) {
	var rep ScrubReport
	r.opMu.Lock()
	if err := r.checkOpen(); err != nil {
		r.opMu.Unlock()
		return rep, err
	}
	if err := r.ms.verify(); err != nil {
		r.opMu.Unlock()
		return rep, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	type item struct {
		name, id, want, path string
		gen                  uint64
	}
	var items []item
	size := r.size
	for _, l := range r.layers[:len(r.layers)-1] {
		if !l.rec.Incomplete {
			items = append(items, item{l.rec.Name, l.rec.ID, l.rec.Checksum, l.path, l.gen})
		}
	}
	r.opMu.Unlock()
	for _, it := range items {
		f, err := os.Open(it.path)
		if err != nil {
			continue // removed meanwhile
		}
		sum, err := layerChecksum(f, size)
		f.Close()
		if err != nil {
			return rep, err
		}
		switch {
		case it.want == "":
			r.opMu.Lock()
			err := r.storeChecksum(it.name, it.id, it.gen, sum)
			r.opMu.Unlock()
			if err != nil {
				return rep, err
			}
			rep.Sealed = append(rep.Sealed, it.name)
		case it.want == sum:
			rep.Verified = append(rep.Verified, it.name)
		default:
			// the layer may have been coalesced into meanwhile
			r.opMu.Lock()
			pos, ok := r.names[it.name]
			same := ok && r.layers[pos-1].rec.ID == it.id && r.layers[pos-1].gen == it.gen
			r.opMu.Unlock()
			if same {
				rep.Corrupt = append(rep.Corrupt, it.name)
			}
		}
	}
	if len(rep.Corrupt) > 0 {
		return rep, fmt.Errorf("%w: snapshot data does not match its checksum: %v", ErrCorrupt, rep.Corrupt)
	}
	return rep, nil
}
