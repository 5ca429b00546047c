package backupstore

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// BackupInfo is one complete backup as listed in its volume's catalogue.
type BackupInfo struct {
	ID          string            `json:"id"`
	Volume      string            `json:"volume"`
	Snapshot    string            `json:"snapshot,omitempty"`
	Parent      string            `json:"parent,omitempty"`
	Created     time.Time         `json:"created"`
	Completed   time.Time         `json:"completed"`
	Size        int64             `json:"size"`
	BlockSize   int               `json:"blockSize"`
	Compression string            `json:"compression"`
	Labels      map[string]string `json:"labels,omitempty"`
	// Blocks is the number of blocks of the volume; ZeroBlocks of them are
	// all-zero and not stored.
	Blocks     int `json:"blocks"`
	ZeroBlocks int `json:"zeroBlocks"`
	// ReadBytes is what the backup read from its source; NewBlocks and
	// NewBytes (stored size) are the blocks it uploaded because the target
	// did not have them.
	ReadBytes int64 `json:"readBytes"`
	NewBlocks int   `json:"newBlocks"`
	NewBytes  int64 `json:"newBytes"`
}

// catalogue is the payload of volumes/<volume>/catalogue.
type catalogue struct {
	FormatVersion int       `json:"formatVersion"`
	Volume        string    `json:"volume"`
	Updated       time.Time `json:"updated"`
	// Generation counts the catalogue's writes (0 in catalogues written
	// before it existed); see checkRollback.
	Generation uint64       `json:"generation,omitempty"`
	Backups    []BackupInfo `json:"backups"`
}

// Manifest lists every block of a volume at one backup.
type Manifest struct {
	FormatVersion int               `json:"formatVersion"`
	Volume        string            `json:"volume"`
	Backup        string            `json:"backup"`
	Snapshot      string            `json:"snapshot,omitempty"`
	Parent        string            `json:"parent,omitempty"`
	Created       time.Time         `json:"created"`
	Size          int64             `json:"size"`
	BlockSize     int               `json:"blockSize"`
	BlockCount    int               `json:"blockCount"`
	BlockIDHash   string            `json:"blockIdHash"`
	Labels        map[string]string `json:"labels,omitempty"`
	// Generation is the catalogue generation that lists this backup (0 in
	// manifests written before it existed).
	Generation uint64 `json:"catalogueGeneration,omitempty"`
	// Blocks holds BlockCount ids; the zero id means an all-zero block.
	Blocks []BlockID `json:"-"`
}

// blockLen is the length of block i of a volume of the given size.
func blockLen(size int64, bs int, i int) int {
	off := int64(i) * int64(bs)
	return int(min(int64(bs), size-off))
}

func blockCount(size int64, bs int) int { return int((size + int64(bs) - 1) / int64(bs)) }

// metadata objects are bound to their key so they cannot be swapped.
func aadFor(key string) []byte { return []byte(key) }

func (s *Store) putManifest(ctx context.Context, m *Manifest) error {
	hdr, err := json.Marshal(m)
	if err != nil {
		return err
	}
	payload := binary.AppendUvarint(make([]byte, 0, 10+len(hdr)+32*len(m.Blocks)), uint64(len(hdr)))
	payload = append(payload, hdr...)
	for _, id := range m.Blocks {
		payload = append(payload, id[:]...)
	}
	key := manifestKey(m.Volume, m.Backup)
	obj, err := s.codec.encode(nil, kindManifest, CompressionZstd, payload, aadFor(key))
	if err != nil {
		return err
	}
	return s.t.Put(ctx, key, obj)
}

// ReadManifest reads the manifest of a backup listed in the catalogue and
// checks that the two agree.
func (s *Store) ReadManifest(ctx context.Context, volume, backup string) (*Manifest, error) {
	_, m, err := s.load(ctx, volume, backup)
	return m, err
}

// Resolve returns the catalogue entry of a backup ("" means the latest)
// after checking it against its manifest, so callers may size a restore
// destination from it.
func (s *Store) Resolve(ctx context.Context, volume, backup string) (BackupInfo, error) {
	info, err := s.resolve(ctx, volume, backup)
	if err != nil {
		return info, err
	}
	if _, err := s.checkedManifest(ctx, info); err != nil {
		return BackupInfo{}, err
	}
	return info, nil
}

// load returns a listed backup's catalogue entry and its manifest, checked
// against each other.
func (s *Store) load(ctx context.Context, volume, backup string) (BackupInfo, *Manifest, error) {
	info, err := s.resolve(ctx, volume, backup)
	if err != nil {
		return info, nil, err
	}
	m, err := s.checkedManifest(ctx, info)
	return info, m, err
}

// checkedManifest reads the manifest of a catalogue entry and checks that
// the two agree.
func (s *Store) checkedManifest(ctx context.Context, info BackupInfo) (*Manifest, error) {
	m, err := s.readManifest(ctx, info.Volume, info.ID)
	if err != nil {
		return nil, err
	}
	if err := checkAgrees(info, m); err != nil {
		return nil, err
	}
	return m, nil
}

// readManifest reads, bounds-checks and decodes a manifest. Nothing is
// allocated from its fields before they are validated.
func (s *Store) readManifest(ctx context.Context, volume, backup string) (*Manifest, error) {
	key := manifestKey(volume, backup)
	obj, err := getInto(ctx, s.t, key, nil, maxObject(maxManifestPayload))
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, fmt.Errorf("%w: manifest of %s/%s is missing", ErrBackupNotFound, volume, backup)
		}
		return nil, err
	}
	payload, err := s.codec.decode(nil, kindManifest, obj, aadFor(key))
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", key, err)
	}
	m, ids, err := parseManifest(key, payload)
	if err != nil {
		return nil, err
	}
	if err := m.validate(key, volume, backup, s.cfg.BlockIDHash, len(ids)); err != nil {
		return nil, err
	}
	m.Blocks = make([]BlockID, m.BlockCount)
	for i := range m.Blocks {
		copy(m.Blocks[i][:], ids[32*i:])
	}
	return m, nil
}

// parseManifest splits a manifest payload into its JSON header and the
// block ids that follow it.
func parseManifest(key string, payload []byte) (*Manifest, []byte, error) {
	n, k := binary.Uvarint(payload)
	if k <= 0 || n > maxManifestHeader || uint64(len(payload)-k) < n {
		return nil, nil, fmt.Errorf("%w: manifest %s: bad header length", ErrCorrupt, key)
	}
	m := &Manifest{}
	if err := json.Unmarshal(payload[k:k+int(n)], m); err != nil {
		return nil, nil, fmt.Errorf("%w: manifest %s: %v", ErrCorrupt, key, err)
	}
	if m.FormatVersion != FormatVersion {
		return nil, nil, fmt.Errorf("%w: manifest %s: format version %d", ErrFormat, key, m.FormatVersion)
	}
	return m, payload[k+int(n):], nil
}

// readCatalogue reads a volume's catalogue and checks it was not rolled
// back (see checkRollback).
func (s *Store) readCatalogue(ctx context.Context, volume string) (*catalogue, error) {
	c, err := s.readCatalogueObject(ctx, volume)
	if err != nil {
		return nil, err
	}
	if err := s.checkRollback(ctx, c, false); err != nil {
		return nil, err
	}
	return c, nil
}

// readCatalogueObject reads, bounds-checks and decodes a volume's
// catalogue; a volume without one has an empty catalogue.
func (s *Store) readCatalogueObject(ctx context.Context, volume string) (*catalogue, error) {
	key := catalogueKey(volume)
	obj, err := getInto(ctx, s.t, key, nil, maxObject(maxCataloguePayload))
	if errors.Is(err, ErrNotFound) {
		return &catalogue{FormatVersion: FormatVersion, Volume: volume}, nil
	}
	if err != nil {
		return nil, err
	}
	payload, err := s.codec.decode(nil, kindCatalogue, obj, aadFor(key))
	if err != nil {
		return nil, fmt.Errorf("catalogue %s: %w", key, err)
	}
	c := &catalogue{}
	if err := json.Unmarshal(payload, c); err != nil {
		return nil, fmt.Errorf("%w: catalogue %s: %v", ErrCorrupt, key, err)
	}
	if c.FormatVersion != FormatVersion {
		return nil, fmt.Errorf("%w: catalogue %s: format version %d", ErrFormat, key, c.FormatVersion)
	}
	if err := c.validate(key, volume); err != nil {
		return nil, err
	}
	return c, nil
}

func (s *Store) writeCatalogue(ctx context.Context, c *catalogue) error {
	c.FormatVersion = FormatVersion
	c.Updated = time.Now().UTC()
	c.Generation++
	sort.SliceStable(c.Backups, func(i, j int) bool {
		a, b := c.Backups[i], c.Backups[j]
		if !a.Created.Equal(b.Created) {
			return a.Created.Before(b.Created)
		}
		return a.ID < b.ID
	})
	payload, err := json.Marshal(c)
	if err != nil {
		return err
	}
	key := catalogueKey(c.Volume)
	obj, err := s.codec.encode(nil, kindCatalogue, CompressionZstd, payload, aadFor(key))
	if err != nil {
		return err
	}
	return s.t.Put(ctx, key, obj)
}

// updateCatalogue runs fn on the volume's catalogue under the volume's
// exclusive lock and writes the result, so concurrent writers never lose
// each other's entries.
func (s *Store) updateCatalogue(ctx context.Context, volume, purpose string, fn func(context.Context, *catalogue) error) error {
	return s.withVolumeLock(ctx, volume, purpose, func(lctx context.Context, l *lock) error {
		c, err := s.readCatalogueObject(lctx, volume)
		if err != nil {
			return err
		}
		// Holding the volume lock, no commit is in flight: a manifest
		// ahead of the catalogue is a rollback or an interrupted commit.
		if err := s.checkRollback(lctx, c, true); err != nil {
			return err
		}
		if err := fn(lctx, c); err != nil {
			return err
		}
		if err := l.valid(); err != nil {
			return err
		}
		return s.writeCatalogue(lctx, c)
	})
}

// withVolumeLock runs fn holding the volume's exclusive lock; fn's context
// is cancelled if the lock is lost.
func (s *Store) withVolumeLock(ctx context.Context, volume, purpose string, fn func(context.Context, *lock) error) error {
	l, lctx, err := s.acquire(ctx, scopeVolumePrefix+volume, true, purpose, s.opts.LockWait)
	if err != nil {
		return err
	}
	defer l.release()
	return fn(lctx, l)
}

// List returns a volume's complete backups, oldest first. It reads one
// object.
func (s *Store) List(ctx context.Context, volume string) ([]BackupInfo, error) {
	if err := validName("volume", volume); err != nil {
		return nil, err
	}
	c, err := s.readCatalogue(ctx, volume)
	if err != nil {
		return nil, err
	}
	return c.Backups, nil
}

// Get returns one complete backup of a volume.
func (s *Store) Get(ctx context.Context, volume, id string) (BackupInfo, error) {
	list, err := s.List(ctx, volume)
	if err != nil {
		return BackupInfo{}, err
	}
	for _, b := range list {
		if b.ID == id {
			return b, nil
		}
	}
	return BackupInfo{}, fmt.Errorf("%w: %s/%s", ErrBackupNotFound, volume, id)
}

// Latest returns the newest complete backup of a volume, or ErrBackupNotFound.
func (s *Store) Latest(ctx context.Context, volume string) (BackupInfo, error) {
	list, err := s.List(ctx, volume)
	if err != nil {
		return BackupInfo{}, err
	}
	if len(list) == 0 {
		return BackupInfo{}, fmt.Errorf("%w: volume %s has no backups", ErrBackupNotFound, volume)
	}
	return list[len(list)-1], nil
}

// Volumes lists the volumes that have a catalogue in the target.
func (s *Store) Volumes(ctx context.Context) ([]string, error) {
	var out []string
	err := s.t.List(ctx, "volumes/", func(o ObjectInfo) error {
		rest := strings.TrimPrefix(o.Key, "volumes/")
		if v, ok := strings.CutSuffix(rest, "/catalogue"); ok && !strings.Contains(v, "/") {
			out = append(out, v)
		}
		return nil
	})
	sort.Strings(out)
	return out, err
}
