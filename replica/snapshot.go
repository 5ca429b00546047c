package replica

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

func sortExtents(ext []Extent) {
	slices.SortFunc(ext, func(a, b Extent) int {
		switch {
		case a.Offset < b.Offset:
			return -1
		case a.Offset > b.Offset:
			return 1
		}
		return 0
	})
}

// Snapshot freezes the head as a snapshot named name and starts a new empty
// head on top of it. It copies no data: cost is one fdatasync of the head,
// one file creation and one metadata write, independent of volume size.
// Every write completed before the call is in the snapshot, no write
// issued after it returns is, and a concurrent write lands on one side.
func (r *Replica) Snapshot(name string, labels map[string]string) error {
	if err := validName(name); err != nil {
		return err
	}
	for k, v := range labels {
		if len(k) == 0 || len(k) > 317 || len(v) > 1024 {
			return fmt.Errorf("%w: label %q", ErrInvalid, k)
		}
	}
	r.opMu.Lock()
	defer r.opMu.Unlock()
	if err := r.checkOpen(); err != nil {
		return err
	}
	if _, ok := r.names[name]; ok {
		return fmt.Errorf("%w: snapshot %q", ErrExists, name)
	}
	if len(r.layers) >= maxLayers {
		return fmt.Errorf("%w: chain already has %d layers", ErrInvalid, len(r.layers))
	}
	// sync the bulk of the head's dirty data before excluding I/O (free
	// when the engine flushed just before, as it does)
	if err := r.syncHead(); err != nil {
		return err
	}
	nl, err := r.takeSpare()
	if err != nil {
		return err
	}
	fail := func(err error) error {
		nl.f.Close()
		os.Remove(nl.path)
		r.refillSpare()
		return err
	}
	m := r.meta.clone()
	h := &m.Layers[len(m.Layers)-1]
	h.Name = name
	h.Labels = maps.Clone(labels)
	h.Created = time.Now().UTC()
	m.Layers = append(m.Layers, layerRecord{ID: nl.rec.ID})

	r.mu.Lock()
	defer r.mu.Unlock()
	// in-flight writes have finished; make them part of the snapshot
	if err := r.syncHead(); err != nil {
		return fail(err)
	}
	// the directory fsync of this write also makes the new head's
	// directory entry durable
	if err := r.writeMeta(m); err != nil {
		return fail(err)
	}
	r.setChain(m, append(r.layers, nl))
	r.refillSpare()
	return nil
}

// Revert discards the head and every snapshot newer than name, and starts
// a new empty head on top of name: the volume then reads exactly as the
// snapshot. (A chain has no branches: like `zfs rollback -r`, newer
// snapshots are destroyed.) I/O is paused while the index is rebuilt.
func (r *Replica) Revert(name string) error {
	r.opMu.Lock()
	defer r.opMu.Unlock()
	if err := r.checkOpen(); err != nil {
		return err
	}
	if r.rebuilding {
		return ErrRebuilding
	}
	pos, ok := r.names[name]
	if !ok {
		return fmt.Errorf("%w: snapshot %q", ErrNotFound, name)
	}
	return r.replaceTop(pos, nil)
}

// replaceTop keeps layers [1, keep], appends new incomplete layers for
// receive and a new empty head, and drops everything else. Callers hold
// opMu.
func (r *Replica) replaceTop(keep int, receive []SnapshotInfo) error {
	var created []*layer
	cleanup := func() {
		for _, l := range created {
			l.f.Close()
			os.Remove(l.path)
		}
	}
	m := r.meta.clone()
	m.Layers = m.Layers[:keep]
	for i := 0; i <= len(receive); i++ {
		id, err := newLayerFile(r.dir, r.size)
		if err != nil {
			cleanup()
			return ioErr("create layer", err)
		}
		rec := layerRecord{ID: id}
		if i < len(receive) {
			rec.SnapshotInfo = cloneInfo(receive[i])
			rec.Incomplete = true
		}
		l, err := openLayer(r.dir, rec, r.size)
		if err != nil {
			os.Remove(r.dir + "/" + rec.fileName())
			cleanup()
			return err
		}
		created = append(created, l)
		m.Layers = append(m.Layers, rec)
	}
	if err := m.validate(); err != nil {
		cleanup()
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	// the new files' directory entries must be durable before the
	// metadata that lists them (slot commits do not fsync the directory)
	if err := syncDir(r.dir); err != nil {
		cleanup()
		return ioErr("sync directory", err)
	}
	layers := append(slices.Clone(r.layers[:keep]), created...)
	idx, err := buildIndex(layers[:keep], r.size)
	if err != nil {
		cleanup()
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	// the head's content is replaced wholesale: no tracker covers it, in
	// the file first
	if err := r.cbt.commit(nil, 0, cbtBootID(), true); err != nil {
		cleanup()
		return err
	}
	if err := r.writeMeta(m); err != nil {
		cleanup()
		return err
	}
	dropped := r.layers[keep:]
	r.idx = idx
	r.trackers, r.sessionGen = nil, 0
	r.setChain(m, layers)
	for _, l := range dropped {
		l.f.Close()
		os.Remove(l.path)
	}
	return nil
}

// RemoveSnapshot deletes a snapshot without changing what any remaining
// snapshot or the head reads: the blocks of the removed layer that its
// child (the next newer layer, possibly the head) lacks are copied into
// the child, then the layer is dropped from the chain. I/O continues
// during the copy; the chain switch at the end pauses it briefly. A crash
// at any point leaves a consistent chain (the copy only adds to the child
// blocks it reads identically anyway).
//
// When the child is the head and the head holds less data than the
// snapshot, the head is merged down instead: its blocks are copied into
// the snapshot's file, which becomes the head, O(head data), with I/O
// paused only for the blocks written during the copy (see mergeHeadDown;
// a crash half-way is finished by Open). A snapshot with an open
// SnapshotReader is always copied up.
func (r *Replica) RemoveSnapshot(name string) error {
	r.opMu.Lock()
	defer r.opMu.Unlock()
	if err := r.checkOpen(); err != nil {
		return err
	}
	if r.rebuilding {
		return ErrRebuilding
	}
	pos, ok := r.names[name]
	if !ok {
		return fmt.Errorf("%w: snapshot %q", ErrNotFound, name)
	}
	p := r.layers[pos-1]
	c := r.layers[pos]
	cpos := uint16(pos + 1)
	isHead := pos+1 == len(r.layers)
	if isHead && r.mergeDownCheaper(p, c) {
		return r.mergeHeadDown(pos)
	}
	if !isHead && !r.pinned(c.rec.ID) && r.mergeDownCheaper(p, c) {
		return r.mergeSnapshotDown(pos)
	}
	// the child's content changes: drop its stored checksum first
	if r.meta.Layers[pos].Checksum != "" {
		m := r.meta.clone()
		m.Layers[pos].Checksum = ""
		if err := r.writeMeta(m); err != nil {
			return err
		}
		r.mu.Lock()
		r.setChain(m, r.layers)
		r.mu.Unlock()
	}
	c.gen++
	ext, err := dataExtents(p.fd, 0, r.size)
	if err != nil {
		return ioErr("seek data", err)
	}
	buf := make([]byte, 1<<20)
	copyRange := func(b0, b1 int64) error {
		for b := b0; b < b1; {
			n := min(b1-b, int64(len(buf)/BlockSize))
			chunk := buf[:n*BlockSize]
			if _, err := p.f.ReadAt(chunk, b*BlockSize); err != nil {
				return ioErr("read", err)
			}
			simWrite(c.path, c.fd, b*BlockSize, int64(len(chunk)))
			if err := pwriteCached(c.fd, chunk, b*BlockSize); err != nil {
				return ioErr("write", err)
			}
			r.idx.setIfLower(b, b+n, cpos)
			b += n
		}
		return nil
	}
	for _, e := range ext {
		for s := e.Offset / BlockSize; s < e.End()/BlockSize; {
			t := min(e.End()/BlockSize, s+256)
			if isHead {
				// the head takes live writes: copy under the range lock
				// only the blocks the head does not own
				g := r.rl.lock(s, t)
				for b := s; b < t; {
					o, end := r.idx.lookup(b)
					end = min(end, t)
					if o != cpos {
						if err := copyRange(b, end); err != nil {
							g.unlock()
							return err
						}
					}
					b = end
				}
				g.unlock()
			} else {
				have, err := dataExtents(c.fd, s*BlockSize, t*BlockSize)
				if err != nil {
					return ioErr("seek data", err)
				}
				b := s
				for _, h := range append(have, Extent{Offset: t * BlockSize}) {
					if err := copyRange(b, h.Offset/BlockSize); err != nil {
						return err
					}
					b = h.End() / BlockSize
				}
			}
			s = t
		}
	}
	if err := fdatasync(c); err != nil {
		return ioErr("fdatasync", err)
	}
	m := r.meta.clone()
	m.Layers = slices.Delete(m.Layers, pos-1, pos)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.writeMeta(m); err != nil {
		return err
	}
	r.idx.remap(func(o uint16) uint16 {
		if o > uint16(pos) {
			return o - 1
		}
		return o
	})
	r.setChain(m, slices.Delete(slices.Clone(r.layers), pos-1, pos))
	p.f.Close()
	os.Remove(p.path)
	return nil
}

// mergeDownCheaper reports whether removing snapshot layer p whose child
// is head h should merge h down into p (O(head data)) rather than copy p
// up into h (O(parent data)): the head holds less data than the parent,
// no reader has p open and the filesystem has room for the copy. Callers
// hold opMu.
func (r *Replica) mergeDownCheaper(p, h *layer) bool {
	if r.pinned(p.rec.ID) {
		return false
	}
	var ps, hs unix.Stat_t
	var fs unix.Statfs_t
	if unix.Fstat(p.fd, &ps) != nil || unix.Fstat(h.fd, &hs) != nil || unix.Fstatfs(h.fd, &fs) != nil {
		return false
	}
	head, parent := hs.Blocks*512, ps.Blocks*512
	return head < parent && int64(fs.Bavail)*int64(fs.Bsize) > head+64<<20
}

// mergeHeadDown removes the snapshot at chain position pos, whose child is
// the head, by copying the head's blocks into the snapshot's file, which
// then becomes the head:
//
//  1. commit the new chain with MergeFrom = old head: from here on a
//     crash is finished by Open (which copies the old head over again);
//  2. online, with writes still going to the old head: copy its allocated
//     blocks into the parent step by step under the range locks, noting
//     the regions written meanwhile (mergeTrk); fdatasync the parent;
//  3. under the I/O barrier: copy the regions written during step 2,
//     fdatasync, commit without MergeFrom, switch, delete the old head.
//
// I/O pauses only for step 3, O(data written during step 2). The parent
// is only changed at blocks the head holds, so every view stays the same
// throughout; a hole the head punches meanwhile is written as zeroes
// instead (zeroBlocks sees the copied data below it). Callers hold opMu.
func (r *Replica) mergeHeadDown(pos int) error {
	p, h := r.layers[pos-1], r.layers[pos]
	m1 := r.meta.clone()
	m1.Layers = slices.Delete(m1.Layers, pos-1, pos)
	m1.Layers[pos-1] = layerRecord{ID: p.rec.ID}
	m1.MergeFrom = h.rec.ID
	// if this fails (even if it reached the disk), the old chain stays
	// valid: the parent is untouched and a merge redone at open is correct
	if err := r.writeMeta(m1); err != nil {
		return err
	}
	p.gen++
	fail := func(err error) error {
		// the committed chain says "merge pending", the parent file is
		// half merged: only a reopen (which finishes the merge) is safe
		r.mu.Lock()
		r.mergeTrk = nil
		r.broken = fmt.Errorf("merge of the head into snapshot %q: %w", p.rec.Name, err)
		r.mu.Unlock()
		return err
	}
	tr := newChangeTracker(0, r.size)
	r.mu.Lock()
	r.mergeTrk = tr
	r.mu.Unlock()
	ext, err := dataExtents(h.fd, 0, r.size)
	if err != nil {
		return fail(ioErr("seek data", err))
	}
	for _, e := range ext {
		for s := e.Offset; s < e.End(); s += 1 << 20 {
			t := min(e.End(), s+1<<20)
			g := r.rl.lock(s/BlockSize, t/BlockSize)
			err := copyAllocatedRange(h, p, s, t)
			g.unlock()
			if err != nil {
				return fail(err)
			}
		}
	}
	if err := fdatasync(p); err != nil {
		return fail(ioErr("fdatasync", err))
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	r.mergeTrk = nil
	m2 := m1.clone()
	m2.MergeFrom = ""
	for _, e := range tr.extents(0, r.size, r.size) {
		if err = copyAllocatedRange(h, p, e.Offset, e.End()); err != nil {
			break
		}
	}
	if err == nil {
		if err = fdatasync(p); err != nil {
			err = ioErr("fdatasync", err)
		}
	}
	if err == nil {
		err = r.writeMeta(m2)
	}
	if err != nil {
		r.broken = fmt.Errorf("merge of the head into snapshot %q: %w", p.rec.Name, err)
		return err
	}
	r.idx.remap(func(o uint16) uint16 {
		if o == uint16(pos+1) {
			return uint16(pos)
		}
		return o
	})
	r.setChain(m2, append(slices.Clone(r.layers[:pos-1]), p))
	h.f.Close()
	os.Remove(h.path)
	return nil
}

// mergeSnapshotDown removes the snapshot at chain position pos whose child
// c is another snapshot by copying c's blocks into the snapshot's file p,
// which then takes c's place, name and labels: O(c's data) instead of
// O(p's data). c is immutable, so no range locks are needed, and until the
// final switch every read still resolves to the file that held the block:
//
//  1. commit the chain without p, with p's file standing in for c and
//     MergeFrom = c, MergeInto = p: from here on a crash is finished by
//     Open (the copy is idempotent, c's file stays until the end);
//  2. copy c's allocated blocks into p's file, fdatasync;
//  3. commit without MergeFrom, switch the chain and index, delete c.
//
// Callers hold opMu and have checked that neither layer is pinned.
func (r *Replica) mergeSnapshotDown(pos int) error {
	p, c := r.layers[pos-1], r.layers[pos]
	m1 := r.meta.clone()
	rec := m1.Layers[pos]
	rec.ID, rec.Checksum = p.rec.ID, ""
	m1.Layers[pos] = rec
	m1.Layers = slices.Delete(m1.Layers, pos-1, pos)
	m1.MergeFrom, m1.MergeInto = c.rec.ID, p.rec.ID
	if err := r.writeMeta(m1); err != nil {
		return err
	}
	fail := func(err error) error {
		// the committed chain says "merge pending" and p's file is half
		// merged: only a reopen (which finishes the merge) is safe
		r.mu.Lock()
		r.broken = fmt.Errorf("merge of snapshot %q into its parent: %w", c.rec.Name, err)
		r.mu.Unlock()
		return err
	}
	p.gen++
	if err := copyAllocatedRange(c, p, 0, r.size); err != nil {
		return fail(err)
	}
	if err := fdatasync(p); err != nil {
		return fail(ioErr("fdatasync", err))
	}
	m2 := m1.clone()
	m2.MergeFrom, m2.MergeInto = "", ""
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.writeMeta(m2); err != nil {
		r.broken = fmt.Errorf("merge of snapshot %q into its parent: %w", c.rec.Name, err)
		return err
	}
	// c (1-based pos+1) now lives in p's file (1-based pos); everything
	// above moves down one place
	r.idx.remap(func(o uint16) uint16 {
		if o > uint16(pos) {
			return o - 1
		}
		return o
	})
	r.setChain(m2, slices.Delete(slices.Clone(r.layers), pos, pos+1))
	c.f.Close()
	os.Remove(c.path)
	return nil
}

// copyAllocatedRange copies the allocated blocks of src within [off, end)
// into dst at the same offsets.
func copyAllocatedRange(src, dst *layer, off, end int64) error {
	ext, err := dataExtents(src.fd, off, end)
	if err != nil {
		return ioErr("seek data", err)
	}
	buf := getBuf(1 << 20)
	defer putBuf(buf)
	for _, e := range ext {
		for o := e.Offset; o < e.End(); {
			n := min(e.End()-o, int64(len(buf)))
			if err := preadFull(src.fd, buf[:n], o); err != nil {
				return ioErr("read", err)
			}
			if err := hook("merge"); err != nil {
				return ioErr("write", err)
			}
			simWrite(dst.path, dst.fd, o, n)
			if err := pwriteCached(dst.fd, buf[:n], o); err != nil {
				return ioErr("write", err)
			}
			o += n
		}
	}
	return nil
}

// position resolves a snapshot name ("" = head) to a chain position.
// Callers hold opMu or mu.
func (r *Replica) position(name string) (int, error) {
	if name == "" {
		return len(r.layers), nil
	}
	pos, ok := r.names[name]
	if !ok {
		return 0, fmt.Errorf("%w: snapshot %q", ErrNotFound, name)
	}
	return pos, nil
}

// Diff returns the extents that may differ between snapshot from and
// snapshot to: the union of the allocated extents of every layer newer
// than from up to and including to. from == "" means the empty volume
// (all allocated extents as of to); to == "" means the live head. The
// result is sorted, merged and block-aligned; it may over-report blocks
// rewritten with identical data, never under-report.
func (r *Replica) Diff(from, to string) ([]Extent, error) {
	return r.DiffRange(from, to, 0, -1)
}

// DiffRange is Diff restricted to [off, off+length); a negative length
// means up to the end of the volume.
func (r *Replica) DiffRange(from, to string, off, length int64) ([]Extent, error) {
	r.opMu.Lock()
	defer r.opMu.Unlock()
	if err := r.checkOpen(); err != nil {
		return nil, err
	}
	if length < 0 {
		length = r.size - off
	}
	pf := 0
	if from != "" {
		var err error
		if pf, err = r.position(from); err != nil {
			return nil, err
		}
	}
	pt, err := r.position(to)
	if err != nil {
		return nil, err
	}
	if pf > pt {
		return nil, fmt.Errorf("%w: snapshot %q is newer than %q", ErrInvalid, from, to)
	}
	if err := r.checkRange(off, length); err != nil {
		return nil, err
	}
	var out []Extent
	for _, l := range r.layers[pf:pt] {
		ext, err := dataExtents(l.fd, off&^(BlockSize-1), off+length)
		if err != nil {
			return nil, ioErr("seek data", err)
		}
		out = mergeExtents(append(out, ext...))
	}
	if out == nil {
		out = []Extent{}
	}
	return out, nil
}

// OpenSnapshot returns a reader of the volume as of snapshot name. The
// reader holds its own file handles and index, so it stays valid (and
// keeps reading the same data) while snapshots are removed or reverted.
func (r *Replica) OpenSnapshot(name string) (SnapshotReader, error) {
	r.opMu.Lock()
	defer r.opMu.Unlock()
	if err := r.checkOpen(); err != nil {
		return nil, err
	}
	if name == "" {
		return nil, fmt.Errorf("%w: empty snapshot name", ErrInvalid)
	}
	pos, err := r.position(name)
	if err != nil {
		return nil, err
	}
	if r.layers[pos-1].rec.Incomplete {
		return nil, fmt.Errorf("%w: snapshot %q is still being received", ErrRebuilding, name)
	}
	id, size := r.layers[pos-1].rec.ID, r.snapshotSize(r.layers[pos-1].rec)
	r.pin(id)
	sr := &snapReader{name: name, size: size, unpin: func() { r.unpin(id) }}
	for _, l := range r.layers[:pos] {
		f, err := os.Open(l.path)
		if err != nil {
			sr.Close()
			return nil, err
		}
		sr.layers = append(sr.layers, &layer{f: f, fd: int(f.Fd()), path: l.path})
	}
	if sr.idx, err = buildIndex(sr.layers, size); err != nil {
		sr.Close()
		return nil, err
	}
	return sr, nil
}

type snapReader struct {
	name   string
	size   int64
	layers []*layer
	idx    *index
	unpin  func()
}

func (s *snapReader) Size() int64  { return s.size }
func (s *snapReader) Name() string { return s.name }

func (s *snapReader) ReadAt(p []byte, off int64) (int, error) {
	if s.idx == nil {
		return 0, ErrClosed
	}
	if off < 0 || off > s.size || int64(len(p)) > s.size-off {
		return 0, fmt.Errorf("%w: [%d, +%d) outside volume of %d bytes", ErrOutOfRange, off, len(p), s.size)
	}
	done := 0
	for done < len(p) {
		cur := off + int64(done)
		owner, endBlk := s.idx.lookup(cur / BlockSize)
		n := min(int64(len(p)-done), endBlk*BlockSize-cur)
		dst := p[done : done+int(n)]
		if owner == 0 {
			clear(dst)
		} else if _, err := s.layers[owner-1].f.ReadAt(dst, cur); err != nil {
			return done, ioErr("read", err)
		}
		done += int(n)
	}
	return done, nil
}

func (s *snapReader) Close() error {
	for _, l := range s.layers {
		l.f.Close()
	}
	s.layers, s.idx = nil, nil
	if s.unpin != nil {
		s.unpin()
		s.unpin = nil
	}
	return nil
}
