package engine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/cairnstore/cairn/replica"
	"maps"
	"regexp"
	"slices"
	"time"
)

var snapshotName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ValidSnapshotName reports whether name can name a snapshot.
func ValidSnapshotName(name string) error {
	if !snapshotName.MatchString(name) {
		return fmt.Errorf("%w: snapshot name %q (want 1-128 of [A-Za-z0-9._-], starting alphanumeric)", ErrInvalid, name)
	}
	return nil
}

// SetAttachedCheck installs the function Revert asks whether a frontend
// client is still using the volume.
func (v *Volume) SetAttachedCheck(fn func() bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.attached = fn
}

// Snapshot flushes and snapshots every healthy replica under the I/O
// barrier, so all of them capture the same point in the write stream
// (during a rebuild's copy, the rebuilding replica too). A replica that
// fails is dropped; the snapshot succeeds while one succeeds.
func (v *Volume) Snapshot(ctx context.Context, name string, labels map[string]string) error {
	if err := ValidSnapshotName(name); err != nil {
		return err
	}
	if v.ctl.TryLock() {
		defer v.ctl.Unlock()
		v.mu.Lock()
		defer v.mu.Unlock()
		return v.snapshotLocked(name, labels, nil)
	}
	// Another control operation runs. A rebuild copying layers (only a
	// rebuild, which holds ctl throughout, has rebuilding members) lets
	// snapshots through: the barrier (mu) keeps them apart from its start
	// and promotion, and the target takes the snapshot too, above the
	// layers it receives, so every chain stays the same.
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.view.rebuilding) == 0 {
		return fmt.Errorf("%w: another control operation is running", ErrBusy)
	}
	return v.snapshotLocked(name, labels, v.view.rebuilding)
}

// SnapshotUIDLabel is the label the engine puts on every snapshot: the same
// random id on every replica, so rebuild can match layers across replicas.
const SnapshotUIDLabel = "cairn.dev/snapshot-uid"

// snapshotLocked snapshots the healthy replicas and also (same name and
// uid) the rebuilding ones in also; it succeeds when a healthy one did.
func (v *Volume) snapshotLocked(name string, userLabels map[string]string, also []*member) error {
	if v.closed {
		return ErrClosed
	}
	labels := maps.Clone(userLabels)
	if labels == nil {
		labels = map[string]string{}
	}
	var uid [12]byte
	_, _ = rand.Read(uid[:])
	labels[SnapshotUIDLabel] = hex.EncodeToString(uid[:])
	healthy := v.view.healthy
	all := append(slices.Clone(healthy), also...)
	errs := v.parallel(all, func(m *member) error {
		ctx, cancel := context.WithTimeout(context.Background(), v.cfg.ControlTimeout)
		defer cancel()
		if err := m.r.Flush(ctx); err != nil {
			return fmt.Errorf("flush: %w", err)
		}
		return m.r.Snapshot(ctx, name, labels)
	})
	ok, exists := 0, 0
	var reqErr error
	for i, m := range healthy {
		switch err := errs[i]; {
		case err == nil:
			ok++
		case errors.Is(err, ErrSnapshotExists):
			exists++
		case requestError(err):
			reqErr = err
		default:
			v.fail(m, fmt.Errorf("snapshot %s: %w", name, err))
		}
	}
	// A rebuild target whose chain did not change like the healthy ones'
	// cannot finish the rebuild: it is dropped (and rebuilt again).
	took := reqErr == nil && ok > 0
	for i, m := range also {
		if err := errs[len(healthy)+i]; (err == nil) != took {
			v.fail(m, fmt.Errorf("snapshot %s during rebuild: target %v, healthy replicas %v", name, err, took))
		}
	}
	v.settleLocked()
	switch {
	case reqErr != nil:
		return reqErr
	case ok == 0 && exists > 0:
		return fmt.Errorf("%w: %s", ErrSnapshotExists, name)
	case ok+exists == 0:
		return fmt.Errorf("%w: snapshot %s failed on every replica: %v", ErrNoHealthyReplica, name, errors.Join(errs...))
	}
	v.log.Info("Snapshot created", "snapshot", name, "replicas", ok+exists)
	return nil
}

// Revert sets every healthy replica back to a snapshot. The volume must be
// detached: no frontend client may hold cached or in-flight data.
func (v *Volume) Revert(ctx context.Context, name string) error {
	if err := ValidSnapshotName(name); err != nil {
		return err
	}
	if !v.ctl.TryLock() {
		return fmt.Errorf("%w: another control operation is running", ErrBusy)
	}
	defer v.ctl.Unlock()
	// Closing a frontend file (loop detach, FUSE release) completes
	// asynchronously: give a just-detached client a moment.
	v.mu.RLock()
	attached := v.attached
	v.mu.RUnlock()
	for deadline := time.Now().Add(3 * time.Second); attached != nil && attached() && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.attached != nil && v.attached() {
		return fmt.Errorf("%w: detach the volume before reverting it", ErrAttached)
	}
	if len(v.view.rebuilding) > 0 {
		return fmt.Errorf("%w: a rebuild is running", ErrBusy)
	}
	healthy := v.view.healthy
	errs := v.parallel(healthy, func(m *member) error {
		ctx, cancel := context.WithTimeout(context.Background(), v.cfg.ControlTimeout)
		defer cancel()
		return m.r.Revert(ctx, name)
	})
	ok := 0
	var reqErr error
	for i, m := range healthy {
		switch err := errs[i]; {
		case err == nil:
			ok++
		case requestError(err):
			reqErr = err
			v.fail(m, fmt.Errorf("revert %s: %w", name, err))
		default:
			v.fail(m, fmt.Errorf("revert %s: %w", name, err))
		}
	}
	if ok == 0 {
		// Nothing changed anywhere: keep the members.
		for _, m := range healthy {
			m.failed.Store(false)
		}
		v.pending.Store(false)
		if reqErr != nil {
			return reqErr
		}
		return fmt.Errorf("%w: revert failed on every replica: %v", ErrNoHealthyReplica, errors.Join(errs...))
	}
	// Replicas that did not revert hold other data now: drop them.
	v.settleLocked()
	v.log.Info("Volume reverted", "snapshot", name, "replicas", ok)
	return nil
}

// RemoveSnapshot removes a snapshot from every healthy replica (its data is
// coalesced into the neighbouring layer). I/O continues meanwhile.
func (v *Volume) RemoveSnapshot(ctx context.Context, name string) error {
	if err := ValidSnapshotName(name); err != nil {
		return err
	}
	if !v.ctl.TryLock() {
		return fmt.Errorf("%w: another control operation is running", ErrBusy)
	}
	defer v.ctl.Unlock()
	return v.removeSnapshot(name)
}

func (v *Volume) removeSnapshot(name string) error {
	v.mu.RLock()
	healthy := v.view.healthy
	v.mu.RUnlock()
	errs := v.parallel(healthy, func(m *member) error {
		// Removal copies the layer's data into its child: allow it time.
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		return m.r.RemoveSnapshot(ctx, name)
	})
	ok, notFound := 0, 0
	for i, m := range healthy {
		switch err := errs[i]; {
		case err == nil:
			ok++
		case errors.Is(err, ErrNotFound):
			notFound++
		case requestError(err):
			return err
		default:
			v.fail(m, fmt.Errorf("remove snapshot %s: %w", name, err))
		}
	}
	v.settle()
	if ok == 0 && notFound > 0 {
		return fmt.Errorf("%w: snapshot %s", ErrNotFound, name)
	}
	if ok == 0 {
		return fmt.Errorf("%w: remove %s failed on every replica: %v", ErrNoHealthyReplica, name, errors.Join(errs...))
	}
	return nil
}

// Snapshots lists the snapshots of the volume (from a healthy replica).
func (v *Volume) Snapshots(ctx context.Context) ([]replica.SnapshotInfo, error) {
	v.mu.RLock()
	m := pickReader(v.view.healthy)
	v.mu.RUnlock()
	if m == nil {
		return nil, ErrNoHealthyReplica
	}
	info, err := m.r.Info(ctx)
	if err != nil {
		return nil, err
	}
	return info.Snapshots, nil
}
