package replica

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cairnstore/cairn/internal/durable"
)

// The change trackers' file, replica.cbt: two header copies, then one
// bitmap slot per tracker. Layout and crash safety: doc.go, "Changed-block
// tracking".
const (
	cbtName       = "replica.cbt"
	cbtMagic      = "CAIRNCB1"
	cbtVersion    = 1
	cbtHeaderSize = 4096
	// cbtSlots: the trackers kept plus the one being started.
	cbtSlots = cbtMaxTrackers + 1
)

type cbtHeader struct {
	Seq      uint64      `json:"seq"`
	Size     int64       `json:"size"`
	Trackers []cbtRecord `json:"trackers,omitempty"`
	Session  uint64      `json:"session,omitempty"`
	Boot     string      `json:"boot"`
	Open     bool        `json:"open"`
}

type cbtRecord struct {
	Gen  uint64 `json:"gen"`
	Slot int    `json:"slot"`
}

// cbtFile is the open tracker file. mu serializes bitmap word writes (so
// the file's words only ever gain bits) and header commits.
type cbtFile struct {
	path   string
	mu     sync.Mutex
	f      *os.File
	seq    uint64
	size   int64 // the volume size the slots are laid out for
	stride int64 // bytes per slot
}

// cbtBootID identifies this boot of the machine: a tracker file left open
// by a process of an earlier boot may have lost bitmap words the page
// cache held (tests replace it).
var cbtBootID = func() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// cbtStride is the slot size for a volume of size bytes.
func cbtStride(size int64) int64 {
	words := (size>>cbtRegionShift + 1 + 63) / 64
	return (words*8 + 4095) &^ 4095
}

func (c *cbtFile) slotOffset(slot int) int64 { return 2*cbtHeaderSize + int64(slot)*c.stride }

// openTrackers opens the tracker file (openCBT). When that fails (no
// space for a new file, say) it deletes the file, which needs no space, so
// that no later open trusts its stale content, and the trackers live in
// memory only (nil file), as they do after a reboot.
func openTrackers(dir string, size int64, gen uint64) (*cbtFile, []*changeTracker, uint64, error) {
	c, trackers, session, err := openCBT(dir, size, gen)
	if err == nil {
		return c, trackers, session, nil
	}
	if rerr := os.Remove(filepath.Join(dir, cbtName)); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
		return nil, nil, 0, err
	}
	return nil, nil, 0, nil
}

// openCBT opens (or creates) the tracker file of a replica of size bytes
// at generation gen and returns the trackers it can vouch for and the
// session generation. It trusts the file when its last user closed it, or
// when that process ran in this boot (then the page cache still holds
// every word it wrote); otherwise, and for trackers newer than gen (a
// SetGeneration whose metadata commit never happened), it drops them:
// ChangedSince then reports them as untracked, never as unchanged.
func openCBT(dir string, size int64, gen uint64) (*cbtFile, []*changeTracker, uint64, error) {
	path := filepath.Join(dir, cbtName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, 0, err
	}
	c := &cbtFile{path: path, f: f}
	hdr, ok := c.readHeader()
	boot := cbtBootID()
	var trackers []*changeTracker
	var session uint64
	if ok && hdr.Size <= size && (!hdr.Open || (boot != "" && hdr.Boot == boot)) {
		c.size, c.stride = hdr.Size, cbtStride(hdr.Size)
		if trackers, err = c.load(hdr, size, gen); err != nil {
			f.Close()
			return nil, nil, 0, err
		}
		for _, t := range trackers {
			if t.gen == hdr.Session {
				session = hdr.Session
			}
		}
	}
	c.seq = hdr.Seq
	if !ok || hdr.Size != size {
		// new, unreadable or laid out for a smaller volume: rewrite
		if err := c.rewrite(size, trackers, session, boot); err != nil {
			f.Close()
			return nil, nil, 0, err
		}
		return c, trackers, session, nil
	}
	if err := c.commit(trackers, session, boot, true); err != nil {
		f.Close()
		return nil, nil, 0, err
	}
	return c, trackers, session, nil
}

// readHeader returns the newest valid header copy.
func (c *cbtFile) readHeader() (cbtHeader, bool) {
	var best cbtHeader
	found := false
	buf := make([]byte, cbtHeaderSize)
	for i := int64(0); i < 2; i++ {
		if _, err := c.f.ReadAt(buf, i*cbtHeaderSize); err != nil {
			continue
		}
		_, payload, err := durable.DecodePrefix(c.path, cbtMagic, buf)
		if err != nil {
			continue
		}
		var h cbtHeader
		if json.Unmarshal(payload, &h) != nil || h.Size <= 0 {
			continue
		}
		if !found || h.Seq > best.Seq {
			best, found = h, true
		}
	}
	return best, found
}

// load reads the bitmaps of the trackers in hdr, sized for size.
func (c *cbtFile) load(hdr cbtHeader, size int64, gen uint64) ([]*changeTracker, error) {
	var out []*changeTracker
	for _, rec := range hdr.Trackers {
		if rec.Gen > gen || rec.Slot < 0 || rec.Slot >= cbtSlots {
			continue
		}
		t := newChangeTracker(rec.Gen, size)
		buf := make([]byte, 8*((hdr.Size>>cbtRegionShift+1+63)/64))
		if _, err := c.f.ReadAt(buf, c.slotOffset(rec.Slot)); err != nil {
			// a slot never written past its end reads short: zeroes
			if n, _ := c.f.Seek(0, 2); n >= c.slotOffset(rec.Slot)+int64(len(buf)) {
				return nil, ioErr("read change tracker", err)
			}
		}
		for i := range min(len(t.bits), len(buf)/8) {
			t.bits[i].Store(binary.LittleEndian.Uint64(buf[8*i:]))
		}
		t.cf, t.slot = c, rec.Slot
		out = append(out, t)
	}
	return out, nil
}

// commit writes a header listing trackers and fdatasyncs the file (the
// bitmap words written so far and the header become durable together).
func (c *cbtFile) commit(trackers []*changeTracker, session uint64, boot string, open bool) error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.commitLocked(c.header(trackers, session, boot, open))
}

func (c *cbtFile) header(trackers []*changeTracker, session uint64, boot string, open bool) cbtHeader {
	h := cbtHeader{Size: c.size, Session: session, Boot: boot, Open: open}
	for _, t := range trackers {
		h.Trackers = append(h.Trackers, cbtRecord{Gen: t.gen, Slot: t.slot})
	}
	return h
}

func (c *cbtFile) commitLocked(h cbtHeader) error {
	c.seq++
	h.Seq = c.seq
	buf, err := encodeCBTHeader(h)
	if err != nil {
		return err
	}
	if _, err := c.f.WriteAt(buf, int64(h.Seq%2)*cbtHeaderSize); err != nil {
		return ioErr("write change tracker header", err)
	}
	if err := unix.Fdatasync(int(c.f.Fd())); err != nil {
		return ioErr("sync change tracker", err)
	}
	return nil
}

func encodeCBTHeader(h cbtHeader) ([]byte, error) {
	payload, err := json.Marshal(h)
	if err != nil {
		return nil, err
	}
	frame := durable.Encode(cbtMagic, cbtVersion, payload)
	if len(frame) > cbtHeaderSize {
		return nil, fmt.Errorf("%w: change tracker header of %d bytes", ErrInvalid, len(frame))
	}
	buf := make([]byte, cbtHeaderSize)
	copy(buf, frame)
	return buf, nil
}

// rewrite replaces the file with one laid out for size holding trackers
// (temp file, fdatasync, rename, directory fsync), for a new replica and
// after a Grow. The old file is closed on success.
func (c *cbtFile) rewrite(size int64, trackers []*changeTracker, session uint64, boot string) error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	tmp := c.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return ioErr("create change tracker", err)
	}
	old, oldSize := c.f, c.size
	c.f, c.size, c.stride = f, size, cbtStride(size)
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		c.f, c.size, c.stride = old, oldSize, cbtStride(oldSize)
		return ioErr("rewrite change tracker", err)
	}
	// allocated up front, so recording a change or committing a header
	// never needs free space
	if err := unix.Fallocate(int(f.Fd()), 0, 0, c.slotOffset(cbtSlots)); err != nil {
		return fail(err)
	}
	for _, t := range trackers {
		buf := make([]byte, 8*len(t.bits))
		for i := range t.bits {
			binary.LittleEndian.PutUint64(buf[8*i:], t.bits[i].Load())
		}
		if _, err := f.WriteAt(buf, c.slotOffset(t.slot)); err != nil {
			return fail(err)
		}
	}
	if err := c.commitLocked(c.header(trackers, session, boot, true)); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, c.path); err != nil {
		return fail(err)
	}
	if err := syncDir(filepath.Dir(c.path)); err != nil {
		return fail(err)
	}
	if old != nil {
		old.Close()
	}
	return nil
}

// resetSlot clears a slot for a new tracker, keeping its blocks
// allocated.
func (c *cbtFile) resetSlot(slot int) error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	err := unix.Fallocate(int(c.f.Fd()), unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, c.slotOffset(slot), c.stride)
	if err != nil {
		_, err = c.f.WriteAt(make([]byte, c.stride), c.slotOffset(slot))
	}
	if err != nil {
		return ioErr("reset change tracker", err)
	}
	return nil
}

// freeSlot returns a slot no tracker in use holds.
func freeSlot(inUse []*changeTracker) int {
	for s := 0; s < cbtSlots; s++ {
		taken := false
		for _, t := range inUse {
			taken = taken || t.slot == s
		}
		if !taken {
			return s
		}
	}
	panic("replica: no free change tracker slot")
}

// setBits sets mask in word w of t and writes the word to t's slot before
// the bits become visible in memory, so a writer that finds its bits set
// knows they reached the file (the page cache) ahead of its data.
func (c *cbtFile) setBits(t *changeTracker, w int64, mask uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := t.bits[w].Load() | mask
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	if _, err := c.f.WriteAt(b[:], c.slotOffset(t.slot)+8*w); err != nil {
		return ioErr("record change", err)
	}
	t.bits[w].Store(v)
	return nil
}

// close makes the bitmaps durable and marks the file closed cleanly.
func (c *cbtFile) close(trackers []*changeTracker, session uint64) error {
	if c == nil {
		return nil
	}
	err := c.commit(trackers, session, cbtBootID(), false)
	if cerr := c.f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	return err
}
