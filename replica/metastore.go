package replica

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cairnstore/cairn/internal/durable"
)

// replica.meta holds two copies of the metadata frame, like bbolt's two
// meta pages, so that a commit is an overwrite of blocks the file already
// owns (a data write and a device flush) rather than a new file and a
// rename (two journal commits, whose latency on a busy ext4 disk reaches
// tens of milliseconds). See doc.go for the layout and the rules.
const (
	// metaSlotMin is the smallest slot; slots are powers of two.
	metaSlotMin = 64 << 10
	// metaFileMax bounds what Open reads.
	metaFileMax = 4 * (durable.MaxPayload + durable.HeaderSize)
)

// metaStore writes replica.meta. Commits are serialized by the caller
// (opMu, or Open before the replica is shared).
type metaStore struct {
	path string
	f    *os.File // nil: the file must be rewritten on the next commit
	slot int64    // slot size; the file is 2*slot bytes

	// mirror copies the primary (slot 0) to slot 1 in the background
	// after each commit; the next commit waits for it.
	mirror    sync.WaitGroup
	mirrorErr error
	last      []byte // the frame of the last commit
}

// parseMeta verifies and decodes replica.meta content: either the
// two-slot layout (slot 0 wins when valid, else slot 1) or a single frame
// filling the file (written by earlier versions). It also reports the
// slot size (0 for a single frame) and whether a slot was unreadable.
func parseMeta(name string, buf []byte) (*metaFile, int64, bool, error) {
	if m, err := decodeMeta(name, buf); err == nil {
		return m, 0, false, nil
	}
	slot := int64(len(buf)) / 2
	if slot < metaSlotMin || int64(len(buf)) != 2*slot || slot&(slot-1) != 0 {
		return nil, 0, false, fmt.Errorf("%w: %s: %d bytes is neither one metadata frame nor two slots", ErrCorrupt, name, len(buf))
	}
	var errs []error
	for i := int64(0); i < 2; i++ {
		sname := fmt.Sprintf("%s (slot %d)", name, i)
		m, err := decodeMetaPrefix(sname, buf[i*slot:(i+1)*slot])
		if err == nil && m.SlotSize != slot {
			err = fmt.Errorf("%w: %s: written for slots of %d bytes, file has %d", ErrCorrupt, sname, m.SlotSize, slot)
		}
		if err == nil {
			return m, slot, i > 0, nil
		}
		errs = append(errs, err)
	}
	return nil, 0, false, fmt.Errorf("%w: both copies are unreadable: %v; %v", ErrCorrupt, errs[0], errs[1])
}

// loadMeta reads replica.meta. degraded is true when one slot was
// unreadable (torn by a crash during a commit, or damaged since).
func loadMeta(path string) (m *metaFile, s *metaStore, degraded bool, err error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, nil, false, err
	}
	buf, err := io.ReadAll(io.LimitReader(f, metaFileMax+1))
	if err != nil {
		f.Close()
		return nil, nil, false, err
	}
	m, slot, degraded, err := parseMeta(path, buf)
	if err != nil {
		f.Close()
		return nil, nil, false, err
	}
	s = &metaStore{path: path, f: f, slot: slot}
	if slot == 0 { // single frame: rewritten as two slots on first commit
		f.Close()
		s.f = nil
	}
	return m, s, degraded, nil
}

// createMeta writes a new replica.meta for m.
func createMeta(path string, m *metaFile) (*metaStore, error) {
	s := &metaStore{path: path}
	if err := s.rewrite(m); err != nil {
		return nil, err
	}
	return s, nil
}

// commit makes m the durable metadata. The new frame goes to slot 0 and
// is fdatasynced (the commit point); slot 1 is brought up to date in the
// background. Invariant between commits: slot 1 holds the previous or the
// current state, so a commit torn by a crash leaves one slot holding a
// committed state: torn slot 0 -> slot 1 (previous, as the commit never
// returned), torn slot 1 -> slot 0 (current).
func (s *metaStore) commit(m *metaFile) error {
	s.mirror.Wait()
	if s.mirrorErr != nil {
		// slot 1 may be older than the previous state: fix it before
		// slot 0 may be torn
		if err := s.writeSlot(1, s.last); err != nil {
			return err
		}
		s.mirrorErr = nil
	}
	if s.f == nil {
		return s.rewrite(m)
	}
	m.SlotSize = s.slot
	frame := m.encode()
	if int64(len(frame)) > s.slot {
		return s.rewrite(m)
	}
	if err := s.writeSlot(0, frame); err != nil {
		return err
	}
	s.last = frame
	s.mirror.Add(1)
	go func() {
		defer s.mirror.Done()
		s.mirrorErr = s.writeSlot(1, frame)
	}()
	return nil
}

func (s *metaStore) writeSlot(i int64, frame []byte) error {
	if err := pwriteFull(int(s.f.Fd()), frame, i*s.slot); err != nil {
		return fmt.Errorf("write %s: %w", s.path, err)
	}
	if err := unix.Fdatasync(int(s.f.Fd())); err != nil {
		return fmt.Errorf("fdatasync %s: %w", s.path, err)
	}
	return nil
}

// rewrite replaces the whole file (both slots holding m) by temp file,
// fdatasync, rename and directory fsync, growing the slots to fit m.
func (s *metaStore) rewrite(m *metaFile) error {
	m.SlotSize = metaSlotMin
	frame := m.encode()
	if need := int64(len(frame)); need > m.SlotSize {
		m.SlotSize = int64(1) << bits.Len64(uint64(2*need-1))
		frame = m.encode()
	}
	buf := make([]byte, 2*m.SlotSize)
	copy(buf, frame)
	copy(buf[m.SlotSize:], frame)
	if err := durable.WriteRaw(s.path, buf); err != nil {
		return err
	}
	simDirSynced(filepath.Dir(s.path)) // WriteRaw fsyncs the directory
	f, err := os.OpenFile(s.path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	if s.f != nil {
		s.f.Close()
	}
	s.f, s.slot, s.last = f, m.SlotSize, frame
	return nil
}

// verify re-reads the file and fails unless both slots are readable
// (Scrub). A bad slot is repaired by the next commit.
func (s *metaStore) verify() error {
	s.mirror.Wait()
	buf, err := os.ReadFile(s.path)
	if err != nil {
		return err
	}
	_, slot, _, err := parseMeta(s.path, buf)
	if err != nil || slot == 0 {
		return err
	}
	for i := int64(0); i < 2; i++ {
		if _, err := decodeMetaPrefix(fmt.Sprintf("%s (slot %d)", s.path, i), buf[i*slot:(i+1)*slot]); err != nil {
			return err
		}
	}
	return nil
}

func (s *metaStore) close() error {
	s.mirror.Wait()
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	return errors.Join(err, s.mirrorErr)
}
