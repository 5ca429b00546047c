package replica

import (
	"context"
	"fmt"
)

// Remote reads a running replica's snapshots through its server with the
// replica protocol's layer reads (LayerExtents, ReadLayer) and Diff, so a
// backup never opens the replica's directory beside the process that owns
// it. It offers the same OpenSnapshot and Diff as a local *Replica.
type Remote struct {
	ctx context.Context
	c   *Client
}

// NewRemote reads through c; ctx bounds every request it makes.
func NewRemote(ctx context.Context, c *Client) *Remote { return &Remote{ctx: ctx, c: c} }

// Diff returns the extents changed between snapshots from and to.
func (r *Remote) Diff(from, to string) ([]Extent, error) {
	info, err := r.c.Info(r.ctx)
	if err != nil {
		return nil, err
	}
	return r.c.Diff(r.ctx, from, to, info.Size)
}

// OpenSnapshot returns a reader of the snapshot's view: each block from the
// topmost layer of the chain up to the snapshot that holds data, zeros where
// none does (the view a local replica builds its index from).
func (r *Remote) OpenSnapshot(name string) (SnapshotReader, error) {
	info, err := r.c.Info(r.ctx)
	if err != nil {
		return nil, err
	}
	for i, s := range info.Snapshots {
		if s.Name != name {
			continue
		}
		if s.Incomplete {
			return nil, fmt.Errorf("%w: snapshot %q is still being received", ErrRebuilding, name)
		}
		size := s.Size
		if size == 0 {
			size = info.Size
		}
		chain := make([]string, 0, i+1)
		for j := i; j >= 0; j-- {
			chain = append(chain, info.Snapshots[j].Name)
		}
		return &remoteSnapshot{r: r, name: name, size: size, chain: chain}, nil
	}
	return nil, fmt.Errorf("%w: snapshot %q", ErrNotFound, name)
}

type remoteSnapshot struct {
	r     *Remote
	name  string
	size  int64
	chain []string // the snapshot's layer first, then the ones below it
}

func (s *remoteSnapshot) Size() int64  { return s.size }
func (s *remoteSnapshot) Name() string { return s.name }
func (s *remoteSnapshot) Close() error { return nil }

// ReadAt fills p from the chain, topmost layer first; blocks no layer holds
// read as zeros. off and len(p) need not be block aligned.
func (s *remoteSnapshot) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off > s.size || int64(len(p)) > s.size-off {
		return 0, fmt.Errorf("%w: [%d, +%d) outside volume of %d bytes", ErrOutOfRange, off, len(p), s.size)
	}
	clear(p)
	todo := []Extent{{Offset: off, Length: int64(len(p))}}
	for _, layer := range s.chain {
		if len(todo) == 0 {
			break
		}
		held, err := s.r.c.LayerExtents(s.r.ctx, layer, off, int64(len(p)))
		if err != nil {
			return 0, err
		}
		var rest []Extent
		for _, want := range todo {
			got, left := splitExtent(want, held)
			for _, e := range got {
				if _, err := s.r.c.ReadLayer(s.r.ctx, layer, p[e.Offset-off:e.End()-off], e.Offset); err != nil {
					return 0, err
				}
			}
			rest = append(rest, left...)
		}
		todo = rest
	}
	return len(p), nil
}

// splitExtent splits want into the parts inside the sorted extents held
// and the parts outside them.
func splitExtent(want Extent, held []Extent) (in, out []Extent) {
	pos := want.Offset
	for _, h := range held {
		lo, hi := max(h.Offset, pos), min(h.End(), want.End())
		if lo >= hi {
			continue
		}
		if lo > pos {
			out = append(out, Extent{Offset: pos, Length: lo - pos})
		}
		in = append(in, Extent{Offset: lo, Length: hi - lo})
		pos = hi
	}
	if pos < want.End() {
		out = append(out, Extent{Offset: pos, Length: want.End() - pos})
	}
	return in, out
}
