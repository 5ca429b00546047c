package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	cairnv1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/internal/durable"
	"github.com/cairnstore/cairn/replica"
)

// copyChunk is the most one read from the source replica asks for.
const copyChunk = 1 << 20

// copyHook, when set (only by the failpoints build, copy_failpoint.go),
// runs after each chunk a copy writes: crash tests stop a copy midway.
var copyHook func(ctx context.Context)

// errCopyWaiting marks a copy that cannot start yet: the source volume has
// no running engine with a healthy replica (the manager starts one).
var errCopyWaiting = errors.New("waiting for a running replica of the source volume")

// reconcileCopy fills a replica with spec.copyFrom from a snapshot of
// another volume before it first runs, reading through a healthy replica
// of that volume's engine (replica.Remote, as a backup does). Like a
// restore it fills the scratch directory and renames it into place, so
// the replica's directory exists only once the copy is complete; a crash
// mid-copy leaves only the scratch directory, which the next attempt (or
// the agent's orphan sweep) removes before copying again.
func (r *ReplicaReconciler) reconcileCopy(ctx context.Context, s *replicaScope) (ctrl.Result, error) {
	src := s.obj.Spec.CopyFrom
	if src == nil {
		return ctrl.Result{}, nil
	}
	name, what := s.obj.Name, src.Volume+"/"+src.Snapshot
	if _, err := os.Stat(r.Agent.replicaDir(name)); err == nil {
		s.copied = what
		return ctrl.Result{}, nil
	}
	job := r.Agent.jobs.get(restoreKey(name))
	if job == nil || job.what != what {
		r.Agent.jobs.stop(restoreKey(name))
		addr, tok, err := r.copySource(ctx, src.Volume)
		if err != nil {
			return ctrl.Result{}, err
		}
		job = r.Agent.startCopy(name, s.obj.Spec.Size.Value(), addr, tok, src)
		log.FromContext(ctx).Info("Copying replica from snapshot", "sourceVolume", src.Volume, "snapshot", src.Snapshot, "sourceReplica", addr)
	}
	if !job.finished() {
		s.copying, s.restorePercent = true, job.percent.Load()
		return ctrl.Result{RequeueAfter: restorePoll}, nil
	}
	r.Agent.jobs.stop(restoreKey(name))
	switch {
	case errors.Is(job.err, replica.ErrNotFound), errors.Is(job.err, errSnapshotTooLarge):
		return ctrl.Result{}, reconcile.TerminalError(fmt.Errorf("%w: snapshot %s of %s: %w", errRestoreFailed, src.Snapshot, src.Volume, job.err))
	case job.err != nil:
		return ctrl.Result{}, fmt.Errorf("copy of snapshot %s of %s failed: %w", src.Snapshot, src.Volume, job.err)
	}
	log.FromContext(ctx).Info("Replica filled from snapshot", "sourceVolume", src.Volume, "snapshot", src.Snapshot)
	r.Agent.recorder.Eventf(s.obj, nil, corev1.EventTypeNormal, "Restored", "Copy", "replica filled from snapshot %s of %s", src.Snapshot, src.Volume)
	s.copied = what
	return ctrl.Result{}, nil
}

// copySource finds a healthy replica of the source volume's running engine
// and the volume's token.
func (r *ReplicaReconciler) copySource(ctx context.Context, vol string) (addr, token string, err error) {
	eng := &cairnv1.Engine{}
	err = r.Get(ctx, client.ObjectKey{Name: vol}, eng)
	switch {
	case apierrors.IsNotFound(err):
		return "", "", fmt.Errorf("%w: volume %s has no engine yet", errCopyWaiting, vol)
	case err != nil:
		return "", "", err
	case eng.Status.State != stateRunning || !eng.DeletionTimestamp.IsZero():
		return "", "", fmt.Errorf("%w: the engine of %s is %s", errCopyWaiting, vol, eng.Status.State)
	}
	if addr = healthyReplica(eng); addr == "" {
		return "", "", fmt.Errorf("%w: volume %s has no healthy replica", errCopyWaiting, vol)
	}
	token, err = volumeToken(ctx, r.APIReader, vol)
	return addr, token, err
}

// errSnapshotTooLarge: the source snapshot does not fit the replica.
var errSnapshotTooLarge = errors.New("snapshot larger than the replica")

// startCopy runs the copy of one replica in the background and requeues
// the replica when it ends. It shares the replica's restore job key and
// scratch directory: a replica is filled one way only, and deleting it
// stops either.
func (a *Agent) startCopy(name string, size int64, addr, token string, src *cairnv1.SnapshotSource) *job {
	what := src.Volume + "/" + src.Snapshot
	return a.jobs.start(restoreKey(name), what, func() { a.notify(replicaPrefix + name) }, func(ctx context.Context, j *job) error {
		c, err := replica.Dial(ctx, addr, token)
		if err != nil {
			return err
		}
		defer c.Close()
		return a.copyReplica(ctx, name, size, replica.NewRemote(ctx, c), src.Snapshot, j)
	})
}

// copyReplica copies into a scratch directory, marks the replica with the
// restored generation and renames it into place.
func (a *Agent) copyReplica(ctx context.Context, name string, size int64, from *replica.Remote, snap string, j *job) error {
	tmp := a.restoreDir(name)
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	err := copyInto(ctx, tmp, size, from, snap, j)
	if err == nil {
		err = os.Rename(tmp, a.replicaDir(name))
	}
	if err == nil {
		err = durable.SyncDir(filepath.Dir(tmp))
	}
	if err != nil {
		_ = os.RemoveAll(tmp)
	}
	return err
}

// copyInto creates a replica of size bytes in dir holding the snapshot's
// view: the extents its layer chain holds (Diff from nothing), read through
// from; everything else stays a hole.
func copyInto(ctx context.Context, dir string, size int64, from *replica.Remote, snap string, j *job) error {
	sr, err := from.OpenSnapshot(snap)
	if err != nil {
		return err
	}
	defer sr.Close()
	if sr.Size() > size {
		return fmt.Errorf("%w: %d bytes, replica %d", errSnapshotTooLarge, sr.Size(), size)
	}
	extents, err := from.Diff("", snap)
	if err != nil {
		return err
	}
	dst, err := replica.Create(dir, size)
	if err != nil {
		return err
	}
	if err := copyExtents(ctx, sr, dst, clip(extents, sr.Size()), j); err != nil {
		dst.Close()
		return err
	}
	if err := dst.Flush(); err != nil {
		dst.Close()
		return err
	}
	if err := dst.SetGeneration(restoredGeneration); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
}

// copyExtents copies the extents from src to dst in chunks, reporting
// progress on j.
func copyExtents(ctx context.Context, src replica.SnapshotReader, dst *replica.Replica, extents []replica.Extent, j *job) error {
	var total, done int64
	for _, e := range extents {
		total += e.Length
	}
	buf := make([]byte, copyChunk)
	for _, e := range extents {
		for off := e.Offset; off < e.End(); {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := min(int64(len(buf)), e.End()-off)
			if _, err := src.ReadAt(buf[:n], off); err != nil {
				return fmt.Errorf("read [%d, +%d): %w", off, n, err)
			}
			if _, err := dst.WriteAt(buf[:n], off); err != nil {
				return fmt.Errorf("write [%d, +%d): %w", off, n, err)
			}
			off, done = off+n, done+n
			j.percent.Store(int32(done * 100 / total))
			j.bytes.Store(done)
			if copyHook != nil {
				copyHook(ctx)
			}
		}
	}
	return nil
}

// clip cuts extents to [0, size).
func clip(extents []replica.Extent, size int64) []replica.Extent {
	out := extents[:0:0]
	for _, e := range extents {
		if end := min(e.End(), size); end > e.Offset {
			out = append(out, replica.Extent{Offset: e.Offset, Length: end - e.Offset})
		}
	}
	return out
}
