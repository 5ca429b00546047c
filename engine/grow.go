package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
)

// Grow raises the volume size to size (a multiple of 4096) while the volume
// is attached and I/O continues. Under the I/O barrier every replica that
// takes writes (healthy, resyncing and rebuilding) grows; one that fails is
// dropped like a replica that failed a write, and the grow succeeds while a
// healthy replica remains. Only then does the engine take the new size, so
// no I/O past the old end can reach a replica that has not grown. A stale or
// failed replica grows when it rejoins (startRebuild, startCatchUp); its
// changes past the old end are those the source tracked or holds in its
// layers. Growing to the current size is a no-op; a smaller size fails with
// ErrShrink.
//
// Frontends read Size on use: a FUSE file reports the new size at its next
// getattr (a loop device on it needs RefreshLoopCapacity), a new NBD
// connection is told the new size (a connected NBD client keeps the size it
// negotiated: the protocol cannot resize a live export).
func (v *Volume) Grow(ctx context.Context, size int64) error {
	if size <= 0 || size%blockSize != 0 {
		return fmt.Errorf("%w: size %d is not a positive multiple of %d", ErrInvalid, size, blockSize)
	}
	v.mu.Lock()
	grown, err := v.growLocked(ctx, size)
	v.mu.Unlock()
	if fn := v.onGrow.Load(); grown && fn != nil {
		(*fn)(size)
	}
	return err
}

// SetGrowHook sets a function called after each Grow that changed the
// size (the FUSE frontend invalidates the kernel's cached file size).
func (v *Volume) SetGrowHook(fn func(size int64)) {
	v.onGrow.Store(&fn)
}

// growLocked is Grow under the barrier; grown reports a size change.
func (v *Volume) growLocked(ctx context.Context, size int64) (grown bool, err error) {
	if v.closed {
		return false, ErrClosed
	}
	cur := v.size.Load()
	switch {
	case size < cur:
		return false, fmt.Errorf("%w: volume is %d bytes, requested %d", ErrShrink, cur, size)
	case size == cur:
		return false, nil
	}
	vw := v.view
	targets := slices.Concat(vw.healthy, vw.resyncing, vw.rebuilding)
	errs := v.parallel(targets, func(m *member) error {
		cctx, cancel := context.WithTimeout(ctx, v.cfg.ControlTimeout)
		defer cancel()
		return m.r.Grow(cctx, size)
	})
	ok := 0
	for i, m := range targets {
		switch {
		case errs[i] != nil:
			v.fail(m, fmt.Errorf("grow to %d: %w", size, errs[i]))
		case i < len(vw.healthy)+len(vw.resyncing):
			ok++
		}
	}
	v.settleLocked()
	if ok == 0 {
		return false, fmt.Errorf("%w: grow to %d failed on every replica: %w", ErrNoHealthyReplica, size, errors.Join(errs...))
	}
	v.size.Store(size)
	v.log.Info("Volume grown", "from", cur, "to", size, "replicas", ok)
	return true, nil
}

// adoptSizeLocked settles the volume size at Open: the configured size, or
// the largest of the newest replicas when a Grow went further than the
// configuration knows. Every other reachable replica smaller than that
// grows (one that fails is dropped); one larger than it is refused. Called
// with mu held, before the generation is bumped.
func (v *Volume) adoptSizeLocked() {
	size := v.cfg.Size
	for _, m := range v.members {
		if m.mode == ModeHealthy {
			size = max(size, m.size)
		}
	}
	if size != v.cfg.Size {
		v.log.Info("Volume size taken from its replicas", "configured", v.cfg.Size, "size", size)
	}
	v.size.Store(size)
	for _, m := range v.members {
		if m.r == nil || m.mode == ModeFailed || m.size == size {
			continue
		}
		err := fmt.Errorf("refused: replica size %d exceeds volume size %d", m.size, size)
		if m.size < size {
			err = v.growMember(m, size)
		}
		if err != nil {
			v.markFailedLocked(m, err)
		}
	}
	v.rebuildViewLocked()
}

// growMember grows one replica during Open.
func (v *Volume) growMember(m *member, size int64) error {
	ctx, cancel := context.WithTimeout(context.Background(), v.cfg.ControlTimeout)
	defer cancel()
	if err := m.r.Grow(ctx, size); err != nil {
		return fmt.Errorf("grow from %d to %d: %w", m.size, size, err)
	}
	v.log.Info("Replica grown to the volume size", "replica", m.addr, "from", m.size, "to", size)
	m.size = size
	return nil
}
