package replica

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"

	"github.com/cairnstore/cairn/internal/durable"
)

const (
	metaName    = "replica.meta"
	metaMagic   = "CAIRNRM1"
	metaVersion = 1
	// metaVersionMerge marks a file with a pending head merge (MergeFrom):
	// versions that do not know it refuse to open the replica instead of
	// dropping the unmerged head data.
	metaVersionMerge = 2
	// metaVersionMergeInto marks a pending merge into a layer other than
	// the head (MergeInto): a reader that only knows version 2 would copy
	// into the head and must refuse instead.
	metaVersionMergeInto = 3
	lockName             = "replica.lock"
	// maxLayers bounds the chain; owners are uint16 chain positions.
	maxLayers = 32000
	// maxSize bounds the volume size (1 PiB).
	maxSize = 1 << 50
)

// metaFile is the JSON payload of replica.meta. Layers are oldest first;
// the last one is the head.
type metaFile struct {
	Size       int64         `json:"size"`
	BlockSize  int           `json:"blockSize"`
	Generation uint64        `json:"generation"`
	Layers     []layerRecord `json:"layers"`
	// MergeFrom, when set, is the id of a former head whose allocated
	// blocks must be copied into the head before the replica serves I/O:
	// RemoveSnapshot merging a small head down into its parent crashed
	// after committing the new chain. Open redoes the copy (idempotent)
	// and clears it.
	MergeFrom string `json:"mergeFrom,omitempty"`
	// MergeInto is the id of the layer MergeFrom is copied into; empty
	// means the head. It is set when a snapshot smaller than its parent
	// was merged down into the parent's file (which took its place).
	MergeInto string `json:"mergeInto,omitempty"`
	// SlotSize is the size of each of the file's two copies (see
	// metastore.go); 0 in a file holding a single frame.
	SlotSize int64 `json:"slotSize,omitempty"`
}

// layerRecord is one layer of the chain: its data file is layer-<ID>.img.
type layerRecord struct {
	ID string `json:"id"`
	SnapshotInfo
}

func (l layerRecord) fileName() string { return "layer-" + l.ID + ".img" }

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,252}$`)

func validName(s string) error {
	if !nameRE.MatchString(s) {
		return fmt.Errorf("%w: snapshot name %q (want 1-253 of [A-Za-z0-9._:@+-], starting alphanumeric)", ErrInvalid, s)
	}
	return nil
}

func validID(s string) bool {
	if len(s) != 16 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// decodeMeta verifies and parses replica.meta content. name is the file
// path used in error messages.
func decodeMeta(name string, buf []byte) (*metaFile, error) {
	version, payload, err := durable.Decode(name, metaMagic, buf)
	return decodeMetaPayload(name, version, payload, err)
}

// decodeMetaPrefix decodes the frame at the start of buf (a slot).
func decodeMetaPrefix(name string, buf []byte) (*metaFile, error) {
	version, payload, err := durable.DecodePrefix(name, metaMagic, buf)
	return decodeMetaPayload(name, version, payload, err)
}

func decodeMetaPayload(name string, version uint32, payload []byte, err error) (*metaFile, error) {
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	if version != metaVersion && version != metaVersionMerge && version != metaVersionMergeInto {
		return nil, fmt.Errorf("%w: %s: unsupported metadata version %d", ErrCorrupt, name, version)
	}
	var m metaFile
	if err := json.Unmarshal(payload, &m); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, name, err)
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, name, err)
	}
	if (m.MergeFrom != "") != (version >= metaVersionMerge) || (m.MergeInto != "") != (version == metaVersionMergeInto) {
		return nil, fmt.Errorf("%w: %s: version %d with mergeFrom %q", ErrCorrupt, name, version, m.MergeFrom)
	}
	return &m, nil
}

func (m *metaFile) validate() error {
	if m.BlockSize != BlockSize {
		return fmt.Errorf("block size %d, want %d", m.BlockSize, BlockSize)
	}
	if m.Size <= 0 || m.Size%BlockSize != 0 || m.Size > maxSize {
		return fmt.Errorf("bad volume size %d", m.Size)
	}
	if len(m.Layers) == 0 || len(m.Layers) > maxLayers {
		return fmt.Errorf("bad layer count %d", len(m.Layers))
	}
	ids := map[string]bool{}
	names := map[string]bool{}
	for i, l := range m.Layers {
		if !validID(l.ID) || ids[l.ID] {
			return fmt.Errorf("layer %d: bad or duplicate id %q", i, l.ID)
		}
		ids[l.ID] = true
		if l.Size < 0 || l.Size > m.Size || l.Size%BlockSize != 0 {
			return fmt.Errorf("layer %d: bad size %d in a volume of %d", i, l.Size, m.Size)
		}
		if i == len(m.Layers)-1 {
			if l.Name != "" || l.Incomplete {
				return errors.New("head layer must be unnamed and complete")
			}
			continue
		}
		if err := validName(l.Name); err != nil || names[l.Name] {
			return fmt.Errorf("layer %d: bad or duplicate snapshot name %q", i, l.Name)
		}
		names[l.Name] = true
	}
	if m.MergeFrom != "" && (!validID(m.MergeFrom) || ids[m.MergeFrom]) {
		return fmt.Errorf("bad or duplicate mergeFrom id %q", m.MergeFrom)
	}
	if m.MergeInto != "" && (m.MergeFrom == "" || !ids[m.MergeInto]) {
		return fmt.Errorf("mergeInto %q without mergeFrom or not in the chain", m.MergeInto)
	}
	return nil
}

func (m *metaFile) encode() []byte {
	payload, err := json.Marshal(m)
	if err != nil {
		panic(err) // plain data, cannot fail
	}
	v := uint32(metaVersion)
	if m.MergeFrom != "" {
		v = metaVersionMerge
	}
	if m.MergeInto != "" {
		v = metaVersionMergeInto
	}
	return durable.Encode(metaMagic, v, payload)
}

func (m *metaFile) clone() *metaFile {
	c := *m
	c.Layers = make([]layerRecord, len(m.Layers))
	copy(c.Layers, m.Layers)
	return &c
}
