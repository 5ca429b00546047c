package scheduler

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/policies"
)

// pins are what retention must not delete.
type pins struct {
	// backupIDs are backups a restore or a DR standby still needs.
	backupIDs map[string]bool
	// snapshots are Snapshots an unfinished Backup reads or a volume
	// created fromSnapshot is still filled from.
	snapshots map[string]bool
}

func (p pins) pinned(o *runObject) bool {
	if o.kind == "Backup" {
		return o.backupID != "" && p.backupIDs[o.backupID]
	}
	return p.snapshots[o.obj.GetName()]
}

// prune deletes what retention does not keep. Deleting a Backup whose
// deletePolicy is Delete removes its data from the target (the backup
// executor's finalizer does that).
func (r *Reconciler) prune(ctx context.Context, s *scope) (ctrl.Result, error) {
	if s.rs.Spec.Retention == nil {
		return ctrl.Result{}, nil
	}
	p, err := r.loadPins(ctx, s.volumes)
	if err != nil {
		return ctrl.Result{}, err
	}
	remote := r.newTargetPins(ctx)
	pinned := func(o *runObject) bool { return p.pinned(o) || remote.has(o) }
	victims := pruneSet(s.objs.all, *s.rs.Spec.Retention, s.now, s.sched.Location(), pinned)
	var names []string
	for _, o := range victims {
		uid := o.obj.GetUID()
		err := r.Delete(ctx, o.obj, client.Preconditions{UID: &uid})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return ctrl.Result{}, fmt.Errorf("prune %s %s: %w", o.kind, o.obj.GetName(), err)
		}
		names = append(names, o.obj.GetName())
	}
	if len(names) > 0 {
		log.FromContext(ctx).Info("Pruned by retention", "objects", names)
		r.normal(s.rs, "Pruned", "deleted %d snapshots or backups that retention no longer keeps: %s", len(names), list(names))
	}
	return ctrl.Result{}, nil
}

// loadPins finds the backups that a volume still restoring from a backup
// or a DR standby needs, and the snapshots unfinished backups read or
// unfilled volumes copy.
func (r *Reconciler) loadPins(ctx context.Context, vols []v1.Volume) (pins, error) {
	p := pins{backupIDs: map[string]bool{}, snapshots: map[string]bool{}}
	for i := range vols {
		st := &vols[i].Status
		if st.RestoredBackup != "" && !meta.IsStatusConditionTrue(st.Conditions, v1.ConditionRestored) {
			p.backupIDs[st.RestoredBackup] = true
		}
		if from := vols[i].Spec.FromSnapshot; from != "" && !meta.IsStatusConditionTrue(st.Conditions, v1.ConditionRestored) {
			p.snapshots[string(from)] = true
		}
	}
	var drs v1.DisasterRecoveryVolumeList
	if err := r.List(ctx, &drs); err != nil {
		return p, err
	}
	for _, dr := range drs.Items {
		if dr.Status.LastRestoredBackup != "" {
			p.backupIDs[dr.Status.LastRestoredBackup] = true
		}
	}
	var backups v1.BackupList
	if err := r.List(ctx, &backups); err != nil {
		return p, err
	}
	for i := range backups.Items {
		b := fromBackup(&backups.Items[i])
		if b.state == inFlight && b.snapshotName != "" {
			p.snapshots[b.snapshotName] = true
		}
	}
	return p, nil
}

// pruneSet returns the objects retention deletes, per kind and volume:
// among completed objects, what policies.Retain prunes (never the newest
// nor a pinned one); among failed objects, all but the newest (kept to
// show why). Objects in flight or being deleted are left alone.
func pruneSet(objs []runObject, ret v1.Retention, now time.Time, loc *time.Location, pinned func(*runObject) bool) []*runObject {
	groups := map[string][]*runObject{}
	for i := range objs {
		if o := &objs[i]; !o.deleting() && o.state != inFlight {
			key := o.kind + "/" + o.volume
			groups[key] = append(groups[key], o)
		}
	}
	var out []*runObject
	for _, key := range sortedKeys(groups) {
		var completed, failures []*runObject
		for _, o := range groups[key] {
			if o.state == done {
				completed = append(completed, o)
			} else {
				failures = append(failures, o)
			}
		}
		out = append(out, pruneCompleted(completed, ret, now, loc, pinned)...)
		out = append(out, pruneFailed(failures, pinned)...)
	}
	return out
}

// pruneCompleted applies policies.Retain to one volume's completed objects.
func pruneCompleted(objs []*runObject, ret v1.Retention, now time.Time, loc *time.Location, pinned func(*runObject) bool) []*runObject {
	if len(objs) == 0 {
		return nil
	}
	byName := map[string]*runObject{}
	items := make([]policies.Item, 0, len(objs))
	newest := 0
	for i, o := range objs {
		byName[o.obj.GetName()] = o
		items = append(items, policies.Item{Name: o.obj.GetName(), Time: o.completed, Pinned: pinned(o)})
		if newerItem(items[i], items[newest]) {
			newest = i
		}
	}
	items[newest].Pinned = true
	_, prune := policies.Retain(items, ret, now, loc)
	out := make([]*runObject, 0, len(prune))
	for _, name := range prune {
		out = append(out, byName[name])
	}
	return out
}

// newerItem orders items as policies.Retain does: newer first, equal times by name.
func newerItem(a, b policies.Item) bool {
	return cmp.Or(b.Time.Compare(a.Time), cmp.Compare(a.Name, b.Name)) < 0
}

// pruneFailed keeps the newest failed object of a volume and any pinned one.
func pruneFailed(objs []*runObject, pinned func(*runObject) bool) []*runObject {
	slices.SortFunc(objs, func(a, b *runObject) int {
		return cmp.Or(b.run.Compare(a.run), cmp.Compare(a.obj.GetName(), b.obj.GetName()))
	})
	var out []*runObject
	for i, o := range objs {
		if i > 0 && !pinned(o) {
			out = append(out, o)
		}
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
